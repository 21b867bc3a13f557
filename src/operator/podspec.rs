//! The worker pod and the API-token Secret, built from the MigrationJob (pure).
//!
//! One bare Pod per job (restartPolicy Always, owned by the job): at most one worker writes
//! to a target, and the operator alone decides when a pod exists — see docs/operator.md for
//! why not a StatefulSet. Secrets reach the worker as files (Secret volumes), never as
//! arguments, and the pod carries a hash of everything it was built from, so a changed spec
//! or a rotated credentials Secret replaces it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, Probe, SeccompProfile, Secret,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use crate::api::crd::{Endpoint, MigrationJob};

use super::reverse::Migration;

pub const WORKER_PORT: i32 = 2242;
pub const CONTAINER: &str = "worker";
pub const TOKEN_KEY: &str = "token";
pub const LABEL_JOB: &str = "mongoferry.io/job";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "mongoferry-operator";
pub const ANNOTATION_SPEC_HASH: &str = "mongoferry.io/spec-hash";
pub const ANNOTATION_CREDENTIALS_HASH: &str = "mongoferry.io/credentials-hash";
const MOUNT_ROOT: &str = "/etc/mongoferry";
/// User and group the worker runs as (the image's non-root user, as in distroless "nonroot").
pub const RUN_AS: i64 = 65532;

pub fn pod_name(job: &str) -> String {
    format!("{}-worker", truncate(job, 240))
}

pub fn token_secret_name(job: &str) -> String {
    format!("{}-api-token", truncate(job, 240))
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Labels every object the operator creates for `job` carries.
pub fn labels(job: &str) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    l.insert(LABEL_COMPONENT.into(), "migration-worker".into());
    if job.len() <= 63 {
        l.insert(LABEL_JOB.into(), job.into());
    }
    l
}

/// Everything the pod builder needs besides the job.
#[derive(Debug, Clone)]
pub struct PodInputs<'a> {
    /// Used when the job names no image.
    pub default_image: &'a str,
    /// Hash of the referenced Secrets' relevant data (a rotation changes it).
    pub credentials_hash: &'a str,
    /// ServiceAccount of the pod (None: the namespace's `default`); its token is never mounted.
    pub service_account: Option<&'a str>,
    pub owner: OwnerReference,
    /// The migration the worker serves: the job's own, or the one a reverse rolls back.
    pub migration: &'a Migration,
}

/// The worker pod, with `mongoferry.io/spec-hash` over everything else in it.
pub fn worker_pod(job: &MigrationJob, inp: &PodInputs<'_>) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let spec = &job.spec;
    let m = inp.migration;
    let w = spec.worker.clone().unwrap_or_default();
    let mut args: Vec<String> = vec![
        "worker".into(),
        "--source".into(),
        m.source.uri.clone(),
        "--target".into(),
        m.target.uri.clone(),
        "--listen".into(),
        format!("$(POD_IP):{WORKER_PORT}"),
        "--api-token-file".into(),
        format!("{MOUNT_ROOT}/api/{TOKEN_KEY}"),
        // Who the worker works for: it records the owner of the target, and names the
        // owning job when it refuses a target another job owns. A reverse's worker serves the
        // migration it reverses (the reverse's own job is `<that id>:reverse`).
        "--job-id".into(),
        m.job_id.clone(),
        "--job-name".into(),
        m.job_name.clone(),
    ];
    let mut env = vec![EnvVar {
        name: "POD_IP".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut volumes = vec![secret_volume(
        "api-token",
        &token_secret_name(&name),
        TOKEN_KEY,
        TOKEN_KEY,
    )];
    let mut mounts = vec![mount("api-token", "api")];
    for (side, ep) in [("source", &m.source), ("target", &m.target)] {
        endpoint_wiring(side, ep, &mut args, &mut env, &mut volumes, &mut mounts);
    }

    let mut labels = w.pod_labels.clone();
    labels.extend(self::labels(&name));
    let mut annotations = w.pod_annotations.clone();
    annotations.insert(
        ANNOTATION_CREDENTIALS_HASH.into(),
        inp.credentials_hash.into(),
    );

    let container = Container {
        name: CONTAINER.into(),
        image: Some(w.image.clone().unwrap_or_else(|| inp.default_image.into())),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["mongoferry".into()]),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("api".into()),
            container_port: WORKER_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(probe("/readyz", 2, 5, 3)),
        liveness_probe: Some(probe("/healthz", 30, 10, 6)),
        resources: w.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(container_security_context()),
        ..Default::default()
    };
    let pod_spec = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        restart_policy: Some("Always".into()),
        // The worker drains and checkpoints on SIGTERM.
        termination_grace_period_seconds: Some(60),
        automount_service_account_token: Some(false),
        service_account_name: inp.service_account.map(str::to_string),
        security_context: Some(pod_security_context()),
        node_selector: (!w.node_selector.is_empty()).then(|| w.node_selector.clone()),
        tolerations: (!w.tolerations.is_empty()).then(|| w.tolerations.clone()),
        affinity: w.affinity.clone(),
        priority_class_name: w.priority_class_name.clone(),
        ..Default::default()
    };
    let mut pod = Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&name)),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![inp.owner.clone()]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    };
    let hash = spec_hash(&pod);
    if let Some(a) = pod.metadata.annotations.as_mut() {
        a.insert(ANNOTATION_SPEC_HASH.into(), hash);
    }
    pod
}

