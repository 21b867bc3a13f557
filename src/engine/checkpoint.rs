//! The engine's persisted state, kept in the target's `mongoferry` database (never
//! replicated): the job document with its fencing epoch, the collection catalog, copy
//! partitions and the original index definitions.
//!
//! Fencing: every worker that takes the job increments `epoch`; every save is conditional on
//! the epoch it took, so a deposed worker's next save fails and it stops writing.

use mongodb::bson::{
    doc, rawdoc, Bson, DateTime, Document, RawArrayBuf, RawDocumentBuf, Timestamp,
};
use mongodb::options::ReplaceOptions;
use mongodb::{Client, Collection, Database};
use serde::{Deserialize, Serialize};

use super::error::{EngineError, MongoContext, Result, Side};
use super::filter::META_DB;
use crate::api::{FinalizationReport, StartRequest, State};

const JOB_ID: &str = "job";
/// Records per batched upsert command.
const UPSERT_BATCH: usize = 500;
/// Approximate bytes per batched upsert command (well under the 16 MiB message limit).
const UPSERT_BATCH_BYTES: usize = 4 << 20;

/// The job document.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Checkpoint {
    #[serde(rename = "_id")]
    pub id: String,
    pub epoch: i64,
    pub state: State,
    pub error: Option<String>,
    /// Filters and tuning given at start; kept so a restarted worker runs as before.
    pub options: StartRequest,
    /// Source cluster time taken before listing: replication starts here.
    pub start_ts: Option<Timestamp>,
    pub catalog_done: bool,
    pub clone_completed: bool,
    /// Source cluster time when the copy finished: replication past it = consistent.
    pub copy_finish_ts: Option<Timestamp>,
    /// Every event before this op time is durably applied: resume point.
    pub resume_ts: Option<Timestamp>,
    pub events_applied: i64,
    pub events_read: i64,
    pub estimated_bytes: i64,
    pub estimated_docs: i64,
    pub collections_total: i64,
    pub saved_at: Option<DateTime>,
    pub finalization: Option<FinalizationReport>,
    /// Set once finalize was requested: the cutoff op time.
    pub cutoff_ts: Option<Timestamp>,
    pub verify_mode: Option<crate::api::VerifyMode>,
    pub warnings: Vec<String>,
}

/// One collection (or view) selected for the migration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CollectionEntry {
    /// `db.coll`
    #[serde(rename = "_id")]
    pub ns: String,
    pub db: String,
    pub coll: String,
    /// `collection` or `view`.
    pub kind: String,
    /// `listCollections` options, as the source reports them.
    pub options: Document,
    pub capped: bool,
    pub size_bytes: i64,
    pub documents: i64,
    pub created: bool,
    pub planned: bool,
    pub copied: bool,
    pub indexes_built: bool,
}

/// One `_id` range of a collection.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PartitionEntry {
    /// `<ns>#<index>`
    #[serde(rename = "_id")]
    pub id: String,
    pub ns: String,
    pub index: i32,
    pub filter: Document,
    /// Sort by `$natural` in one ordered stream (capped collections).
    pub natural: bool,
    pub done: bool,
    pub documents: i64,
    pub bytes: i64,
}

/// The source definition of an index, restored at finalize.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IndexEntry {
    /// `<ns>#<name>`
    #[serde(rename = "_id")]
    pub id: String,
    pub ns: String,
    pub name: String,
    pub spec: Document,
}

/// A record as BSON bytes, for a batched upsert.
fn encode<T: Serialize>(item: &T, what: &str) -> Result<RawDocumentBuf> {
    mongodb::bson::to_raw_document_buf(item)
        .map_err(|e| EngineError::Other(format!("{what}: cannot encode a record: {e}")))
}

#[derive(Clone)]
pub struct Store {
    db: Database,
    epoch: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// The last job document saved (or loaded), for status answers that must not wait.
    last: std::sync::Arc<std::sync::Mutex<Option<Checkpoint>>>,
    /// This worker's name in the lease.
    holder: String,
}

/// A lease not renewed for this long is free: its worker is gone.
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(15);
/// How often the holder renews its lease.
pub const LEASE_RENEW: std::time::Duration = std::time::Duration::from_secs(5);
const LEASE_ID: &str = "lease";

/// Whether a lease renewed at `renewed_ms` by `holder` keeps `me` out at `now_ms`. Pure.
pub fn lease_blocks(holder: &str, renewed_ms: i64, me: &str, now_ms: i64) -> bool {
    holder != me && now_ms.saturating_sub(renewed_ms) < LEASE_TTL.as_millis() as i64
}

