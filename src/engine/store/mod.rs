//! The engine's persisted state in the target's `mongoferry` database (never replicated):
//! the job document (the checkpoint), the collection catalog, copy partitions and the source
//! index definitions — and who may write them: the lease and the fence.
//!
//! Every write here is fenced: the job document by a compare-and-set on the epoch, the other
//! records by fenced transactions (see `fence.rs`).

pub mod batch;
pub mod fence;
pub mod lease;
pub mod records;

use futures::TryStreamExt;
use mongodb::bson::{doc, rawdoc, Bson, DateTime, Document, Timestamp};
use mongodb::options::ReplaceOptions;
use mongodb::{Client, Collection, Database};

use super::error::{EngineError, MongoContext, Result, Side};
use super::filter::META_DB;
use batch::{encode, upsert_many};
use fence::Fence;
pub use lease::Identity;
pub use records::{
    Checkpoint, CollectionEntry, IndexEntry, PartitionEntry, ReverseOrigin, TxnBatch, TxnMarker,
    TXN_MARKERS,
};

const JOB_ID: &str = "job";

/// A command as BSON bytes.
fn raw(cmd: Document, what: &str) -> Result<mongodb::bson::RawDocumentBuf> {
    mongodb::bson::RawDocumentBuf::from_document(&cmd).map_err(|e| EngineError::Encode {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

#[derive(Clone)]
pub struct Store {
    db: Database,
    fence: Fence,
    /// The last job document saved (or loaded), for status answers that must not wait.
    last: std::sync::Arc<std::sync::Mutex<Option<Checkpoint>>>,
}

impl Store {
    pub fn new(target: &Client, me: Identity) -> Self {
        let db = target.database(META_DB);
        Self {
            fence: Fence::new(target, db.clone(), me),
            db,
            last: Default::default(),
        }
    }

    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    fn jobs(&self) -> Collection<Checkpoint> {
        self.db.collection("checkpoint")
    }
    fn collections(&self) -> Collection<CollectionEntry> {
        self.db.collection("collections")
    }
    fn partitions(&self) -> Collection<PartitionEntry> {
        self.db.collection("partitions")
    }
    fn indexes(&self) -> Collection<IndexEntry> {
        self.db.collection("indexes")
    }

    pub fn epoch(&self) -> i64 {
        self.fence.epoch()
    }

    /// Load the job, if an earlier run left one.
    pub async fn load(&self) -> Result<Option<Checkpoint>> {
        self.jobs()
            .find_one(doc! {"_id": JOB_ID})
            .await
            .on(Side::Target, "reading the checkpoint")
    }

    /// Take the job (lease, epoch, fence; see `Fence::acquire`) and load its checkpoint.
    pub async fn acquire(&self, waiting: impl Fn(&EngineError)) -> Result<Checkpoint> {
        let epoch = self.fence.acquire(waiting).await?;
        let cp = match self.load().await? {
            Some(cp) if cp.saved_at.is_some() => cp,
            _ => Checkpoint {
                id: JOB_ID.into(),
                epoch,
                ..Default::default()
            },
        };
        self.remember(&cp);
        Ok(cp)
    }

    fn remember(&self, cp: &Checkpoint) {
        if let Ok(mut l) = self.last.lock() {
            *l = Some(cp.clone());
        }
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
            return Err(EngineError::Fenced {
                ours: epoch,
                detail: "the job's epoch moved on: another worker took this migration over".into(),
            });
        }
        self.remember(cp);
        Ok(())
    }

    /// The job as last saved.
    pub fn last_saved(&self) -> Option<Checkpoint> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Drop every record of the earlier run (collections, partitions, indexes). Part of a
    /// reset, after its namespaces were dropped; the epoch and the lease stay.
    pub async fn clear_records(&self) -> Result<()> {
        for c in ["collections", "partitions", "indexes", TXN_MARKERS] {
            let coll = self.db.collection::<Document>(c);
            self.fence
                .ddl("clearing the records of the earlier run", async {
                    coll.drop()
                        .await
                        .on(Side::Target, "clearing the records of the earlier run")
                })
                .await?;
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
        upsert_many(&self.fence, &self.db, "collections", items, what).await
    }

    pub async fn upsert_collection(&self, c: &CollectionEntry) -> Result<()> {
        self.upsert_collections(std::slice::from_ref(c)).await
    }

    pub async fn all_collections(&self) -> Result<Vec<CollectionEntry>> {
        self.collections()
            .find(doc! {})
            .await
            .on(Side::Target, "reading the catalog")?
            .try_collect()
            .await
            .on(Side::Target, "reading the catalog")
    }

    pub async fn collection(&self, ns: &str) -> Result<Option<CollectionEntry>> {
        self.collections()
            .find_one(doc! {"_id": ns})
            .await
            .on(Side::Target, "reading the catalog")
    }

    /// `$set` fields of a catalog entry.
    pub async fn mark_collection(&self, ns: &str, set: Document) -> Result<()> {
        self.update_one(
            "collections",
            doc! {"_id": ns},
            doc! {"$set": set},
            "saving the catalog",
        )
        .await
    }

    /// Forget a catalog entry and its partitions (a collection dropped or renamed away).
    pub async fn forget_collection(&self, ns: &str) -> Result<()> {
        let cmds = vec![
            rawdoc! {"delete": "collections", "deletes": [{"q": {"_id": ns}, "limit": 1}]},
            rawdoc! {"delete": "partitions", "deletes": [{"q": {"ns": ns}, "limit": 0}]},
            rawdoc! {"delete": "indexes", "deletes": [{"q": {"ns": ns}, "limit": 0}]},
        ];
        batch::write(&self.fence, &self.db, cmds, "saving the catalog").await
    }

    async fn update_one(&self, coll: &str, q: Document, u: Document, what: &str) -> Result<()> {
        let cmd = raw(doc! {"update": coll, "updates": [{"q": q, "u": u}]}, what)?;
        batch::write(&self.fence, &self.db, vec![cmd], what).await
    }

    pub async fn save_partitions(&self, parts: &[PartitionEntry]) -> Result<()> {
        let what = "saving copy partitions";
        let items = parts
            .iter()
            .map(|p| Ok((p.id.clone(), encode(p, what)?)))
            .collect::<Result<Vec<_>>>()?;
        upsert_many(&self.fence, &self.db, "partitions", items, what).await
    }

    /// Index the partitions by namespace, for `partitions_of` (a restarted copy reads each
    /// collection's partitions; without the index every read scans the partitions of every
    /// collection: quadratic in the number of collections). Idempotent.
    pub async fn ensure_partition_index(&self) -> Result<()> {
        let what = "indexing copy partitions";
        self.fence
            .ddl(what, async {
                self.db
                    .run_command(doc! {"createIndexes": "partitions", "indexes": [
                        {"key": {"ns": 1, "index": 1}, "name": "ns_1_index_1"}
                    ]})
                    .await
                    .on(Side::Target, what)
            })
            .await?;
        Ok(())
    }

    pub async fn partitions_of(&self, ns: &str) -> Result<Vec<PartitionEntry>> {
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
        self.update_one(
            "partitions",
            doc! {"_id": id},
            doc! {"$set": {"done": true, "documents": docs, "bytes": bytes}},
            "saving copy progress",
        )
        .await
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
            out = (super::reply::num(d.get("d")), super::reply::num(d.get("b")));
        }
        Ok(out)
    }

    pub async fn save_index(&self, e: &IndexEntry) -> Result<()> {
        let what = "saving index definitions";
        upsert_many(
            &self.fence,
            &self.db,
            "indexes",
            vec![(e.id.clone(), encode(e, what)?)],
            what,
        )
        .await
    }

    /// Record the source definitions of a collection's indexes (restored at finalize); the
    /// specs are normalized by the caller.
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
                    spec: s.clone(),
                };
                Ok((e.id.clone(), encode(&e, what)?))
            })
            .collect::<Result<Vec<_>>>()?;
        upsert_many(&self.fence, &self.db, "indexes", items, what).await
    }

    pub async fn delete_indexes(&self, filter: Document) -> Result<()> {
        let what = "saving index definitions";
        let cmd = raw(
            doc! {"delete": "indexes", "deletes": [{"q": filter, "limit": 0}]},
            what,
        )?;
        batch::write(&self.fence, &self.db, vec![cmd], what).await
    }

    /// The source transactions applied at or after `since` (see `TxnMarker`).
    pub async fn txn_markers_since(&self, since: Timestamp) -> Result<Vec<TxnMarker>> {
        let what = "reading the transactions applied";
        let batches: Vec<TxnBatch> = self
            .db
            .collection::<TxnBatch>(TXN_MARKERS)
            .find(doc! {"ts": {"$gte": since}})
            .projection(doc! {"_id": 0})
            .await
            .on(Side::Target, what)?
            .try_collect()
            .await
            .on(Side::Target, what)?;
        Ok(batches.into_iter().flat_map(|b| b.txns).collect())
    }

    /// Forget the transactions applied before `before` (replication never replays them).
    pub async fn forget_txn_markers(&self, before: Timestamp) -> Result<()> {
        let what = "forgetting applied transactions";
        let cmd = raw(
            doc! {"delete": TXN_MARKERS, "deletes": [{"q": {"ts": {"$lt": before}}, "limit": 0}]},
            what,
        )?;
        batch::write(&self.fence, &self.db, vec![cmd], what).await
    }

    pub async fn all_indexes(&self) -> Result<Vec<IndexEntry>> {
        self.indexes()
            .find(doc! {})
            .await
            .on(Side::Target, "reading index definitions")?
            .try_collect()
            .await
            .on(Side::Target, "reading index definitions")
    }
}

