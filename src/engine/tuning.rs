//! Tuning knobs with their defaults, resolved from a start request. Pure.

use std::sync::OnceLock;

use crate::api::StartRequest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    pub parallel_collections: usize,
    /// Collections sized and created on the target at once while the catalog is built (each
    /// is a few metadata round trips): `CATALOG_WORKERS`, or `parallel_collections` if more.
    pub catalog_workers: usize,
    pub read_workers: usize,
    pub insert_workers: usize,
    /// Target bytes of one insert batch.
    pub batch_bytes: u64,
    /// Bytes of documents in flight between readers and inserters, in KiB.
    pub budget_kib: u32,
    /// Target bytes of one copy partition.
    pub partition_bytes: u64,
    pub repl_workers: usize,
    pub bulk_ops: usize,
}

pub const MIB: u64 = 1024 * 1024;
/// Default concurrency of the catalog phase.
pub const CATALOG_WORKERS: usize = 8;

/// The cores set by `set_cpus` (the worker's `--cpus`), if any.
static CPUS: OnceLock<usize> = OnceLock::new();

/// Size the defaults for `n` cores instead of the detected ones (once, at start-up).
pub fn set_cpus(n: usize) {
    let _ = CPUS.set(n.max(1));
}

/// The cores the defaults are sized for.
pub fn cpus() -> usize {
    CPUS.get().copied().unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    })
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning::for_cpus(cpus())
    }
}

impl Tuning {
    /// The defaults on a machine with `cpus` cores. Pure.
    pub fn for_cpus(cpus: usize) -> Self {
        Tuning {
            parallel_collections: 2,
            catalog_workers: CATALOG_WORKERS,
            read_workers: cpus.clamp(2, 8),
            insert_workers: (cpus * 2).clamp(4, 16),
            // One insert batch is one target transaction. Against 4 MiB, 1 MiB batches cost
            // the target 15-30% less CPU on ~500-byte documents (8,000 documents a transaction
            // were dearer per document than 2,000), halved the worker's peak RSS and did not
            // slow ~5 KB documents (peerbench, 2-core, docs/benchmarks.md).
            batch_bytes: MIB,
            budget_kib: (48 * MIB / 1024) as u32,
            partition_bytes: 64 * MIB,
            repl_workers: cpus.clamp(4, 16),
            bulk_ops: 1000,
        }
    }
}

/// Upper bounds that keep a typo from exhausting memory.
pub const MAX_WORKERS: u32 = 256;
pub const MAX_BATCH_BYTES: u64 = 64 * MIB;
pub const MAX_PARTITION_BYTES: u64 = 4096 * MIB;
pub const MAX_BULK_OPS: u32 = 100_000;

/// Resolve tuning from a request, refusing out-of-range values with a message.
pub fn resolve(req: &StartRequest) -> Result<Tuning, String> {
    let mut t = Tuning::default();
    let w = |name: &str, v: Option<u32>, dst: &mut usize| -> Result<(), String> {
        match v {
            None => Ok(()),
            Some(0) => Err(format!("{name} must be at least 1")),
            Some(n) if n > MAX_WORKERS => Err(format!("{name} must be at most {MAX_WORKERS}")),
            Some(n) => {
                *dst = n as usize;
                Ok(())
            }
        }
    };
    if let Some(c) = &req.clone {
        w(
            "clone.parallelCollections",
            c.parallel_collections,
            &mut t.parallel_collections,
        )?;
        w("clone.readWorkers", c.read_workers, &mut t.read_workers)?;
        w(
            "clone.insertWorkers",
            c.insert_workers,
            &mut t.insert_workers,
        )?;
        if let Some(b) = c.batch_bytes {
            if !(64 * 1024..=MAX_BATCH_BYTES).contains(&b) {
                return Err(format!(
                    "clone.batchBytes must be between 65536 and {MAX_BATCH_BYTES}"
                ));
            }
            t.batch_bytes = b;
            // Keep room for a few batches per insert worker.
            t.budget_kib = t.budget_kib.max((b * 3 / 1024) as u32);
        }
        if let Some(p) = c.partition_bytes {
            if !(MIB..=MAX_PARTITION_BYTES).contains(&p) {
                return Err(format!(
                    "clone.partitionBytes must be between {MIB} and {MAX_PARTITION_BYTES}"
                ));
            }
            t.partition_bytes = p;
        }
    }
    t.catalog_workers = t.catalog_workers.max(t.parallel_collections);
    if let Some(r) = &req.replication {
        w("replication.workers", r.workers, &mut t.repl_workers)?;
        if let Some(b) = r.bulk_ops {
            if b == 0 || b > MAX_BULK_OPS {
                return Err(format!(
                    "replication.bulkOps must be between 1 and {MAX_BULK_OPS}"
                ));
            }
            t.bulk_ops = b as usize;
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CloneTuning, ReplicationTuning};

    #[test]
    fn workers_grow_with_the_cores_and_the_memory_budget_does_not() {
        let (two, sixteen) = (Tuning::for_cpus(2), Tuning::for_cpus(16));
        assert_eq!(
            (two.read_workers, two.insert_workers, two.repl_workers),
            (2, 4, 4)
        );
        assert_eq!(
            (
                sixteen.read_workers,
                sixteen.insert_workers,
                sixteen.repl_workers
            ),
            (8, 16, 16)
        );
        assert_eq!(two.budget_kib, sixteen.budget_kib);
        assert_eq!(two.batch_bytes, sixteen.batch_bytes);
        assert_eq!(two.partition_bytes, sixteen.partition_bytes);
    }

    #[test]
    fn defaults_and_overrides() {
        let d = resolve(&StartRequest::default()).expect("defaults");
        assert_eq!(d, Tuning::default());
        let r = StartRequest {
            clone: Some(CloneTuning {
                read_workers: Some(3),
                batch_bytes: Some(2 * MIB),
                ..Default::default()
            }),
            replication: Some(ReplicationTuning {
                workers: Some(2),
                bulk_ops: Some(50),
            }),
            ..Default::default()
        };
        let t = resolve(&r).expect("valid");
        assert_eq!(
            (t.read_workers, t.batch_bytes, t.repl_workers, t.bulk_ops),
            (3, 2 * MIB, 2, 50)
        );
    }

    #[test]
    fn refuses_out_of_range() {
        let bad = |c: CloneTuning| {
            resolve(&StartRequest {
                clone: Some(c),
                ..Default::default()
            })
            .unwrap_err()
        };
        assert!(bad(CloneTuning {
            read_workers: Some(0),
            ..Default::default()
        })
        .contains("at least 1"));
        assert!(bad(CloneTuning {
            batch_bytes: Some(10),
            ..Default::default()
        })
        .contains("batchBytes"));
    }
}