/// A lease holder's name: `<host>-<pid>-<start ms>`.
fn holder_name(host: &str, pid: u32, start_ms: i64) -> String {
    format!("{host}-{pid}-{start_ms}")
}

/// Whether `holder` names a process on this host that is certainly gone: a previous
/// incarnation with our own pid (a restarted container), or a pid that no longer exists.
/// Such a lease need not be waited out. Pure but for the `alive` probe.
pub fn holder_is_gone(holder: &str, me: &str, alive: impl Fn(u32) -> bool) -> bool {
    let split = |h: &str| {
        let mut it = h.rsplitn(3, '-');
        let _start = it.next()?;
        let pid: u32 = it.next()?.parse().ok()?;
        Some((it.next()?.to_string(), pid))
    };
    match (split(holder), split(me)) {
        (Some((h, pid)), Some((mh, mpid))) if h == mh && holder != me => pid == mpid || !alive(pid),
        _ => false,
    }
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into())
}

impl Store {
    pub fn new(target: &Client) -> Self {
        Self {
            db: target.database(META_DB),
            epoch: Default::default(),
            last: Default::default(),
            holder: holder_name(
                &this_host(),
                std::process::id(),
                DateTime::now().timestamp_millis(),
            ),
        }
    }

    fn jobs(&self) -> Collection<Checkpoint> {
        self.db.collection("checkpoint")
    }
    pub fn collections(&self) -> Collection<CollectionEntry> {
        self.db.collection("collections")
    }
    pub fn partitions(&self) -> Collection<PartitionEntry> {
        self.db.collection("partitions")
    }
    pub fn indexes(&self) -> Collection<IndexEntry> {
        self.db.collection("indexes")
    }

    pub fn epoch(&self) -> i64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Load the job, if an earlier run left one.
    pub async fn load(&self) -> Result<Option<Checkpoint>> {
        self.jobs()
            .find_one(doc! {"_id": JOB_ID})
            .await
            .on(Side::Target, "reading the checkpoint")
    }

    /// Take the lease on the job, unless another live worker holds it (a worker that stopped
    /// renewing for `LEASE_TTL` is gone). Only the lease holder writes.
    async fn take_lease(&self) -> Result<()> {
        let raw: Collection<Document> = self.db.collection("checkpoint");
        let now = DateTime::now();
        let cur = raw
            .find_one(doc! {"_id": LEASE_ID})
            .await
            .on(Side::Target, "reading the job lease")?;
        let filter = match &cur {
            Some(l) => {
                let holder = l.get_str("holder").unwrap_or_default();
                let renewed = l
                    .get_datetime("renewedAt")
                    .map(|d| d.timestamp_millis())
                    .unwrap_or(0);
                let gone = holder_is_gone(holder, &self.holder, |pid| {
                    std::path::Path::new(&format!("/proc/{pid}")).exists()
                });
                if !gone && lease_blocks(holder, renewed, &self.holder, now.timestamp_millis()) {
                    return Err(EngineError::LeaseHeld {
                        holder: holder.to_string(),
                        age_secs: (now.timestamp_millis() - renewed) / 1000,
                    });
                }
                doc! {"_id": LEASE_ID, "holder": holder, "renewedAt": l.get("renewedAt").cloned().unwrap_or(Bson::Null)}
            }
            None => doc! {"_id": LEASE_ID},
        };
        let r = raw
            .update_one(
                filter,
                doc! {"$set": {"holder": &self.holder, "renewedAt": now}},
            )
            .upsert(cur.is_none())
            .await;
        match r {
            Ok(u) if u.matched_count == 1 || u.upserted_id.is_some() => Ok(()),
            Ok(_) => Err(EngineError::LeaseHeld {
                holder: "another worker".into(),
                age_secs: 0,
            }),
            Err(e) if super::error::mongo_code(&e) == Some(11000) => Err(EngineError::LeaseHeld {
                holder: "another worker".into(),
                age_secs: 0,
            }),
            Err(e) => Err(EngineError::mongo(Side::Target, "taking the job lease", e)),
        }
    }

