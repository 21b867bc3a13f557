//! The engine's persisted state, kept in the target's `mongoferry` database (never
//! replicated): the job document with its fencing epoch, the collection catalog, copy
//! partitions and the original index definitions.
//!
//! Fencing: every worker that takes the job increments `epoch`; every save is conditional on
//! the epoch it took, so a deposed worker's next save fails and it stops writing.

use mongodb::bson::{doc, Bson, DateTime, Document, Timestamp};
use mongodb::options::ReplaceOptions;
use mongodb::{Client, Collection, Database};
use serde::{Deserialize, Serialize};

use super::error::{EngineError, MongoContext, Result, Side};
use super::filter::META_DB;
use crate::api::{FinalizationReport, StartRequest, State};

const JOB_ID: &str = "job";

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

#[derive(Clone)]
pub struct Store {
    db: Database,
    epoch: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// The last job document saved (or loaded), for status answers that must not wait.
    last: std::sync::Arc<std::sync::Mutex<Option<Checkpoint>>>,
}

impl Store {
    pub fn new(target: &Client) -> Self {
        Self {
            db: target.database(META_DB),
            epoch: Default::default(),
            last: Default::default(),
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

    /// Take the job: bump its epoch (creating it if absent) and remember the new epoch.
    pub async fn acquire(&self) -> Result<Checkpoint> {
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
            Ok(()) => EngineError::Other("the checkpoint document disappeared".into()),
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
        if parts.is_empty() {
            return Ok(());
        }
        for p in parts {
            self.partitions()
                .replace_one(doc! {"_id": &p.id}, p)
                .upsert(true)
                .await
                .on(Side::Target, "saving copy partitions")?;
        }
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