/// Target namespaces an earlier run of a job created (replaced by a new start, not refused),
/// read without taking the job.
pub async fn owned_namespaces(target: &Client) -> Result<std::collections::HashSet<String>> {
    let all: Vec<CollectionEntry> = target
        .database(META_DB)
        .collection::<CollectionEntry>("collections")
        .find(doc! {"created": true})
        .projection(doc! {"_id": 1, "created": 1})
        .await
        .on(Side::Target, "reading the catalog")?
        .try_collect()
        .await
        .on(Side::Target, "reading the catalog")?;
    Ok(all.into_iter().map(|c| c.ns).collect())
}

/// The job document and the number of catalog entries an earlier run left, read without
/// taking the job.
pub async fn earlier_run(target: &Client) -> Result<(Option<Checkpoint>, u64)> {
    let db = target.database(META_DB);
    let job = db
        .collection::<Checkpoint>("checkpoint")
        .find_one(doc! {"_id": JOB_ID})
        .await
        .on(Side::Target, "reading the checkpoint")?;
    let collections = db
        .collection::<Document>("collections")
        .count_documents(doc! {})
        .await
        .on(Side::Target, "reading the catalog")?;
    Ok((job, collections))
}

/// The job document and the lease of the job a deployment's `mongoferry` database holds, read
/// without taking anything (a reverse reads the migration it rolls back from its source).
pub async fn read_job(
    client: &Client,
    side: Side,
) -> Result<(Option<Checkpoint>, Option<lease::LeaseDoc>)> {
    let coll = client
        .database(META_DB)
        .collection::<Document>("checkpoint");
    let what = "reading the mongoferry job";
    let job = coll.find_one(doc! {"_id": JOB_ID}).await.on(side, what)?;
    let lease = coll
        .find_one(doc! {"_id": lease::LEASE_ID})
        .await
        .on(side, what)?
        .map(|d| lease::LeaseDoc::parse(&d));
    let job = match job {
        Some(d) => Some(mongodb::bson::from_document::<Checkpoint>(d).map_err(|e| {
            EngineError::Encode {
                what: what.into(),
                detail: e.to_string(),
            }
        })?),
        None => None,
    };
    Ok((job, lease))
}
