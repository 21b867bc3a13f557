//! The engine's command, state and retry logic against in-memory stages: no servers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use mongodb::bson::Timestamp;
use tokio_util::sync::CancellationToken;

use super::copy::CopyOutcome;
use super::error::{EngineError, Result, Side};
use super::repl::ReplOutcome;
use super::stages::{JobStore, OnDeposed, Progress, SharedCheckpoint, Stages};
use super::store::{Checkpoint, Identity, Store};
use super::tuning::Tuning;
use super::{Ctx, Engine, Live};
use crate::api::{FinalizeRequest, StartRequest, State};
use crate::telemetry::metrics::Metrics;

/// What the fakes did, in order.
#[derive(Default)]
struct Log(StdMutex<Vec<String>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        if let Ok(mut l) = self.0.lock() {
            l.push(s.into());
        }
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }
    fn count(&self, prefix: &str) -> usize {
        self.all().iter().filter(|s| s.starts_with(prefix)).count()
    }
}

#[derive(Default)]
struct FakeJobs {
    log: Arc<Log>,
    loaded: StdMutex<Checkpoint>,
    saved: StdMutex<Vec<Checkpoint>>,
    acquire_error: StdMutex<Option<EngineError>>,
    /// Fail the next namespace drop (a crash in the middle of a reset).
    fail_drop: AtomicBool,
    /// The lease keeper's deposition callback, to fire by hand.
    deposer: StdMutex<Option<OnDeposed>>,
}

impl FakeJobs {
    fn last_saved(&self) -> Option<Checkpoint> {
        self.saved.lock().ok().and_then(|s| s.last().cloned())
    }
}

impl JobStore for FakeJobs {
    fn probe(&self) -> BoxFuture<'_, Result<()>> {
        async { Ok(()) }.boxed()
    }
    fn acquire<'a>(
        &'a self,
        _waiting: Box<dyn Fn(&EngineError) + Send + Sync + 'a>,
    ) -> BoxFuture<'a, Result<Checkpoint>> {
        async move {
            self.log.push("acquire");
            if let Some(e) = self.acquire_error.lock().ok().and_then(|e| e.clone()) {
                return Err(e);
            }
            Ok(self.loaded.lock().map(|c| c.clone()).unwrap_or_default())
        }
        .boxed()
    }
    fn keep(&self, stop: CancellationToken, on_deposed: OnDeposed) -> tokio::task::JoinHandle<()> {
        if let Ok(mut d) = self.deposer.lock() {
            *d = Some(on_deposed);
        }
        tokio::spawn(async move { stop.cancelled().await })
    }
    fn save<'a>(&'a self, cp: &'a mut Checkpoint) -> BoxFuture<'a, Result<()>> {
        async move {
            self.log.push(format!(
                "save {} resetting={}",
                cp.state.as_str(),
                cp.resetting
            ));
            if let Ok(mut s) = self.saved.lock() {
                s.push(cp.clone());
            }
            Ok(())
        }
        .boxed()
    }
    fn drop_namespaces(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            if self.fail_drop.swap(false, Ordering::SeqCst) {
                self.log.push("drop failed");
                return Err(EngineError::Retry("target restarting".into()));
            }
            self.log.push("drop");
            Ok(())
        }
        .boxed()
    }
    fn clear_records(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            self.log.push("clear");
            Ok(())
        }
        .boxed()
    }
    fn progress(&self) -> BoxFuture<'_, Result<Progress>> {
        async { Ok(Progress::default()) }.boxed()
    }
    fn release(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            self.log.push("release");
            Ok(())
        }
        .boxed()
    }
    fn source_time(&self) -> BoxFuture<'_, Result<Timestamp>> {
        async {
            Ok(Timestamp {
                time: 100,
                increment: 1,
            })
        }
        .boxed()
    }
    fn check_write_blocking(&self) -> BoxFuture<'_, Result<()>> {
        async { Ok(()) }.boxed()
    }
    fn block_writes(&self) -> BoxFuture<'_, Result<()>> {
        async { Ok(()) }.boxed()
    }
}

#[derive(Default)]
struct FakeStages {
    log: Arc<Log>,
    /// Errors the next replication runs fail with, in order.
    repl_errors: StdMutex<VecDeque<EngineError>>,
    /// Replication asks for a copy this many times first.
    needs_copy: AtomicUsize,
    /// A copy was asked for and has not run yet.
    pending: AtomicBool,
    /// Replications running now.
    replicating: AtomicUsize,
}

