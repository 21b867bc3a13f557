//! Command-line interface: the worker, its client verbs, and the other roles.

pub mod client;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "mongoferry",
    version,
    about = "Live, zero-downtime MongoDB migrations"
)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "MONGOFERRY_LOG_JSON")]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Verb,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Run the replication engine with its HTTP control API.
    Worker(WorkerArgs),
    /// Start a migration on a worker.
    Start(StartArgs),
    /// Pause a running migration (drains, flushes, checkpoints).
    Pause(ClientArgs),
    /// Resume a paused (or failed, with --from-failure) migration.
    Resume(ResumeArgs),
    /// Cut over: apply up to now, restore indexes, verify, report.
    Finalize(FinalizeArgs),
    /// Roll back a finalized migration: replicate the new cluster back onto the old source
    /// from the point recorded at finalize (docs/runbook.md, "Rolling back a cutover").
    Reverse(ReverseArgs),
    /// Show a worker's status (with --watch, a live progress bar).
    Status(StatusArgs),
    /// Check, before starting, whether a migration can succeed (exit code 1 on a failed check).
    Preflight(PreflightArgs),
    /// Run a real demo migration between two local servers (embedded defaults).
    Demo(DemoArgs),
    /// Run the Kubernetes operator (controller of MigrationJob resources).
    Operator(OperatorArgs),
    /// Print the MigrationJob CustomResourceDefinition as YAML (or its reference page).
    Crd(CrdArgs),
}

#[derive(Args, Debug)]
pub struct CrdArgs {
    /// Print the field reference as Markdown (docs/crd-reference.md) instead of the YAML.
    #[arg(long)]
    pub reference: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Sample documents to load into the source.
    #[arg(long, default_value_t = 40_000)]
    pub documents: u32,
    /// Run through Kubernetes: install the operator with Helm on this cluster and drive a
    /// MigrationJob (without it, the worker runs directly).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The helm binary (with --kubeconfig).
    #[arg(long, default_value = "helm")]
    pub helm: PathBuf,
    /// The chart to install (with --kubeconfig).
    #[arg(long, default_value = "charts/mongoferry")]
    pub chart: PathBuf,
    /// Namespace of the operator and the MigrationJob (with --kubeconfig).
    #[arg(long, default_value = "mongoferry-demo")]
    pub namespace: String,
    /// Extra chart values, `key=value` (repeatable; with --kubeconfig).
    #[arg(long = "set")]
    pub helm_set: Vec<String>,
}

#[derive(Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct OperatorArgs {
    #[command(subcommand)]
    pub command: Option<OperatorCommand>,
    /// Watch MigrationJobs in these namespaces only (comma-separated or repeated; default:
    /// all namespaces). Namespaced RBAC (a Role per namespace) is then enough.
    #[arg(
        long = "namespace",
        env = "MONGOFERRY_OPERATOR_NAMESPACE",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Image of the worker pods (a MigrationJob's spec.worker.image overrides it).
    #[arg(
        long,
        env = "MONGOFERRY_WORKER_IMAGE",
        default_value = concat!("ghcr.io/mongoferry/mongoferry:", env!("CARGO_PKG_VERSION"))
    )]
    pub worker_image: String,
    /// ServiceAccount of the worker pods (it must exist in each job's namespace; default: the
    /// namespace's `default`). Worker pods never mount its token: they need no API access.
    #[arg(long, env = "MONGOFERRY_WORKER_SERVICE_ACCOUNT")]
    pub worker_service_account: Option<String>,
    /// Address of /metrics and /healthz.
    #[arg(
        long,
        env = "MONGOFERRY_METRICS_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_listen: String,
    /// Run the controller only while holding the leader Lease (for several replicas).
    #[arg(long, env = "MONGOFERRY_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Namespace of the leader Lease (default: the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "mongoferry-operator")]
    pub lease_name: String,
    /// Identity in the Lease and in Events (default: host name plus a random suffix).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum OperatorCommand {
    /// Check an installation from inside the cluster (the chart's `helm test`): the
    /// MigrationJob API is served and this ServiceAccount holds every permission the operator
    /// needs. Exit code 1 when a check fails.
    Check(OperatorCheckArgs),
}

