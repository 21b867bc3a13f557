use clap::Parser;

use mongoferry::api::{
    CloneTuning, FinalizeRequest, ReplicationTuning, ResumeRequest, ReverseRequest, StartRequest,
    VerifyMode,
};
use mongoferry::cli::client::{self, Client};
use mongoferry::cli::{Cli, OperatorCommand, Verb, VerifyArg};

fn main() -> std::process::ExitCode {
    bound_allocator_memory();
    let cli = Cli::parse();
    mongoferry::telemetry::init(cli.log_json);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Verb::Worker(a) = &cli.command {
        if let Some(n) = a.cpus {
            mongoferry::engine::tuning::set_cpus(usize::from(n));
            builder.worker_threads(usize::from(n));
        }
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(v: Verb) -> Result<(), Box<dyn std::error::Error>> {
    match v {
        Verb::Worker(a) => mongoferry::worker::run(a).await,
        Verb::Demo(a) => match a.kubeconfig {
            Some(kubeconfig) => {
                let k = mongoferry::demo::kube::KubeDemo {
                    kubeconfig,
                    helm: a.helm,
                    chart: a.chart,
                    namespace: a.namespace,
                    helm_set: a.helm_set,
                };
                Ok(mongoferry::demo::kube::run(&k, a.documents).await?)
            }
            None => Ok(mongoferry::demo::run(a.documents).await?),
        },
        Verb::Operator(a) => match &a.command {
            Some(OperatorCommand::Check(c)) => {
                let report = mongoferry::operator::check::run(&c.options()).await?;
                if c.json {
                    print_json(&serde_json::to_value(&report)?);
                } else {
                    print!("{}", report.render());
                }
                if report.ok {
                    Ok(())
                } else {
                    Err("the installation check failed".into())
                }
            }
            None => Ok(mongoferry::operator::run(a.options()).await?),
        },
        Verb::Crd(a) if a.reference => {
            print!("{}", mongoferry::api::crd_reference::markdown()?);
            Ok(())
        }
        Verb::Crd(_) => {
            print!("{}", mongoferry::api::crd::crd_yaml()?);
            Ok(())
        }
        Verb::Start(a) => {
            let c = Client::new(&a.client)?;
            let clone = CloneTuning {
                parallel_collections: a.clone_parallel_collections,
                read_workers: a.clone_read_workers,
                insert_workers: a.clone_insert_workers,
                batch_bytes: a.clone_batch_bytes,
                partition_bytes: a.clone_partition_bytes,
            };
            let replication = ReplicationTuning {
                workers: a.repl_workers,
                bulk_ops: a.repl_bulk_ops,
            };
            // Absent rather than empty, so the worker's defaults apply.
            let clone = (clone != CloneTuning::default()).then_some(clone);
            let replication = (replication != ReplicationTuning::default()).then_some(replication);
            let req = StartRequest {
                include_namespaces: a.include,
                exclude_namespaces: a.exclude,
                clone,
                replication,
                reset: a.reset,
                drop_target_namespaces: a.drop_target_namespaces,
                skip_preflight: a.skip_preflight,
            };
            print_json(&c.post("/start", &req).await?);
            Ok(())
        }
        Verb::Preflight(a) => {
            let report = mongoferry::worker::preflight(&a).await?;
            if a.json {
                print_json(&serde_json::to_value(&report)?);
            } else {
                print!("{}", mongoferry::preflight::render_table(&report));
            }
            if report.ok {
                Ok(())
            } else {
                Err(format!("preflight failed: {}", report.summary).into())
            }
        }
        Verb::Pause(a) => {
            print_json(
                &Client::new(&a)?
                    .post("/pause", &serde_json::json!({}))
                    .await?,
            );
            Ok(())
        }
        Verb::Resume(a) => {
            let req = ResumeRequest {
                from_failure: a.from_failure,
            };
            print_json(&Client::new(&a.client)?.post("/resume", &req).await?);
            Ok(())
        }
        Verb::Finalize(a) => {
            let req = FinalizeRequest {
                verify: match a.verify {
                    VerifyArg::Full => VerifyMode::Full,
                    VerifyArg::Counts => VerifyMode::Counts,
                    VerifyArg::None => VerifyMode::None,
                },
                block_source_writes: a.block_source_writes,
            };
            print_json(&Client::new(&a.client)?.post("/finalize", &req).await?);
            Ok(())
        }
        Verb::Reverse(a) => {
            let req = ReverseRequest {
                force: a.force,
                skip_preflight: a.skip_preflight,
                replication: None,
            };
            print_json(&Client::new(&a.client)?.post("/reverse", &req).await?);
            Ok(())
        }
        Verb::Status(a) => {
            let c = Client::new(&a.client)?;
            let s = if a.watch {
                client::watch(&c, a.interval).await?
            } else {
                c.status().await?
            };
            print_json(&serde_json::to_value(&s)?);
            if s.ok {
                Ok(())
            } else {
                Err(s
                    .error
                    .unwrap_or_else(|| "the migration reports an error".into())
                    .into())
            }
        }
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// glibc's allocator, left alone, keeps up to 8 arenas per core and raises its mmap threshold
/// to the size of the blocks freed: a copy of 1 MB documents on 16 cores then holds 425 MiB
/// (172 MiB on 2). Fixing both (4 arenas; blocks of 256 KiB and more mapped and unmapped on
/// their own) keeps the copy's peak at 112 MiB sized for 16 cores and 126 MiB on 2
/// (docs/benchmarks.md, "Memory and cores"). `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_` in
/// the environment still win.
fn bound_allocator_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const ARENAS: libc::c_int = 4;
        const MMAP_THRESHOLD: libc::c_int = 256 * 1024;
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only changes allocator parameters; called before any thread
            // exists.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) };
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        }
    }
}