/// Non-root (65532), no privilege escalation, no capabilities, read-only root filesystem,
/// the runtime's default seccomp profile: the worker needs none of what these take away.
fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

/// `fsGroup` makes the Secret files (mode 0400, owned by root) group-readable by the worker's
/// group, so a non-root worker can read its password and token files.
fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

/// Hash of the pod's spec, labels and annotations (before the hash annotation is added).
pub fn spec_hash(pod: &Pod) -> String {
    let doc = serde_json::json!({
        "spec": pod.spec,
        "labels": pod.metadata.labels,
        "annotations": pod.metadata.annotations,
    });
    short_hash(doc.to_string().as_bytes())
}

pub fn short_hash(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn endpoint_wiring(
    side: &str,
    ep: &Endpoint,
    args: &mut Vec<String>,
    env: &mut Vec<EnvVar>,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
) {
    if let Some(c) = &ep.credentials_secret_ref {
        env.push(EnvVar {
            name: format!("MONGOFERRY_{}_USERNAME", side.to_uppercase()),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: c.name.clone(),
                    key: c.username_key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let vol = format!("{side}-credentials");
        volumes.push(secret_volume(&vol, &c.name, &c.password_key, "password"));
        mounts.push(mount(&vol, &vol));
        args.push(format!("--{side}-password-file"));
        args.push(format!("{MOUNT_ROOT}/{vol}/password"));
    }
    if let Some(ca) = ep.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        let vol = format!("{side}-tls");
        volumes.push(secret_volume(&vol, &ca.name, &ca.key, "ca.crt"));
        mounts.push(mount(&vol, &vol));
        args.push(format!("--{side}-tls-ca-file"));
        args.push(format!("{MOUNT_ROOT}/{vol}/ca.crt"));
    }
}

fn secret_volume(name: &str, secret: &str, key: &str, path: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: path.into(),
                mode: None,
            }]),
            default_mode: Some(0o400),
            optional: Some(false),
        }),
        ..Default::default()
    }
}

fn mount(volume: &str, dir: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: format!("{MOUNT_ROOT}/{dir}"),
        read_only: Some(true),
        ..Default::default()
    }
}