    /// Renew the lease; fails with `Fenced` once another worker has taken it.
    pub async fn renew_lease(&self) -> Result<()> {
        let raw: Collection<Document> = self.db.collection("checkpoint");
        let r = raw
            .update_one(
                doc! {"_id": LEASE_ID, "holder": &self.holder},
                doc! {"$set": {"renewedAt": DateTime::now()}},
            )
            .await
            .on(Side::Target, "renewing the job lease")?;
        if r.matched_count == 0 {
            return Err(self.fenced().await);
        }
        Ok(())
    }

    /// Give the lease up (clean shutdown), so a successor need not wait for it to expire.
    pub async fn release_lease(&self) {
        let raw: Collection<Document> = self.db.collection("checkpoint");
        let _ = raw
            .update_one(
                doc! {"_id": LEASE_ID, "holder": &self.holder},
                doc! {"$set": {"renewedAt": DateTime::from_millis(0)}},
            )
            .await;
    }

    /// Take the job: take its lease, bump its epoch (creating it if absent) and remember the
    /// new epoch.
    pub async fn acquire(&self) -> Result<Checkpoint> {
        self.take_lease().await?;
        let raw: Collection<Document> = self.db.collection("checkpoint");
        let prev = raw
            .find_one_and_update(doc! {"_id": JOB_ID}, doc! {"$inc": {"epoch": 1_i64}})
            .upsert(true)
            .return_document(mongodb::options::ReturnDocument::After)
            .await
            .on(Side::Target, "taking the job lease")?;
        let epoch = prev
            .as_ref()
            .and_then(|d| d.get("epoch"))
            .and_then(Bson::as_i64)
            .unwrap_or(1);
        self.epoch.store(epoch, std::sync::atomic::Ordering::SeqCst);
        let cp = match self.load().await? {
            Some(cp) if cp.saved_at.is_some() => cp,
            _ => Checkpoint {
                id: JOB_ID.into(),
                epoch,
                ..Default::default()
            },
        };
        if let Ok(mut l) = self.last.lock() {
            *l = Some(cp.clone());
        }
        Ok(cp)
    }

    /// Save the job, conditional on still holding the epoch.
    pub async fn save(&self, cp: &mut Checkpoint) -> Result<()> {
        let epoch = self.epoch();
        cp.id = JOB_ID.into();
        cp.epoch = epoch;
        cp.saved_at = Some(DateTime::now());
        let res = self
            .jobs()
            .replace_one(doc! {"_id": JOB_ID, "epoch": epoch}, &*cp)
            .with_options(ReplaceOptions::builder().upsert(false).build())
            .await
            .on(Side::Target, "saving the checkpoint")?;
        if res.matched_count == 0 {
            return Err(self.fenced().await);
        }
        if let Ok(mut l) = self.last.lock() {
            *l = Some(cp.clone());
        }
        Ok(())
    }

    /// The job as last saved.
    pub fn last_saved(&self) -> Option<Checkpoint> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Fail unless this worker still holds the job.
    pub async fn check_fence(&self) -> Result<()> {
        let raw: Collection<Document> = self.db.collection("checkpoint");
        let cur = raw
            .find_one(doc! {"_id": JOB_ID})
            .projection(doc! {"epoch": 1})
            .await
            .on(Side::Target, "checking the job lease")?;
        let theirs = cur
            .and_then(|d| d.get("epoch").and_then(Bson::as_i64))
            .unwrap_or(0);
        if theirs != self.epoch() {
            return Err(EngineError::Fenced {
                ours: self.epoch(),
                theirs,
            });
        }
        Ok(())
    }

    async fn fenced(&self) -> EngineError {
        match self.check_fence().await {
            Err(e) => e,
            Ok(()) => EngineError::Fenced {
                ours: self.epoch(),
                theirs: self.epoch() + 1,
            },
        }
    }

    /// Drop every piece of metadata (for `reset`), keeping the epoch so fencing holds.
    pub async fn reset(&self) -> Result<()> {
        for c in ["collections", "partitions", "indexes"] {
            self.db
                .collection::<Document>(c)
                .drop()
                .await
                .on(Side::Target, "resetting metadata")?;
        }
        let mut fresh = Checkpoint::default();
        self.save(&mut fresh).await
    }