impl Stages for FakeStages {
    fn copy_pending(&self) -> BoxFuture<'_, Result<bool>> {
        async move { Ok(self.pending.load(Ordering::SeqCst)) }.boxed()
    }
    fn copy<'a>(
        &'a self,
        cp: &'a SharedCheckpoint,
        _tuning: &'a Tuning,
        _cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<CopyOutcome>> {
        async move {
            self.log.push("copy");
            self.pending.store(false, Ordering::SeqCst);
            cp.lock().await.clone_completed = true;
            Ok(CopyOutcome::Completed)
        }
        .boxed()
    }
    fn replicate<'a>(
        &'a self,
        _cp: &'a SharedCheckpoint,
        _tuning: &'a Tuning,
        cancel: &'a CancellationToken,
        cutoff: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<ReplOutcome>> {
        async move {
            self.log.push("replicate");
            if let Some(e) = self.repl_errors.lock().ok().and_then(|mut q| q.pop_front()) {
                return Err(e);
            }
            if self.needs_copy.load(Ordering::SeqCst) > 0 {
                self.needs_copy.fetch_sub(1, Ordering::SeqCst);
                self.pending.store(true, Ordering::SeqCst);
                return Ok(ReplOutcome::NeedsCopy);
            }
            if cutoff.is_some() {
                return Ok(ReplOutcome::ReachedCutoff);
            }
            self.replicating.fetch_add(1, Ordering::SeqCst);
            cancel.cancelled().await;
            // A drain that takes a while: a command must not be cut short by its caller.
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.replicating.fetch_sub(1, Ordering::SeqCst);
            self.log.push("drained");
            Ok(ReplOutcome::Stopped)
        }
        .boxed()
    }
    fn finalize<'a>(
        &'a self,
        cp: &'a SharedCheckpoint,
        _cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            self.log.push("finalize");
            cp.lock().await.state = State::Finalized;
            Ok(())
        }
        .boxed()
    }
}

fn ctx() -> Arc<Ctx> {
    use mongodb::options::{ClientOptions, ServerAddress};
    let opts = ClientOptions::builder()
        .hosts(vec![ServerAddress::Tcp {
            host: "127.0.0.1".into(),
            port: Some(9),
        }])
        .build();
    let client = mongodb::Client::with_options(opts).expect("client");
    Arc::new(Ctx {
        source: client.clone(),
        store: Store::new(&client, Identity::new(None, None)),
        target: client,
        metrics: Arc::new(Metrics::new()),
        live: Live::default(),
        sizes: Default::default(),
    })
}

struct Rig {
    engine: Engine,
    jobs: Arc<FakeJobs>,
    stages: Arc<FakeStages>,
    log: Arc<Log>,
}

