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
#[serde(rename_all = "camelCase")]
pub struct MigrationJobSpec {
    /// The deployment to migrate from (a replica set). Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "spec.source is immutable: a running migration cannot switch deployments; create a new MigrationJob"
    ))]
    pub source: Endpoint,
    /// The deployment to migrate to (a replica set). Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "spec.target is immutable: a running migration cannot switch deployments; create a new MigrationJob"
    ))]
    pub target: Endpoint,
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
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<CloneTuning>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Paused, Finalized, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Copy progress for display, e.g. `42%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalization: Option<FinalizationStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_pod: Option<WorkerPodStatus>,
    /// What is happening, or what to fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The last `mongoferry.io/retry` annotation value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_retry: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CopyStatus {
    pub bytes_copied: u64,
    pub bytes_total: u64,
    pub documents_copied: u64,
    pub documents_total: u64,
    pub collections_copied: u64,
    pub collections_total: u64,
    pub percent: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    pub completed: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<i64>,
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
    pub step: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutoff: Option<String>,
    pub indexes_restored: u64,
    /// At most 20 entries; `indexFailureCount` has the total.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub index_failures: Vec<String>,
    pub index_failure_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct VerificationStatus {
    pub mode: String,
    pub collections_checked: u64,
    pub documents_checked: u64,
    pub mismatch_count: u64,
    /// At most 20 entries, `kind namespace id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatches: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPodStatus {
    pub name: String,
    pub restarts: i32,
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
                "type": {"type": "string"},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "observedGeneration": {"type": "integer", "format": "int64"},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "reason": {"type": "string"},
                "message": {"type": "string"}
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
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/mongoferry.io_migrationjobs.yaml"
        );
        let generated = crd_yaml().expect("crd renders");
        if std::env::var_os("MONGOFERRY_UPDATE_CRD").is_some() {
            std::fs::write(path, &generated).expect("write crd");
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "crds/mongoferry.io_migrationjobs.yaml is stale: run \
             `cargo run -- crd > crds/mongoferry.io_migrationjobs.yaml` \
             (or MONGOFERRY_UPDATE_CRD=1 cargo test crd)"
        );
    }

    /// The Helm chart ships the same CRD (Helm installs charts/*/crds/ before templates).
    #[test]
    fn chart_crd_matches_the_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/mongoferry/crds/mongoferry.io_migrationjobs.yaml"
        );
        let generated = crd_yaml().expect("crd renders");
        if std::env::var_os("MONGOFERRY_UPDATE_CRD").is_some() {
            std::fs::write(path, &generated).expect("write chart crd");
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "charts/mongoferry/crds/mongoferry.io_migrationjobs.yaml is stale: run \
             `cargo run -- crd > charts/mongoferry/crds/mongoferry.io_migrationjobs.yaml` \
             (or MONGOFERRY_UPDATE_CRD=1 cargo test crd)"
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
        let c = s.source.credentials_secret_ref.expect("ref");
        assert_eq!(
            (c.username_key.as_str(), c.password_key.as_str()),
            ("username", "password")
        );
    }
}