    /// Upsert records by `_id` with `update` commands of many statements (one round trip per
    /// `UPSERT_BATCH` records instead of one per record). Each statement is idempotent, so a
    /// batch cut short by a crash is simply written again by the next run.
    async fn upsert_many(
        &self,
        coll: &str,
        items: Vec<(String, RawDocumentBuf)>,
        what: &str,
    ) -> Result<()> {
        let mut stmts = RawArrayBuf::new();
        let (mut n, mut bytes) = (0usize, 0usize);
        for (id, u) in items {
            bytes += u.as_bytes().len() + id.len() + 48;
            stmts.push(rawdoc! {"q": {"_id": id}, "u": u, "upsert": true});
            n += 1;
            // The command stays far below the server's 16 MiB message limit.
            if n >= UPSERT_BATCH || bytes >= UPSERT_BATCH_BYTES {
                self.run_upserts(coll, std::mem::take(&mut stmts), what)
                    .await?;
                (n, bytes) = (0, 0);
            }
        }
        if n > 0 {
            self.run_upserts(coll, stmts, what).await?;
        }
        Ok(())
    }

    async fn run_upserts(&self, coll: &str, stmts: RawArrayBuf, what: &str) -> Result<()> {
        let reply = self
            .db
            .run_raw_command(rawdoc! {"update": coll, "updates": stmts, "ordered": false})
            .await
            .on(Side::Target, what)?;
        if let Ok(errs) = reply.get_array("writeErrors") {
            if let Some(e) = errs.iter().filter_map(Bson::as_document).next() {
                return Err(EngineError::Other(format!(
                    "{what} failed: {} (code {})",
                    e.get_str("errmsg").unwrap_or_default(),
                    super::catalog::num(e.get("code"))
                )));
            }
        }
        if let Ok(w) = reply.get_document("writeConcernError") {
            let code = super::catalog::num(w.get("code")) as i32;
            let msg = format!(
                "{what}: the target did not confirm the write: {} (code {code})",
                w.get_str("errmsg").unwrap_or_default()
            );
            return Err(match super::error::classify_parts(Some(code), &[], false) {
                super::error::ErrorClass::Transient => EngineError::Retry(msg),
                super::error::ErrorClass::Fatal => EngineError::Other(msg),
            });
        }
        Ok(())
    }

    /// Record many catalog entries (batched upserts).
    pub async fn upsert_collections(&self, entries: &[CollectionEntry]) -> Result<()> {
        let what = "saving the catalog";
        let items = entries
            .iter()
            .map(|c| Ok((c.ns.clone(), encode(c, what)?)))
            .collect::<Result<Vec<_>>>()?;
        self.upsert_many("collections", items, what).await
    }

    pub async fn upsert_collection(&self, c: &CollectionEntry) -> Result<()> {
        self.collections()
            .replace_one(doc! {"_id": &c.ns}, c)
            .upsert(true)
            .await
            .on(Side::Target, "saving the catalog")?;
        Ok(())
    }

    pub async fn all_collections(&self) -> Result<Vec<CollectionEntry>> {
        use futures::TryStreamExt;
        self.collections()
            .find(doc! {})
            .await
            .on(Side::Target, "reading the catalog")?
            .try_collect()
            .await
            .on(Side::Target, "reading the catalog")
    }

    pub async fn mark_collection(&self, ns: &str, set: Document) -> Result<()> {
        self.collections()
            .update_one(doc! {"_id": ns}, doc! {"$set": set})
            .await
            .on(Side::Target, "saving the catalog")?;
        Ok(())
    }

    pub async fn save_partitions(&self, parts: &[PartitionEntry]) -> Result<()> {
        let what = "saving copy partitions";
        let items = parts
            .iter()
            .map(|p| Ok((p.id.clone(), encode(p, what)?)))
            .collect::<Result<Vec<_>>>()?;
        self.upsert_many("partitions", items, what).await
    }

    /// Index the partitions by namespace, for `partitions_of` (a restarted copy reads each
    /// collection's partitions; without the index every read scans the partitions of every
    /// collection: quadratic in the number of collections). Idempotent.
    pub async fn ensure_partition_index(&self) -> Result<()> {
        self.db
            .run_command(doc! {"createIndexes": "partitions", "indexes": [
                {"key": {"ns": 1, "index": 1}, "name": "ns_1_index_1"}
            ]})
            .await
            .on(Side::Target, "indexing copy partitions")?;
        Ok(())
    }

    pub async fn partitions_of(&self, ns: &str) -> Result<Vec<PartitionEntry>> {
        use futures::TryStreamExt;
        self.partitions()
            .find(doc! {"ns": ns})
            .sort(doc! {"index": 1})
            .await
            .on(Side::Target, "reading copy partitions")?
            .try_collect()
            .await
            .on(Side::Target, "reading copy partitions")
    }

