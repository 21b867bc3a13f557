//! The `MigrationJob` custom resource (`mongoferry.io/v1alpha1`): spec, status, schema and
//! the CEL rules the API server enforces at admission.
//!
//! Schema rules of thumb (see docs/operator.md): plain string enums only, no untagged or
//! internally tagged enums, no `Option<Enum>`; every change is pinned by the golden file
//! `crds/mongoferry.io_migrationjobs.yaml`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A live migration from one MongoDB replica set to another, run by one worker pod.
// The repeated `printcolumn(type_ = "string")` attributes are distinct columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mongoferry.io",
    version = "v1alpha1",
    kind = "MigrationJob",
    namespaced,
    shortname = "mj",
    status = "MigrationJobStatus",
    doc = "A live MongoDB migration: copy, then replicate, then finalize, driven by desiredState.",
    printcolumn(name = "Direction", type_ = "string", json_path = ".status.direction"),
    printcolumn(name = "Desired", type_ = "string", json_path = ".spec.desiredState"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.replication.lagSeconds",
        description = "Replication lag in seconds"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "!has(oldSelf.namespaces) || (has(self.namespaces) && self.namespaces == oldSelf.namespaces)"
).message(
    "spec.namespaces is immutable once set: the worker has already selected what to copy; create a new MigrationJob to migrate a different set"
))]
#[x_kube(validation = Rule::new(
    "has(self.reverseOf) || (has(self.source) && has(self.target))"
).message(
    "spec.source and spec.target are required (unless spec.reverseOf names the finalized MigrationJob to reverse)"
))]
#[x_kube(validation = Rule::new(
    "!has(self.reverseOf) || (!has(self.source) && !has(self.target) && !has(self.namespaces))"
).message(
    "with spec.reverseOf, leave out spec.source, spec.target and spec.namespaces: a reverse takes them from the MigrationJob it reverses, swapped"
))]
#[x_kube(validation = Rule::new("has(self.reverseOf) == has(oldSelf.reverseOf)").message(
    "spec.reverseOf cannot be added or removed: a MigrationJob is a migration or a reverse for its whole life; create a new MigrationJob"
))]
#[serde(rename_all = "camelCase")]
pub struct MigrationJobSpec {
    /// The deployment to migrate from (a replica set). Immutable. Required unless
    /// `reverseOf` is set (then left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "spec.source is immutable: a running migration cannot switch deployments; create a new MigrationJob"
    ))]
    pub source: Option<Endpoint>,
    /// The deployment to migrate to (a replica set). Immutable. Required unless `reverseOf`
    /// is set (then left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "spec.target is immutable: a running migration cannot switch deployments; create a new MigrationJob"
    ))]
    pub target: Option<Endpoint>,
    /// Make this job the reverse of a finalized MigrationJob of the same namespace: it
    /// replicates that job's target back onto its source (from the point its finalize
    /// recorded), with its namespaces and credentials. Cannot be added or removed later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_of: Option<ReverseOf>,
    /// running (copy, then replicate), paused, or finalized (cut over; terminal).
    #[serde(default)]
    #[x_kube(validation = Rule::new("oldSelf != 'finalized' || self == 'finalized'").message(
        "desiredState cannot leave finalized: a finalized migration is terminal; create a new MigrationJob to migrate again"
    ))]
    pub desired_state: DesiredState,
    /// Which namespaces to migrate (default: all user databases). Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Namespaces>,
    /// Copy and replication tuning, sent to the worker when the migration starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<Tuning>,
    /// How to finalize (cut over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalize: Option<FinalizeSpec>,
    /// The worker pod's image and scheduling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerSpec>,
    /// Drop selected namespaces that already exist on the target before the copy (otherwise
    /// the preflight refuses to start). Read when the migration starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_target_namespaces: bool,
    /// Start without the preflight checks (not recommended: a failing check usually means
    /// the migration cannot finish).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_preflight: bool,
}

impl MigrationJobSpec {
    /// The name of the MigrationJob this job reverses, if it is a reverse.
    pub fn reverse_of_name(&self) -> Option<&str> {
        self.reverse_of.as_ref().map(|r| r.name.as_str())
    }
}