#[derive(Args, Debug, Clone)]
pub struct OperatorCheckArgs {
    /// Namespaces the operator watches (comma-separated or repeated; default: all namespaces).
    #[arg(
        long = "namespace",
        env = "MONGOFERRY_OPERATOR_NAMESPACE",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Namespace of the leader Lease; its permissions are checked when given.
    #[arg(long)]
    pub lease_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "mongoferry-operator")]
    pub lease_name: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl OperatorArgs {
    /// The operator's options from these flags.
    pub fn options(&self) -> crate::operator::Options {
        crate::operator::Options {
            namespaces: self.namespaces.clone(),
            worker_image: self.worker_image.clone(),
            worker_service_account: self.worker_service_account.clone(),
            metrics_listen: self.metrics_listen.clone(),
            leader_election: self.leader_election,
            lease_namespace: self.lease_namespace.clone(),
            lease_name: self.lease_name.clone(),
            identity: self.identity.clone(),
        }
    }
}

impl OperatorCheckArgs {
    /// The installation check's options from these flags.
    pub fn options(&self) -> crate::operator::check::CheckOptions {
        crate::operator::check::CheckOptions {
            namespaces: self.namespaces.clone(),
            lease_namespace: self.lease_namespace.clone(),
            lease_name: self.lease_name.clone(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct EndpointArgs {
    /// Source MongoDB URI (a replica set). Credentials are better given as a file below.
    #[arg(long, env = "MONGOFERRY_SOURCE")]
    pub source: String,
    #[arg(long, env = "MONGOFERRY_SOURCE_USERNAME")]
    pub source_username: Option<String>,
    /// File holding the source password (e.g. a mounted Secret).
    #[arg(long, env = "MONGOFERRY_SOURCE_PASSWORD_FILE")]
    pub source_password_file: Option<PathBuf>,
    /// PEM CA bundle to verify the source's TLS certificate.
    #[arg(long, env = "MONGOFERRY_SOURCE_TLS_CA_FILE")]
    pub source_tls_ca_file: Option<PathBuf>,
    /// Target MongoDB URI (a replica set).
    #[arg(long, env = "MONGOFERRY_TARGET")]
    pub target: String,
    #[arg(long, env = "MONGOFERRY_TARGET_USERNAME")]
    pub target_username: Option<String>,
    #[arg(long, env = "MONGOFERRY_TARGET_PASSWORD_FILE")]
    pub target_password_file: Option<PathBuf>,
    #[arg(long, env = "MONGOFERRY_TARGET_TLS_CA_FILE")]
    pub target_tls_ca_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub endpoints: EndpointArgs,
    /// Address of the HTTP API and /metrics.
    #[arg(long, env = "MONGOFERRY_LISTEN", default_value = "127.0.0.1:2242")]
    pub listen: String,
    /// File holding the API token; without one the API is open to whoever reaches it.
    #[arg(long, env = "MONGOFERRY_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Forget the previous run stored in the target and start from idle.
    #[arg(long)]
    pub reset: bool,
    /// Copy throughput the preflight assumes (MB/s, 1 MB = 10^6 bytes). Default 20.
    #[arg(long, env = "MONGOFERRY_THROUGHPUT_MBPS")]
    pub throughput_mbps: Option<f64>,
    /// The migration job this worker serves (the operator passes the MigrationJob's UID). The
    /// target records its owner: a worker of another job is refused, never waits to take it
    /// over. Workers of one job take turns: a new one waits until the running one stops.
    #[arg(long, env = "MONGOFERRY_JOB_ID", default_value = "standalone")]
    pub job_id: String,
    /// A human name of the job for messages (the operator passes `namespace/name`); default
    /// the job id.
    #[arg(long, env = "MONGOFERRY_JOB_NAME")]
    pub job_name: Option<String>,
    /// Seconds the job lease lasts without renewal (3–600). A successor of a worker that died
    /// without releasing it (SIGKILL, a lost node) waits this long; a frozen worker stops
    /// writing within half of it. Shorter: faster takeover, less tolerance of stalls.
    #[arg(long, env = "MONGOFERRY_LEASE_TTL", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(3..=600))]
    pub lease_ttl: u64,
    /// Cores the worker sizes itself for: async threads and the default readers, inserters
    /// and appliers (default: the cores it may use). Memory does not grow with it.
    #[arg(long, env = "MONGOFERRY_CPUS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub cpus: Option<u16>,
}

#[derive(Args, Debug)]
pub struct PreflightArgs {
    #[command(flatten)]
    pub endpoints: EndpointArgs,
    /// Namespaces to include: `db.coll`, `db.*` or `/regex/` (repeatable).
    #[arg(long = "include")]
    pub include: Vec<String>,
    /// Namespaces to exclude (repeatable).
    #[arg(long = "exclude")]
    pub exclude: Vec<String>,
    /// The migration may drop selected namespaces that already hold documents on the target.
    #[arg(long)]
    pub drop_target_namespaces: bool,
    /// The start will use reset (an earlier run's metadata and namespaces are dropped).
    #[arg(long)]
    pub reset: bool,
    /// Copy throughput to assume for the estimate (MB/s, 1 MB = 10^6 bytes). Default 20.
    #[arg(long, env = "MONGOFERRY_THROUGHPUT_MBPS")]
    pub throughput_mbps: Option<f64>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Worker API base URL.
    #[arg(
        long,
        env = "MONGOFERRY_WORKER",
        default_value = "http://127.0.0.1:2242"
    )]
    pub worker: String,
    /// File holding the API token (or set MONGOFERRY_API_TOKEN).
    #[arg(long, env = "MONGOFERRY_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct StartArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Namespaces to include: `db.coll`, `db.*` or `/regex/` (repeatable).
    #[arg(long = "include")]
    pub include: Vec<String>,
    /// Namespaces to exclude (applied after includes; repeatable).
    #[arg(long = "exclude")]
    pub exclude: Vec<String>,
    /// Forget a finalized or failed run and start over.
    #[arg(long)]
    pub reset: bool,
    /// Let the migration drop selected namespaces that already hold documents on the target.
    #[arg(long)]
    pub drop_target_namespaces: bool,
    /// Start without the automatic preflight (at your own risk).
    #[arg(long)]
    pub skip_preflight: bool,
    #[arg(long)]
    pub clone_parallel_collections: Option<u32>,
    #[arg(long)]
    pub clone_read_workers: Option<u32>,
    #[arg(long)]
    pub clone_insert_workers: Option<u32>,
    #[arg(long)]
    pub clone_batch_bytes: Option<u64>,
    /// Target size of one copy partition, in bytes.
    #[arg(long)]
    pub clone_partition_bytes: Option<u64>,
    #[arg(long)]
    pub repl_workers: Option<u32>,
    #[arg(long)]
    pub repl_bulk_ops: Option<u32>,
}

#[derive(Args, Debug)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Resume a failed migration from its checkpoint.
    #[arg(long)]
    pub from_failure: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum VerifyArg {
    Full,
    Counts,
    None,
}

#[derive(Args, Debug)]
pub struct FinalizeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, value_enum, default_value = "full")]
    pub verify: VerifyArg,
    /// Block user writes on the source before taking the cutoff.
    #[arg(long)]
    pub block_source_writes: bool,
}