async fn rig(loaded: Checkpoint) -> Rig {
    let log = Arc::new(Log::default());
    let jobs = Arc::new(FakeJobs {
        log: log.clone(),
        loaded: StdMutex::new(loaded),
        ..Default::default()
    });
    let stages = Arc::new(FakeStages {
        log: log.clone(),
        ..Default::default()
    });
    let engine = Engine::with_parts(ctx(), jobs.clone(), stages.clone());
    engine.bootstrap(false).await;
    Rig {
        engine,
        jobs,
        stages,
        log,
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

fn start_req() -> StartRequest {
    StartRequest {
        skip_preflight: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn start_pause_resume_finalize() {
    let r = rig(Checkpoint::default()).await;
    let (st, report) = r.engine.start(start_req()).await.expect("start");
    assert_eq!(st, State::Running);
    assert!(report.is_none());
    until("replicating", || {
        r.stages.replicating.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(r.log.count("copy"), 1);
    assert_eq!(r.engine.pause().await.expect("pause"), State::Paused);
    // Paused means stopped: nothing replicates, and it was drained first.
    assert_eq!(r.stages.replicating.load(Ordering::SeqCst), 0);
    assert_eq!(r.log.count("drained"), 1);
    assert_eq!(r.jobs.last_saved().map(|c| c.state), Some(State::Paused));
    // A repeated pause is refused with the reason, and changes nothing.
    match r.engine.pause().await {
        Err(super::CommandError::Conflict(m)) => assert!(m.contains("already paused"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        r.engine.resume(false).await.expect("resume"),
        State::Running
    );
    until("replicating again", || {
        r.stages.replicating.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(
        r.engine
            .finalize(FinalizeRequest::default())
            .await
            .expect("finalize"),
        State::Finalizing
    );
    until("finalized", || r.log.count("finalize") == 1).await;
    assert_eq!(r.engine.ctx().live.state(), State::Finalized);
}

#[tokio::test]
async fn a_command_whose_caller_hangs_up_still_completes() {
    let r = rig(Checkpoint::default()).await;
    r.engine.start(start_req()).await.expect("start");
    until("replicating", || {
        r.stages.replicating.load(Ordering::SeqCst) == 1
    })
    .await;
    // The caller gives up after 1 ms, in the middle of the drain.
    let cut = tokio::time::timeout(Duration::from_millis(1), r.engine.pause()).await;
    assert!(cut.is_err(), "the pause took longer than the caller waited");
    until("paused", || r.engine.ctx().live.state() == State::Paused).await;
    assert_eq!(r.log.count("drained"), 1);
    assert_eq!(r.stages.replicating.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_same_command_in_progress_is_joined() {
    let r = rig(Checkpoint::default()).await;
    r.engine.start(start_req()).await.expect("start");
    until("replicating", || {
        r.stages.replicating.load(Ordering::SeqCst) == 1
    })
    .await;
    let (a, b) = tokio::join!(r.engine.pause(), r.engine.pause());
    assert_eq!(a.expect("first"), State::Paused);
    assert_eq!(b.expect("joined"), State::Paused);
    assert_eq!(r.log.count("save paused"), 1, "{:?}", r.log.all());
}

#[tokio::test]
async fn transient_errors_retry_from_the_checkpoint_and_fatal_ones_fail() {
    let r = rig(Checkpoint::default()).await;
    r.stages.repl_errors.lock().expect("lock").extend([
        EngineError::Retry("target restarting".into()),
        EngineError::Unreachable {
            side: Side::Source,
            detail: "refused".into(),
        },
    ]);
    r.engine.start(start_req()).await.expect("start");
    until("replicating after two retries", || {
        r.stages.replicating.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(r.log.count("replicate"), 3);
    assert_eq!(r.engine.ctx().live.state(), State::Running);
    // A fatal error stops in failed, recorded with its message.
    r.engine.pause().await.expect("pause");
    r.stages
        .repl_errors
        .lock()
        .expect("lock")
        .push_back(EngineError::UnexpectedDdl("a time-series create".into()));
    r.engine.resume(false).await.expect("resume");
    until("failed", || r.engine.ctx().live.state() == State::Failed).await;
    let saved = r.jobs.last_saved().expect("saved");
    assert_eq!(saved.state, State::Failed);
    assert!(saved.error.unwrap_or_default().contains("time-series"));
}

#[tokio::test]
async fn a_copy_asked_by_replication_runs_before_replication_goes_on() {
    let r = rig(Checkpoint::default()).await;
    r.stages.needs_copy.store(1, Ordering::SeqCst);
    r.engine.start(start_req()).await.expect("start");
    until("replicating", || {
        r.stages.replicating.load(Ordering::SeqCst) == 1
    })
    .await;
    let order: Vec<String> = r
        .log
        .all()
        .into_iter()
        .filter(|s| s == "copy" || s == "replicate")
        .collect();
    assert_eq!(order, ["copy", "replicate", "copy", "replicate"]);
}

#[tokio::test]
async fn a_reset_records_itself_first_and_an_interrupted_one_is_finished() {
    // A start over a finalized job resets it: resetting saved, then drop, clear, fresh save.
    let done = Checkpoint {
        state: State::Finalized,
        clone_completed: true,
        ..Default::default()
    };
    let r = rig(done).await;
    r.jobs.fail_drop.store(true, Ordering::SeqCst);
    let req = StartRequest {
        reset: true,
        ..start_req()
    };
    // The drop fails midway (as a crash would leave it): the reset stays recorded.
    assert!(r.engine.start(req.clone()).await.is_err());
    let log = r.log.all();
    let i = log
        .iter()
        .position(|s| s == "save running resetting=true")
        .expect("resetting saved");
    assert!(log[i + 1..].iter().any(|s| s == "drop failed"), "{log:?}");
    assert!(!log.iter().any(|s| s == "replicate"), "{log:?}");
    let recorded = r.jobs.last_saved().expect("saved");
    assert!(recorded.resetting);

    // A worker restarted on that record finishes the reset before anything else runs.
    let r2 = rig(recorded).await;
    until("replicating", || {
        r2.stages.replicating.load(Ordering::SeqCst) == 1
    })
    .await;
    let log = r2.log.all();
    let pos = |s: &str| log.iter().position(|l| l == s).expect(s);
    assert!(pos("save running resetting=true") < pos("drop"));
    assert!(pos("drop") < pos("clear"));
    assert!(pos("clear") < pos("save running resetting=false"));
    assert!(pos("save running resetting=false") < pos("replicate"));
}

#[tokio::test]
async fn a_deposed_worker_stops_and_says_why() {
    let r = rig(Checkpoint::default()).await;
    r.engine.start(start_req()).await.expect("start");
    until("replicating", || {
        r.stages.replicating.load(Ordering::SeqCst) == 1
    })
    .await;
    let depose = r.jobs.deposer.lock().expect("lock").take().expect("keeper");
    depose(EngineError::Fenced {
        ours: 1,
        detail: "another worker".into(),
    });
    until("stopped", || {
        r.stages.replicating.load(Ordering::SeqCst) == 0
            && r.engine.ctx().live.state() == State::Failed
    })
    .await;
    let st = r.engine.ctx().live.status(|| None);
    assert_eq!(st.failure_reason.as_deref(), Some("Deposed"));
    // Nothing is recorded by a deposed worker, and it takes no command.
    assert_ne!(r.jobs.last_saved().map(|c| c.state), Some(State::Failed));
    assert!(r.engine.resume(true).await.is_err());
}

#[tokio::test]
async fn a_target_of_another_job_is_refused_for_good() {
    let log = Arc::new(Log::default());
    let jobs = Arc::new(FakeJobs {
        log: log.clone(),
        acquire_error: StdMutex::new(Some(EngineError::TargetInUse {
            owner_id: "u-1".into(),
            owner_name: "shop/first".into(),
            me: "shop/second".into(),
        })),
        ..Default::default()
    });
    let stages = Arc::new(FakeStages {
        log: log.clone(),
        ..Default::default()
    });
    let engine = Engine::with_parts(ctx(), jobs.clone(), stages);
    engine.bootstrap(false).await;
    let st = engine.ctx().live.status(|| None);
    assert_eq!(st.state, State::Failed);
    assert_eq!(st.failure_reason.as_deref(), Some("TargetInUse"));
    assert!(st.error.unwrap_or_default().contains("shop/first"));
    match engine.start(start_req()).await {
        Err(super::CommandError::Conflict(m)) => assert!(m.contains("shop/first"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(log.count("acquire"), 1, "never retried");
    assert!(
        jobs.saved.lock().expect("lock").is_empty(),
        "nothing written"
    );
}

#[tokio::test]
async fn shutdown_stops_the_pipeline_and_releases_the_job() {
    let r = rig(Checkpoint::default()).await;
    r.engine.start(start_req()).await.expect("start");
    until("replicating", || {
        r.stages.replicating.load(Ordering::SeqCst) == 1
    })
    .await;
    r.engine.shutdown().await;
    assert_eq!(r.stages.replicating.load(Ordering::SeqCst), 0);
    let log = r.log.all();
    assert_eq!(log.last().map(String::as_str), Some("release"), "{log:?}");
}

/// A reverse begins on an idle job: its checkpoint is saved as given (copy done), it
/// replicates without copying, takes the ordinary commands, and cannot begin twice.
#[tokio::test]
async fn a_reverse_begins_replicating_without_a_copy() {
    use super::reverse::checks::{Migration, Points};
    use crate::api::{Direction, ReverseRequest};
    let r = rig(Checkpoint::default()).await;
    let m = Migration {
        job_id: "u1".into(),
        job_name: "ns/m".into(),
        state: State::Finalized,
        ..Default::default()
    };
    let p = Points {
        cutoff: Timestamp {
            time: 10,
            increment: 1,
        },
        start: Timestamp {
            time: 20,
            increment: 1,
        },
    };
    let mut cp =
        super::reverse::checkpoint(&m, &StartRequest::default(), p, &ReverseRequest::default());
    // Preparing the old source needs a server; here it is done.
    if let Some(o) = cp.reverse_of.as_mut() {
        o.indexes_relaxed = true;
    }
    assert_eq!(
        r.engine.begin_reverse(cp).await.expect("begin"),
        State::Running
    );
    until("replicating", || {
        r.stages.replicating.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(r.log.count("copy"), 0);
    let saved = r.jobs.last_saved().expect("saved");
    assert_eq!(saved.direction, Direction::Reverse);
    assert_eq!(saved.state, State::Running);
    assert_eq!(r.engine.pause().await.expect("pause"), State::Paused);
    match r.engine.begin_reverse(Checkpoint::default()).await {
        Err(super::CommandError::Conflict(m)) => assert!(m.contains("paused"), "{m}"),
        other => panic!("{other:?}"),
    }
}