/// The migration a reverse rolls back.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReverseOf {
    /// Name of the finalized MigrationJob (same namespace) to reverse. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "spec.reverseOf.name is immutable: a reverse cannot switch migrations; create a new MigrationJob"
    ))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Start even though the old source received writes to the selected namespaces after the
    /// cutoff (the reverse then overwrites the documents the new cluster changed and keeps
    /// the others; finalizing the reverse reports them). Read when the reverse starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// How to reach one deployment. Credentials never go in the URI.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Connection string without credentials, e.g. `mongodb://db-0.db:27017,db-1.db:27017/?replicaSet=rs0`.
    #[x_kube(validation = Rule::new("self.startsWith('mongodb://') || self.startsWith('mongodb+srv://')").message(
        "uri must start with mongodb:// or mongodb+srv://"
    ))]
    #[x_kube(validation = Rule::new("!self.matches('^[a-z+]+://[^/@]*@')").message(
        "uri must not contain a user name or password; put them in the Secret named by credentialsSecretRef"
    ))]
    #[schemars(length(min = 11, max = 1024))]
    pub uri: String,
    /// Secret (same namespace) holding the user name and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// TLS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// A Secret with the user name and password of one deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret in the MigrationJob's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the user name.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1))]
    pub username_key: String,
    /// Key of the password.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Secret key holding the PEM CA bundle that signed the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret in the MigrationJob's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the PEM bundle.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// What the user wants the migration to be doing.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    #[default]
    Running,
    Paused,
    Finalized,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Paused => "paused",
            DesiredState::Finalized => "finalized",
        }
    }
}

/// Namespace patterns: `db.coll`, `db.*` or `/regex/`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Namespaces {
    /// Only these namespaces (empty: every user namespace).
    #[serde(default)]
    #[x_kube(validation = Rule::new(r"self.all(p, p.matches('^(/.+/|[^./ $]+[.][^ ]+)$'))").message(
        "each include pattern must be db.collection, db.* or a regular expression written /…/"
    ))]
    #[schemars(length(max = 100), inner(length(min = 1, max = 256)))]
    pub include: Vec<String>,
    /// Never these namespaces (applied after include).
    #[serde(default)]
    #[x_kube(validation = Rule::new(r"self.all(p, p.matches('^(/.+/|[^./ $]+[.][^ ]+)$'))").message(
        "each exclude pattern must be db.collection, db.* or a regular expression written /…/"
    ))]
    #[schemars(length(max = 100), inner(length(min = 1, max = 256)))]
    pub exclude: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Tuning {
    /// Initial copy: parallelism and batch size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<CloneTuning>,
    /// Change-stream apply: parallelism and bulk size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationTuning>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CloneTuning {
    /// Collections copied at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub parallel_collections: Option<u32>,
    /// Readers per collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub read_workers: Option<u32>,
    /// Parallel insert writers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub insert_workers: Option<u32>,
    /// Target size of one insert batch in bytes (64 KiB to 64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 65536, max = 67108864))]
    pub batch_bytes: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationTuning {
    /// Parallel appliers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub workers: Option<u32>,
    /// Maximum operations in one bulk write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub bulk_ops: Option<u32>,
}

/// How much finalize verifies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    #[default]
    Full,
    Counts,
    None,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct FinalizeSpec {
    /// full (every document compared), counts, or none.
    #[serde(default)]
    pub verify: Verify,
    /// Block user writes on the source before taking the cutoff.
    #[serde(default)]
    pub block_source_writes: bool,
}

/// The worker pod's image and scheduling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Worker image (default: the operator's --worker-image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// CPU and memory of the worker container (none set by default; with default tuning the worker stays under 256 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the worker pod must run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the worker pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// PriorityClass of the worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Extra labels of the worker pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra annotations of the worker pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
}

/// Observed state, written only by the operator (server-side apply, field manager
/// `mongoferry-operator`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MigrationJobStatus {
    /// pending (no worker yet), idle, running, paused, finalizing, finalized or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// copying or replicating while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// forward: the job replicates from spec.source to spec.target; reverse: it replicates
    /// the target of the job named by spec.reverseOf back onto that job's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// The spec generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Paused, Finalized, Failed, PreflightPassed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Copy progress for display, e.g. `42%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Initial copy progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyStatus>,
    /// Change-stream replication progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationStatus>,
    /// The finalize report (cutoff, indexes, verification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalization: Option<FinalizationStatus>,
    /// The worker pod running this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_pod: Option<WorkerPodStatus>,
    /// What is happening, or what to fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The last `mongoferry.io/retry` annotation value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_retry: Option<String>,
    /// The last `mongoferry.io/reset` annotation value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_reset: Option<String>,
    /// The preflight report the worker judged the start by (the `PreflightPassed` condition
    /// summarises it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<PreflightStatus>,
}

