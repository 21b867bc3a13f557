//! The worker API's request and status documents (JSON, camelCase; PCSM-compatible in shape).

use serde::{Deserialize, Serialize};

/// The engine's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum State {
    #[default]
    Idle,
    Running,
    Paused,
    Finalizing,
    Finalized,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Running => "running",
            State::Paused => "paused",
            State::Finalizing => "finalizing",
            State::Finalized => "finalized",
            State::Failed => "failed",
        }
    }

    pub const ALL: [State; 6] = [
        State::Idle,
        State::Running,
        State::Paused,
        State::Finalizing,
        State::Finalized,
        State::Failed,
    ];
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which way a job replicates: `forward` (a migration, source to target) or `reverse` (a
/// rollback: from the cluster a finalized migration wrote to, back onto its old source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Forward,
    Reverse,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the engine is doing while `running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Copying,
    Replicating,
}

/// Copy tuning. Zero or absent means "the default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloneTuning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_collections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_workers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insert_workers: Option<u32>,
    /// Target size of one insert batch, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_bytes: Option<u64>,
    /// Target size of one copy partition (the unit a restarted copy skips), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_bytes: Option<u64>,
}

/// Replication tuning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicationTuning {
    /// Number of parallel appliers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// Maximum operations in one bulk write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk_ops: Option<u32>,
}

/// `POST /start` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRequest {
    #[serde(default)]
    pub include_namespaces: Vec<String>,
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<CloneTuning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationTuning>,
    /// Forget an earlier run (finalized or failed) and start over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// Let the migration drop selected namespaces that already hold documents on the target
    /// (otherwise the preflight fails and the engine refuses to overwrite them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_target_namespaces: bool,
    /// Start without the automatic preflight (at your own risk).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_preflight: bool,
}

/// `POST /reverse` body: replicate back from the cluster a finalized migration wrote to
/// (its target) onto its old source, from the point recorded at its finalize, without a copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReverseRequest {
    /// Start even though the old source received writes to the selected namespaces after the
    /// cutoff (the reverse then overwrites the documents the new cluster changed, and keeps
    /// the others as the old source has them: finalizing the reverse reports them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Replication tuning of the reverse (default: the migration's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationTuning>,
    /// Start without the preflight of the swapped roles (the reverse's own checks still run).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_preflight: bool,
}

/// `POST /resume` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResumeRequest {
    #[serde(default)]
    pub from_failure: bool,
}

/// How much `finalize` verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    #[default]
    Full,
    Counts,
    None,
}

/// `POST /finalize` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FinalizeRequest {
    #[serde(default)]
    pub verify: VerifyMode,
    #[serde(default)]
    pub block_source_writes: bool,
}

/// A point in the source's oplog: `ts` is `"<secs>.<inc>"`, `isoDate` RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpTime {
    pub ts: String,
    pub iso_date: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointInfo {
    pub op_time: Option<OpTime>,
    pub saved_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitialSync {
    /// The applied op time has passed the copy's finish time: the target is consistent.
    pub completed: bool,
    pub clone_completed: bool,
    pub estimated_clone_size_bytes: u64,
    pub cloned_size_bytes: u64,
    pub estimated_documents: u64,
    pub cloned_documents: u64,
    pub collections_total: u64,
    pub collections_completed: u64,
    pub eta_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexFailure {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexReport {
    pub restored: u64,
    pub failed: Vec<IndexFailure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MismatchKind {
    Missing,
    Extra,
    Different,
    Metadata,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mismatch {
    pub namespace: String,
    /// The document's `_id` as relaxed extended JSON (or the item name for metadata).
    pub id: String,
    pub kind: MismatchKind,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationReport {
    pub mode: VerifyMode,
    pub collections_checked: u64,
    pub documents_checked: u64,
    pub bytes_checked: u64,
    pub mismatches: Vec<Mismatch>,
    pub mismatch_count: u64,
    pub truncated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinalizationReport {
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub cutoff: Option<OpTime>,
    /// The step in progress (`cutoff`, `draining`, `indexes`, `verifying`, `done`).
    pub step: String,
    pub indexes: IndexReport,
    pub verification: Option<VerificationReport>,
    pub warnings: Vec<String>,
    /// The target's own cluster time once the cutoff was applied and the indexes restored:
    /// where a reverse (a rollback onto the source) starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_start_point: Option<OpTime>,
}

/// What a reverse rolls back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReverseInfo {
    /// The finalized migration's job id (a MigrationJob UID, or `--job-id`).
    pub job_id: String,
    /// Its name, for people.
    pub job_name: String,
    /// The migration's cutoff (a time of the old source, this reverse's target).
    pub cutoff: Option<OpTime>,
    /// Where this reverse started reading (a time of the new cluster, its source).
    pub start_point: Option<OpTime>,
}

/// `GET /status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// False exactly when an error is recorded.
    pub ok: bool,
    pub state: State,
    pub phase: Option<Phase>,
    pub info: String,
    pub error: Option<String>,
    /// Why the worker stopped, when it is a known condition a tool may act on (e.g. `TargetInUse`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// `forward` (a migration) or `reverse` (a rollback of a finalized one).
    #[serde(default)]
    pub direction: Direction,
    /// A reverse: the migration it rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse: Option<ReverseInfo>,
    pub lag_time_seconds: Option<f64>,
    pub events_read: u64,
    pub events_applied: u64,
    pub last_replicated_op_time: Option<OpTime>,
    pub checkpoint: Option<CheckpointInfo>,
    pub initial_sync: InitialSync,
    pub finalization: Option<FinalizationReport>,
    pub warnings: Vec<String>,
}

/// Body of every error answer of the worker API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub ok: bool,
    pub error: String,
}

/// Body of a successful state-changing call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiOk {
    pub ok: bool,
    pub state: State,
    /// `POST /start` only: the preflight report the start was judged by (warnings included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<Box<crate::api::PreflightReport>>,
}