#[derive(Args, Debug)]
pub struct ReverseArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Start even though the old source was written after the cutoff (the reverse refuses
    /// otherwise, listing the namespaces and counts).
    #[arg(long)]
    pub force: bool,
    /// Skip the preflight of the swapped roles (the reverse's own checks still run).
    #[arg(long)]
    pub skip_preflight: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Follow progress with a live bar until the migration is finalized or failed.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator(args: &[&str]) -> Result<OperatorArgs, clap::Error> {
        let mut argv = vec!["mongoferry", "operator"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Verb::Operator(a) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn operator_watches_listed_namespaces() {
        let a = operator(&["--namespace", "a,b", "--namespace", "c"]).expect("parse");
        assert_eq!(a.namespaces, vec!["a", "b", "c"]);
        assert!(a.command.is_none());
        let a = operator(&["--worker-service-account", "mf-worker"]).expect("parse");
        assert!(a.namespaces.is_empty(), "default: all namespaces");
        assert_eq!(a.worker_service_account.as_deref(), Some("mf-worker"));
        let o = operator(&["--namespace=a", "--leader-election", "--identity", "op-1"])
            .expect("parse")
            .options();
        assert_eq!(o.namespaces, vec!["a"]);
        assert!(o.leader_election);
        assert_eq!(o.identity.as_deref(), Some("op-1"));
        assert_eq!(o.lease_name, "mongoferry-operator");
        assert_eq!(o.metrics_listen, "0.0.0.0:8080");
    }

    #[test]
    fn operator_check_subcommand() {
        let a = operator(&[
            "check",
            "--namespace=shop,billing",
            "--lease-namespace",
            "ops",
            "--lease-name",
            "lead",
        ])
        .expect("parse");
        match a.command {
            Some(OperatorCommand::Check(c)) => {
                assert_eq!(c.namespaces, vec!["shop", "billing"]);
                assert_eq!(c.lease_namespace.as_deref(), Some("ops"));
                assert_eq!(c.lease_name, "lead");
                assert!(!c.json);
                let o = c.options();
                assert_eq!(o.namespaces, vec!["shop", "billing"]);
                assert_eq!(
                    (o.lease_namespace.as_deref(), o.lease_name.as_str()),
                    (Some("ops"), "lead")
                );
            }
            None => panic!("no subcommand"),
        }
        // Flags of the controller do not mix with the check.
        assert!(operator(&["--leader-election", "check"]).is_err());
    }
}
