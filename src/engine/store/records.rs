//! The records the engine keeps in the target's `mongoferry` database: the job document
//! (the checkpoint), the collection catalog, copy partitions and the source index definitions.

use mongodb::bson::{DateTime, Document, Timestamp};
use serde::{Deserialize, Serialize};

use crate::api::{Direction, FinalizationReport, StartRequest, State};

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
    /// The change stream's resume token taken with `start_ts` (before listing): replication
    /// resumes after it, which the server finds without reading its oplog. `None` where the
    /// server gave none (replication then starts at `start_ts`).
    pub start_token: Option<Document>,
    pub catalog_done: bool,
    pub clone_completed: bool,
    /// Source cluster time when the copy finished: replication past it = consistent.
    pub copy_finish_ts: Option<Timestamp>,
    /// Every event before this op time is durably applied: resume point.
    pub resume_ts: Option<Timestamp>,
    /// The resume token at `resume_ts`: every event up to and including it is durably
    /// applied. Replication resumes after it (`resumeAfter`: the server seeks it, and refuses
    /// with ChangeStreamHistoryLost if its oplog no longer holds it); without one, at
    /// `resume_ts`.
    pub resume_token: Option<Document>,
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
    /// A reset is under way: the namespaces of the earlier run are being dropped and its
    /// records cleared. Saved before the first drop, so a worker restarted in between
    /// finishes the reset instead of replicating onto half-dropped data.
    pub resetting: bool,
    /// The latest end of any copy (the initial one or a copy anew): renames replayed up to
    /// here are copied anew rather than renamed (see `repl::ddl::during_catch_up`).
    pub catch_up_ts: Option<Timestamp>,
    /// Why the job failed, when it is a known condition a tool may act on.
    pub failure_reason: Option<String>,
    /// `forward` (a migration) or `reverse` (a rollback of a finalized migration).
    pub direction: Direction,
    /// A migration's finalize: the target's cluster time once the cutoff was applied and the
    /// indexes restored. A reverse of this migration starts after it.
    pub reverse_start_ts: Option<Timestamp>,
    /// A reverse: what it rolls back.
    pub reverse_of: Option<ReverseOrigin>,
}

/// The finalized migration a reverse rolls back, as recorded when the reverse started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ReverseOrigin {
    /// The migration's job id (a MigrationJob UID, or `--job-id`) and name.
    pub job_id: String,
    pub job_name: String,
    /// The migration's cutoff: a time of the old source (this reverse's target).
    pub cutoff_ts: Option<Timestamp>,
    /// The migration's reverse start point: a time of the new cluster (this reverse's source).
    pub start_ts: Option<Timestamp>,
    /// The old source's unique, TTL and hidden indexes were relaxed for the sync (done once,
    /// before the first event is applied; finalize restores them).
    pub indexes_relaxed: bool,
    /// Started with `force` although the old source was written after the cutoff.
    pub forced: bool,
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
    /// Set when replication asked for this collection to be copied anew (a rename into the
    /// selection): the time of that event. Replaying the event again finds it set and does
    /// not ask twice.
    pub recopy_ts: Option<Timestamp>,
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

/// Where the records of applied source transactions are kept (one `TxnBatch` per target
/// transaction that held any).
pub const TXN_MARKERS: &str = "txns";

/// A source transaction applied, recorded in the same target transaction as its writes:
/// a restarted worker that replays events from its checkpoint skips the transactions already
/// applied, and the events of documents such a transaction wrote later, so that no reader of
/// the target sees a document go back to before a transaction its other documents show.
/// Records before the checkpoint are forgotten.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TxnMarker {
    /// `{lsid, n}`: the session and transaction number.
    #[serde(rename = "_id")]
    pub id: Document,
    /// Op time of its last event.
    pub ts: Option<Timestamp>,
    /// Routing keys (`repl::translate::key_hash`) of the documents it wrote.
    pub keys: Vec<i64>,
}

/// The record of one target transaction holding source transactions: theirs, and the op time
/// of the latest (the record goes once the checkpoint is past it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TxnBatch {
    pub ts: Option<Timestamp>,
    pub txns: Vec<TxnMarker>,
}
