//! `mongoferry demo --kubeconfig …`: the same migration driven the way users drive it — the
//! operator installed with Helm, a MigrationJob applied, `desiredState` patched to pause,
//! resume and finalize — against a running Kubernetes API (the README's demo starts the
//! project's local control plane for it).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use super::{step, DemoError, Sample};
use crate::api::crd::{MigrationJob, MigrationJobStatus};

/// Where the Kubernetes demo installs and runs.
#[derive(Debug, Clone)]
pub struct KubeDemo {
    pub kubeconfig: PathBuf,
    pub helm: PathBuf,
    pub chart: PathBuf,
    /// Namespace of the operator (Helm release) and of the MigrationJob.
    pub namespace: String,
    /// Extra `--set` values for the chart.
    pub helm_set: Vec<String>,
}

const RELEASE: &str = "mongoferry";
const JOB: &str = "demo-migration";

pub async fn run(k: &KubeDemo, documents: u32) -> Result<(), DemoError> {
    let started = Instant::now();
    let sample = Sample::start(documents).await?;
    println!(
        "3. installing the operator with Helm ({})",
        k.chart.display()
    );
    let result = migrate(k, &sample, started).await;
    println!("   cleaning up: MigrationJob, Helm release, servers");
    cleanup(k).await;
    sample.stop();
    result
}

async fn migrate(k: &KubeDemo, sample: &Sample, started: Instant) -> Result<(), DemoError> {
    helm(
        k,
        &[
            "upgrade",
            "--install",
            RELEASE,
            &k.chart.display().to_string(),
            "--namespace",
            &k.namespace,
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
        ],
    )?;
    let client = client(k).await?;
    println!(
        "   operator running in namespace {} (helm status {RELEASE})",
        k.namespace
    );
    let jobs: Api<MigrationJob> = Api::namespaced(client, &k.namespace);
    let job: MigrationJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "mongoferry.io/v1alpha1",
        "kind": "MigrationJob",
        "metadata": {"name": JOB},
        "spec": {
            "source": {"uri": sample.source_uri},
            "target": {"uri": sample.target_uri},
            "desiredState": "running",
            "namespaces": {"include": ["shop.*", "crm.*"]},
            "finalize": {"verify": "full"}
        }
    }))
    .map_err(step)?;
    jobs.create(&PostParams::default(), &job)
        .await
        .map_err(step)?;
    println!("4. applied MigrationJob {}/{JOB} (desiredState: running); the operator starts its worker pod", k.namespace);

    let mut last = String::new();
    let st = wait(&jobs, "the initial sync", Duration::from_secs(600), |s| {
        let line = progress_line(s);
        if line != last {
            println!("   {line}");
            last = line;
        }
        s.replication.as_ref().is_some_and(|r| r.caught_up)
    })
    .await?;
    let copy = st.copy.unwrap_or_default();
    println!(
        "5. initial sync complete: {} documents, {} bytes copied; replicating live writes",
        copy.documents_copied, copy.bytes_copied
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let t = Instant::now();
    patch_state(&jobs, "paused").await?;
    wait(&jobs, "paused", Duration::from_secs(60), |s| {
        s.state.as_deref() == Some("paused")
    })
    .await?;
    println!(
        "6. kubectl patch desiredState=paused → worker paused in {:.1}s (writes keep arriving on the source)",
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    patch_state(&jobs, "running").await?;
    let st = wait(
        &jobs,
        "catch-up after resume",
        Duration::from_secs(120),
        |s| {
            s.state.as_deref() == Some("running")
                && s.replication
                    .as_ref()
                    .and_then(|r| r.lag_seconds)
                    .is_some_and(|l| l <= 1)
        },
    )
    .await?;
    println!(
        "7. desiredState=running → resumed and caught up in {:.1}s: {}",
        t.elapsed().as_secs_f64(),
        progress_line(&st)
    );

    sample.stop_writes().await;
    println!("8. live writes stopped (cutover window); desiredState=finalized");
    patch_state(&jobs, "finalized").await?;
    let st = wait(&jobs, "Finalized", Duration::from_secs(600), |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Finalized" && c.status == "True")
    })
    .await?;
    let f = st.finalization.unwrap_or_default();
    let v = f.verification.unwrap_or_default();
    println!(
        "9. Finalized at cutoff {} (kubectl wait --for=condition=Finalized)",
        f.cutoff.unwrap_or_default()
    );
    println!(
        "   indexes restored: {}, failed: {}",
        f.indexes_restored, f.index_failure_count
    );
    println!(
        "   verification ({}): {} collections, {} documents compared, {} mismatches",
        v.mode, v.collections_checked, v.documents_checked, v.mismatch_count
    );
    let (n_src, n_dst) = sample.counts().await?;
    println!("   documents: source {n_src}, target {n_dst}");
    println!("done in {:.0}s", started.elapsed().as_secs_f64());
    if v.mismatch_count > 0 || n_src != n_dst || f.index_failure_count > 0 {
        return Err(step("the target differs from the source"));
    }
    Ok(())
}