fn probe(path: &str, initial: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("api".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// The Secret holding the worker API token (owned by the job, so deleted with it).
pub fn token_secret(job: &MigrationJob, owner: OwnerReference, token: &str) -> Secret {
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut data = BTreeMap::new();
    data.insert(TOKEN_KEY.to_string(), token.to_string());
    Secret {
        metadata: ObjectMeta {
            name: Some(token_secret_name(&name)),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels(&name)),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        string_data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// A fresh random API token (256 bits, hex).
pub fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd::MigrationJobSpec;

    fn job(spec: serde_json::Value) -> MigrationJob {
        let spec: MigrationJobSpec = serde_json::from_value(spec).expect("spec");
        let mut j = MigrationJob::new("mig", spec);
        j.metadata.namespace = Some("ns".into());
        j.metadata.uid = Some("u1".into());
        j
    }

    fn migration() -> &'static Migration {
        static M: std::sync::OnceLock<Migration> = std::sync::OnceLock::new();
        M.get_or_init(|| super::super::reverse::own(&job(base())).expect("migration"))
    }

    fn inputs() -> PodInputs<'static> {
        PodInputs {
            migration: migration(),
            default_image: "mongoferry:dev",
            credentials_hash: "abc",
            service_account: None,
            owner: OwnerReference {
                api_version: "mongoferry.io/v1alpha1".into(),
                kind: "MigrationJob".into(),
                name: "mig".into(),
                uid: "u1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        }
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "source": {"uri": "mongodb://src:27017/?replicaSet=rs0",
                       "credentialsSecretRef": {"name": "src-creds", "passwordKey": "pw"},
                       "tls": {"caSecretRef": {"name": "src-ca"}}},
            "target": {"uri": "mongodb://dst:27017/?replicaSet=rs1"},
            "worker": {"podLabels": {"team": "data"}, "image": "reg/mongoferry:1.0"}
        })
    }

    #[test]
    fn wires_secrets_as_files_and_env() {
        let pod = worker_pod(&job(base()), &inputs());
        let spec = pod.spec.as_ref().expect("spec");
        let c = &spec.containers[0];
        let args = c.args.clone().unwrap_or_default().join(" ");
        assert!(args.contains("--source-password-file /etc/mongoferry/source-credentials/password"));
        assert!(args.contains("--source-tls-ca-file /etc/mongoferry/source-tls/ca.crt"));
        assert!(!args.contains("--target-password-file"), "{args}");
        assert!(args.contains("--listen $(POD_IP):2242"));
        assert!(args.contains("--job-id u1 --job-name ns/mig"), "{args}");
        assert_eq!(c.image.as_deref(), Some("reg/mongoferry:1.0"));
        let vols = spec.volumes.clone().unwrap_or_default();
        let creds = vols
            .iter()
            .find(|v| v.name == "source-credentials")
            .expect("vol");
        let items = creds
            .secret
            .as_ref()
            .and_then(|s| s.items.clone())
            .unwrap_or_default();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("pw", "password")
        );
        let env = c.env.clone().unwrap_or_default();
        assert!(env.iter().any(|e| e.name == "MONGOFERRY_SOURCE_USERNAME"));
        assert!(env.iter().all(|e| e.value.is_none() || e.name == "POD_IP"));
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("data"));
        assert_eq!(labels.get(LABEL_JOB).map(String::as_str), Some("mig"));
        assert_eq!(
            pod.metadata.owner_references.as_ref().map(Vec::len),
            Some(1)
        );
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    }

    #[test]
    fn hash_follows_spec_and_credentials() {
        let a = worker_pod(&job(base()), &inputs());
        let b = worker_pod(&job(base()), &inputs());
        let h = |p: &Pod| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_SPEC_HASH).cloned())
        };
        assert_eq!(h(&a), h(&b));
        let mut i = inputs();
        i.credentials_hash = "rotated";
        assert_ne!(h(&a), h(&worker_pod(&job(base()), &i)));
        let mut s = base();
        s["worker"]["image"] = "reg/mongoferry:2.0".into();
        assert_ne!(h(&a), h(&worker_pod(&job(s), &inputs())));
    }

    #[test]
    fn hardened_and_without_api_access() {
        let mut i = inputs();
        let pod = worker_pod(&job(base()), &i);
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.service_account_name, None);
        let psc = spec.security_context.as_ref().expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(65532));
        assert_eq!(psc.fs_group, Some(65532));
        let seccomp = psc.seccomp_profile.as_ref().map(|p| p.type_.as_str());
        assert_eq!(seccomp, Some("RuntimeDefault"));
        let sc = spec.containers[0]
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.run_as_user, Some(65532));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let drop = sc.capabilities.as_ref().and_then(|c| c.drop.clone());
        assert_eq!(drop, Some(vec!["ALL".to_string()]));
        let seccomp = sc.seccomp_profile.as_ref().map(|p| p.type_.as_str());
        assert_eq!(seccomp, Some("RuntimeDefault"));

        i.service_account = Some("mongoferry-worker");
        let with_sa = worker_pod(&job(base()), &i);
        let spec = with_sa.spec.as_ref().expect("spec");
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("mongoferry-worker")
        );
        assert_eq!(spec.automount_service_account_token, Some(false));
        let h = |p: &Pod| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_SPEC_HASH).cloned())
        };
        assert_ne!(
            h(&pod),
            h(&with_sa),
            "the ServiceAccount is part of the hash"
        );
    }

    #[test]
    fn default_image_and_token() {
        let mut s = base();
        s["worker"] = serde_json::json!({});
        let pod = worker_pod(&job(s), &inputs());
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        assert_eq!(c.image.as_deref(), Some("mongoferry:dev"));
        let t = new_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token());
        let sec = token_secret(&job(base()), inputs().owner, &t);
        assert_eq!(sec.metadata.name.as_deref(), Some("mig-api-token"));
    }

    #[test]
    fn a_reverse_pod_serves_the_migration_it_reverses() {
        let mut back = job(serde_json::json!({"reverseOf": {"name": "mig"}}));
        back.metadata.name = Some("back".into());
        back.metadata.uid = Some("u2".into());
        let mut i = inputs();
        i.owner.name = "back".into();
        i.owner.uid = "u2".into();
        let pod = worker_pod(&back, &i);
        assert_eq!(pod.metadata.name.as_deref(), Some("back-worker"));
        let spec = pod.spec.as_ref().expect("spec");
        let args = spec.containers[0]
            .args
            .clone()
            .unwrap_or_default()
            .join(" ");
        assert!(
            args.contains("--source mongodb://src:27017/?replicaSet=rs0 --target mongodb://dst:27017/?replicaSet=rs1"),
            "the migration's roles (the worker swaps them for the reverse): {args}"
        );
        assert!(
            args.contains("--job-id u1 --job-name ns/mig"),
            "the migration's identity: {args}"
        );
        assert!(args.contains("--source-password-file"), "{args}");
        let vols = spec.volumes.clone().unwrap_or_default();
        let token = vols.iter().find(|v| v.name == "api-token").expect("token");
        assert_eq!(
            token.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
            Some("back-api-token"),
            "its own API token"
        );
    }
}