/// The last preflight report, as the worker gave it when asked to start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PreflightStatus {
    /// No check failed (warnings allowed).
    pub passed: bool,
    /// One line: how many checks passed, warned and failed.
    pub summary: String,
    /// When the operator received the report (RFC 3339).
    pub checked_at: String,
    /// The spec generation the report was made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Every check with its verdict; `fix` says what to do when it did not pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<PreflightCheckStatus>,
    /// Data the copy will move (collection stats).
    pub estimated_bytes: u64,
    /// Documents the copy will move.
    pub estimated_documents: u64,
    /// Estimated copy time at the assumed throughput.
    pub estimated_copy_seconds: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PreflightCheckStatus {
    /// e.g. `source.privileges`, `source.oplogWindow`, `target.namespaces`.
    pub name: String,
    /// pass, warn or fail.
    pub status: String,
    /// Why, in one line.
    pub reason: String,
    /// What to do, when the check did not pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CopyStatus {
    /// Bytes copied so far (BSON size).
    pub bytes_copied: u64,
    /// Estimated bytes to copy (collection stats at the start).
    pub bytes_total: u64,
    /// Documents copied so far.
    pub documents_copied: u64,
    /// Estimated documents to copy.
    pub documents_total: u64,
    /// Collections whose copy finished.
    pub collections_copied: u64,
    /// Collections selected.
    pub collections_total: u64,
    /// Bytes copied of the estimate, 0–100 (100 only when the copy completed).
    pub percent: u8,
    /// Estimated seconds until the copy completes, at the current rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// Every selected collection was copied.
    pub completed: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationStatus {
    /// Seconds the target is behind the source (any backlog counts as at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<i64>,
    /// Change events applied to the target.
    pub events_applied: u64,
    /// Source op time of the last applied event (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_op_time: Option<String>,
    /// When the worker last saved its checkpoint (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_time: Option<String>,
    /// The target is consistent (applied time passed the copy's finish).
    pub caught_up: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct FinalizationStatus {
    /// Where finalize is: draining (applying up to the cutoff), indexes, verifying, done.
    pub step: String,
    /// When finalize started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When finalize completed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Source time up to which changes were applied (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutoff: Option<String>,
    /// Indexes given back their source definition (unique, TTL, hidden).
    pub indexes_restored: u64,
    /// At most 20 entries; `indexFailureCount` has the total.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub index_failures: Vec<String>,
    /// Indexes that could not be restored.
    pub index_failure_count: u64,
    /// What the verification compared and found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationStatus>,
    /// What the report warns about (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The target's cluster time once the cutoff was applied and the indexes restored (RFC
    /// 3339): where a reverse of this migration (POST /reverse on its worker) starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_start_point: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct VerificationStatus {
    /// full, counts or none.
    pub mode: String,
    /// Collections compared.
    pub collections_checked: u64,
    /// Documents compared.
    pub documents_checked: u64,
    /// Differences found (0 means the target equals the source at the cutoff).
    pub mismatch_count: u64,
    /// At most 20 entries, `kind namespace id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatches: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPodStatus {
    /// The worker pod.
    pub name: String,
    /// Restarts of the worker container.
    pub restarts: i32,
    /// The worker pod's address (the operator calls its API there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "description": "Ready, Progressing, Paused, Finalized, Failed or PreflightPassed."},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "observedGeneration": {"type": "integer", "format": "int64", "description": "The spec generation the condition was set for."},
                "lastTransitionTime": {"type": "string", "format": "date-time", "description": "When the status last changed."},
                "reason": {"type": "string", "description": "Machine-readable cause, CamelCase."},
                "message": {"type": "string", "description": "What is happening, or what to fix."}
            }
        }
    })
}

/// The CRD as YAML, as printed by `mongoferry crd` and checked in under crds/.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let crd = MigrationJob::crd();
    Ok(format!(
        "# Generated by `mongoferry crd`; do not edit (a test fails on drift).\n{}",
        serde_yaml::to_string(&crd)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crd_matches_the_types() {
        crate::test_support::assert_checked_in(
            "crds/mongoferry.io_migrationjobs.yaml",
            &crd_yaml().expect("crd renders"),
            "cargo run -- crd > crds/mongoferry.io_migrationjobs.yaml",
        );
    }

    /// The Helm chart ships the same CRD (Helm installs charts/*/crds/ before templates).
    #[test]
    fn chart_crd_matches_the_types() {
        crate::test_support::assert_checked_in(
            "charts/mongoferry/crds/mongoferry.io_migrationjobs.yaml",
            &crd_yaml().expect("crd renders"),
            "cargo run -- crd > charts/mongoferry/crds/mongoferry.io_migrationjobs.yaml",
        );
    }

    #[test]
    fn schema_is_structural_enough() {
        let y = crd_yaml().expect("crd renders");
        for needle in [
            "x-kubernetes-validations",
            "oldSelf != 'finalized'",
            "x-kubernetes-list-map-keys",
            "shortNames",
            "subresources",
        ] {
            assert!(y.contains(needle), "missing {needle}");
        }
        assert!(
            !y.contains("anyOf") && !y.contains("oneOf"),
            "non-structural schema"
        );
    }

    #[test]
    fn spec_defaults() {
        let s: MigrationJobSpec = serde_json::from_value(serde_json::json!({
            "source": {"uri": "mongodb://a:1", "credentialsSecretRef": {"name": "s"}},
            "target": {"uri": "mongodb://b:1"}
        }))
        .expect("parses");
        assert_eq!(s.desired_state, DesiredState::Running);
        let c = s
            .source
            .and_then(|e| e.credentials_secret_ref)
            .expect("ref");
        assert_eq!(
            (c.username_key.as_str(), c.password_key.as_str()),
            ("username", "password")
        );
    }
}