fn helm(k: &KubeDemo, args: &[&str]) -> Result<(), DemoError> {
    let mut cmd = Command::new(&k.helm);
    cmd.args(args).env("KUBECONFIG", &k.kubeconfig);
    if args.first() == Some(&"upgrade") {
        for v in &k.helm_set {
            cmd.args(["--set", v]);
        }
    }
    let out = cmd
        .output()
        .map_err(|e| step(format!("cannot run helm ({}): {e}", k.helm.display())))?;
    if !out.status.success() {
        return Err(step(format!(
            "helm {} failed: {}{}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

async fn client(k: &KubeDemo) -> Result<Client, DemoError> {
    let kc = Kubeconfig::read_from(&k.kubeconfig).map_err(step)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(step)?;
    Client::try_from(config).map_err(step)
}

async fn patch_state(jobs: &Api<MigrationJob>, state: &str) -> Result<(), DemoError> {
    let p = serde_json::json!({"spec": {"desiredState": state}});
    jobs.patch(JOB, &PatchParams::default(), &Patch::Merge(&p))
        .await
        .map_err(step)?;
    Ok(())
}

/// Poll the job's status until `done`; a Failed condition ends the wait with its message.
async fn wait(
    jobs: &Api<MigrationJob>,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&MigrationJobStatus) -> bool,
) -> Result<MigrationJobStatus, DemoError> {
    let t = Instant::now();
    loop {
        let st = jobs
            .get(JOB)
            .await
            .map_err(step)?
            .status
            .unwrap_or_default();
        if done(&st) {
            return Ok(st);
        }
        if let Some(c) = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
        {
            return Err(step(format!("the migration failed: {}", c.message)));
        }
        if t.elapsed() > timeout {
            return Err(step(format!(
                "timed out waiting for {what}: {}",
                progress_line(&st)
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One line of `kubectl get mj`-like progress. Pure.
pub fn progress_line(s: &MigrationJobStatus) -> String {
    let state = s.state.as_deref().unwrap_or("pending");
    let mut line = format!("state {state}");
    if let Some(p) = &s.phase {
        line.push_str(&format!(" ({p})"));
    }
    if let Some(c) = &s.copy {
        line.push_str(&format!(
            ", copy {}% ({} of {} documents, {} of {} collections)",
            c.percent,
            c.documents_copied,
            c.documents_total,
            c.collections_copied,
            c.collections_total
        ));
    }
    if let Some(r) = &s.replication {
        if let Some(l) = r.lag_seconds {
            line.push_str(&format!(", lag {l}s"));
        }
        line.push_str(&format!(", {} events applied", r.events_applied));
    }
    if s.copy.is_none() {
        if let Some(m) = &s.message {
            line.push_str(&format!(": {m}"));
        }
    }
    line
}

/// Delete the job (the operator pauses and stops its worker) and uninstall the release.
async fn cleanup(k: &KubeDemo) {
    if let Ok(c) = client(k).await {
        let jobs: Api<MigrationJob> = Api::namespaced(c, &k.namespace);
        if jobs.delete(JOB, &DeleteParams::default()).await.is_ok() {
            for _ in 0..120 {
                if matches!(jobs.get_opt(JOB).await, Ok(None)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    if let Err(e) = helm(
        k,
        &[
            "uninstall",
            RELEASE,
            "--namespace",
            &k.namespace,
            "--wait",
            "--timeout",
            "60s",
        ],
    ) {
        eprintln!("   {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd::{CopyStatus, ReplicationStatus};

    #[test]
    fn progress_line_reads_like_kubectl() {
        let mut s = MigrationJobStatus {
            message: Some("creating the worker pod".into()),
            ..Default::default()
        };
        assert_eq!(progress_line(&s), "state pending: creating the worker pod");
        s.state = Some("running".into());
        s.phase = Some("copying".into());
        s.copy = Some(CopyStatus {
            percent: 40,
            documents_copied: 4,
            documents_total: 10,
            collections_copied: 1,
            collections_total: 3,
            ..Default::default()
        });
        s.replication = Some(ReplicationStatus {
            lag_seconds: Some(2),
            events_applied: 7,
            ..Default::default()
        });
        assert_eq!(
            progress_line(&s),
            "state running (copying), copy 40% (4 of 10 documents, 1 of 3 collections), lag 2s, 7 events applied"
        );
    }
}