    pub async fn mark_partition_done(&self, id: &str, docs: i64, bytes: i64) -> Result<()> {
        self.partitions()
            .update_one(
                doc! {"_id": id},
                doc! {"$set": {"done": true, "documents": docs, "bytes": bytes}},
            )
            .await
            .on(Side::Target, "saving copy progress")?;
        Ok(())
    }

    /// How many partitions an earlier run finished.
    pub async fn done_partitions(&self) -> Result<u64> {
        self.partitions()
            .count_documents(doc! {"done": true})
            .await
            .on(Side::Target, "reading copy progress")
    }

    /// Documents and bytes of every finished partition.
    pub async fn copied_totals(&self) -> Result<(i64, i64)> {
        use futures::TryStreamExt;
        let mut cur = self
            .partitions()
            .clone_with_type::<Document>()
            .aggregate(vec![
                doc! {"$match": {"done": true}},
                doc! {"$group": {"_id": Bson::Null, "d": {"$sum": "$documents"}, "b": {"$sum": "$bytes"}}},
            ])
            .await
            .on(Side::Target, "reading copy progress")?;
        let mut out = (0, 0);
        while let Some(d) = cur
            .try_next()
            .await
            .on(Side::Target, "reading copy progress")?
        {
            out.0 = d
                .get("d")
                .and_then(Bson::as_i64)
                .or_else(|| d.get_i32("d").ok().map(i64::from))
                .unwrap_or(0);
            out.1 = d
                .get("b")
                .and_then(Bson::as_i64)
                .or_else(|| d.get_i32("b").ok().map(i64::from))
                .unwrap_or(0);
        }
        Ok(out)
    }

    pub async fn save_index(&self, e: &IndexEntry) -> Result<()> {
        self.indexes()
            .replace_one(doc! {"_id": &e.id}, e)
            .upsert(true)
            .await
            .on(Side::Target, "saving index definitions")?;
        Ok(())
    }

    /// Record the source definitions of a collection's indexes (restored at finalize).
    pub async fn save_index_specs(&self, ns: &str, specs: &[Document]) -> Result<()> {
        let what = "saving index definitions";
        let items = specs
            .iter()
            .map(|s| {
                let name = s.get_str("name").unwrap_or_default().to_string();
                let e = IndexEntry {
                    id: format!("{ns}#{name}"),
                    ns: ns.to_string(),
                    name,
                    spec: super::catalog::normalize_index(s),
                };
                Ok((e.id.clone(), encode(&e, what)?))
            })
            .collect::<Result<Vec<_>>>()?;
        self.upsert_many("indexes", items, what).await
    }

    pub async fn delete_indexes(&self, filter: Document) -> Result<()> {
        self.indexes()
            .delete_many(filter)
            .await
            .on(Side::Target, "saving index definitions")?;
        Ok(())
    }

    pub async fn all_indexes(&self) -> Result<Vec<IndexEntry>> {
        use futures::TryStreamExt;
        self.indexes()
            .find(doc! {})
            .await
            .on(Side::Target, "reading index definitions")?
            .try_collect()
            .await
            .on(Side::Target, "reading index definitions")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_rules() {
        let ttl = LEASE_TTL.as_millis() as i64;
        assert!(
            lease_blocks("a", 1_000, "b", 1_000 + ttl - 1),
            "fresh lease of another"
        );
        assert!(!lease_blocks("a", 1_000, "b", 1_000 + ttl), "expired lease");
        assert!(!lease_blocks("a", 1_000, "a", 1_001), "our own lease");
        assert!(
            !lease_blocks("a", 0, "b", 1_700_000_000_000),
            "released lease"
        );
    }

    #[test]
    fn gone_holders() {
        let me = holder_name("pod-1", 1, 500);
        // A restarted container: same host, same pid, another start.
        assert!(holder_is_gone(&holder_name("pod-1", 1, 100), &me, |_| true));
        // Same host, dead pid.
        assert!(holder_is_gone(&holder_name("pod-1", 77, 100), &me, |_| {
            false
        }));
        // Same host, live pid: a concurrent worker.
        assert!(!holder_is_gone(&holder_name("pod-1", 77, 100), &me, |_| {
            true
        }));
        // Another host: never assumed gone.
        assert!(!holder_is_gone(&holder_name("pod-2", 77, 100), &me, |_| {
            false
        }));
        assert!(!holder_is_gone(&me, &me, |_| false));
        assert!(!holder_is_gone("garbage", &me, |_| false));
    }
}
