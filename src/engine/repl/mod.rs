//! Replication: one reader on the source's cluster-wide change stream feeding the router
//! (see `router.rs`), N appliers writing fenced batches, DDL behind a barrier, and a resume
//! point that only moves past events every applier has written.

pub mod applier;
pub mod ddl;
pub mod router;
pub mod translate;
pub mod txn;
pub mod write;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document, RawDocumentBuf, Timestamp};
use mongodb::Client;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::conn;
use super::ctx::Ctx;
use super::error::{classify_mongo, mongo_code, EngineError, ErrorClass, Result, Side};
use super::filter::NamespaceFilter;
use super::optime;
use super::store::Checkpoint;
use super::tuning::Tuning;
use applier::Msg;
use router::{Routed, Router};

#[derive(Debug, PartialEq, Eq)]
pub enum ReplOutcome {
    /// Stopped on request (pause, finalize, shutdown) after draining.
    Stopped,
    /// Every event up to the cutoff is applied.
    ReachedCutoff,
    /// A DDL asked for collections to be copied anew; replication resumes after the copy.
    NeedsCopy,
}

/// How often the reader asks appliers to flush (and so how fresh the resume point is).
const MARKER_INTERVAL: Duration = Duration::from_millis(250);
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

pub async fn replicate(
    ctx: &Arc<Ctx>,
    cp: &Arc<Mutex<Checkpoint>>,
    tuning: &Tuning,
    cancel: &CancellationToken,
    cutoff: Option<Timestamp>,
) -> Result<ReplOutcome> {
    let (resume_ts, resume_token, filter, copy_finish) = {
        let c = cp.lock().await;
        let (ts, token) = match c.resume_ts {
            Some(ts) => (ts, c.resume_token.clone()),
            None => (
                c.start_ts.ok_or(EngineError::NoStartTime)?,
                c.start_token.clone(),
            ),
        };
        let f = NamespaceFilter::new(&c.options.include_namespaces, &c.options.exclude_namespaces)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        (ts, token, f, c.catch_up_ts.or(c.copy_finish_ts))
    };
    if let Some(cut) = cutoff {
        if resume_ts > cut {
            return Ok(ReplOutcome::ReachedCutoff);
        }
    }
    let resume_after = match &resume_token {
        Some(t) => Some(
            mongodb::bson::from_document::<mongodb::change_stream::event::ResumeToken>(t.clone())
                .map_err(|e| EngineError::BadEvent(format!("the saved resume token: {e}")))?,
        ),
        None => None,
    };
    if resume_after.is_none() {
        // Resuming from a time: the server may not check that its oplog still holds it.
        // (From a token, the server seeks the token and refuses lost history itself.)
        check_oplog_floor(&ctx.source, resume_ts).await?;
    }
    ctx.live.set_applied_at(resume_ts, resume_token);
    let capped: HashSet<String> = ctx
        .store
        .all_collections()
        .await?
        .into_iter()
        .filter(|c| c.capped)
        .map(|c| c.ns)
        .collect();

    let watch = ctx
        .source
        .watch()
        .show_expanded_events(true)
        .max_await_time(Duration::from_millis(300))
        .batch_size(5000);
    let by_token = resume_after.is_some();
    let watch = match resume_after {
        Some(t) => watch.resume_after(t),
        None => watch.start_at_operation_time(resume_ts),
    };
    let mut stream = watch
        .await
        .map_err(|e| stream_error(e, resume_ts))?
        .with_type::<RawDocumentBuf>();
    info!(from = %optime::ts_string(resume_ts), by_token, workers = tuning.repl_workers, "replicating");

    let workers = tuning.repl_workers.max(1);
    let progress = applier::Progress::new(workers);
    let limits = applier::Limits {
        ops: tuning.bulk_ops,
        // Each applier writes once it holds its share of the queue budget, so the router never
        // waits for budget that only a flush would return.
        kib: (router::QUEUE_BUDGET_KIB as usize / (2 * workers)).max(1024),
    };
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for id in 0..workers {
        let (tx, rx) = mpsc::channel::<Msg>(4096);
        senders.push(tx);
        handles.push(tokio::spawn(
            applier::run(ctx.clone(), id, rx, limits, progress.clone())
                .instrument(info_span!("applier", id)),
        ));
    }
    // What an earlier run applied past the checkpoint: not applied again.
    let replayed = txn::Replayed::new(&ctx.store.txn_markers_since(resume_ts).await?);
    let mut router = Router::new(
        ctx.clone(),
        senders,
        filter,
        capped,
        copy_finish,
        progress,
        replayed,
    );
    let mut last_marker = Instant::now();
    let mut last_save = Instant::now();
    let mut dispatched_ts = resume_ts;
    // The stream position after the last event read (or an empty batch); where a marker may
    // be placed is before the oldest transaction still being gathered (`open`).
    let mut now: txn::Position = (resume_ts, None);
    let mut marked: txn::Position = (resume_ts, None);
    let mut open = txn::Open::default();
    // Since when the stream returned nothing while transactions were open, and the op time
    // of the last event read.
    let mut quiet_since: Option<Instant> = None;
    let mut last_read = resume_ts;
    let mut outcome = ReplOutcome::Stopped;
    let result: Result<()> = async {
        loop {
            if cancel.is_cancelled() {
                break;
            }
            // The source's time before asking: an empty answer means caught up to it.
            let asked_at = ctx.live.source_now();
            let next = stream
                .next_if_any()
                .await
                .map_err(|e| stream_error(e, resume_ts))?;
            if next.is_some() {
                quiet_since = None;
            }
            let mut idle = false;
            let mut token_ts = None;
            let mut routed;
            match next {
                Some(raw) => {
                    let size = raw.as_bytes().len();
                    let ev: Document = raw
                        .to_document()
                        .map_err(|e| EngineError::BadEvent(e.to_string()))?;
                    let ts = ev.get_timestamp("clusterTime").unwrap_or(dispatched_ts);
                    last_read = last_read.max(ts);
                    let tid = txn::txn_id(&ev);
                    let in_open = tid.as_ref().is_some_and(|id| open.contains(id));
                    if cutoff.is_some_and(|c| ts > c) && !in_open {
                        // Past the cutoff: the transactions the cutoff fell into are finished.
                        routed = close(&mut router, open.take_all()).await?;
                        outcome = ReplOutcome::ReachedCutoff;
                        if routed == Routed::NeedsCopy {
                            outcome = ReplOutcome::NeedsCopy;
                        }
                        break;
                    }
                    ctx.metrics.events_read.inc();
                    ctx.live.events_read.fetch_add(1, Ordering::Relaxed);
                    // The transactions this event proves complete go first.
                    let barrier = tid.is_none() && translate::is_ddl(&ev);
                    if let Some(id) = &tid {
                        open.observe(id, ts);
                    }
                    let done =
                        open.completed_by(tid.as_ref(), translate::event_key(&ev), ts, barrier);
                    routed = close(&mut router, done).await?;
                    if routed == Routed::Done {
                        // Read past this event (applied, or gathered with its transaction).
                        let before = now.clone();
                        let token = ev.get_document("_id").ok().cloned();
                        dispatched_ts = dispatched_ts.max(ts);
                        now = (dispatched_ts, token);
                        routed = match tid {
                            Some(id) => {
                                let g = open.get_or_open(id, before.clone());
                                if g.split {
                                    // Too large for one target transaction: as it comes.
                                    router.dispatch(&ev, size).await?
                                } else if g.push(ev, size, ts) {
                                    g.split = true;
                                    split_txn(ctx, cp, g).await;
                                    let events = std::mem::take(&mut g.events);
                                    let mut r = Routed::Done;
                                    for (ev, size) in &events {
                                        if router.dispatch(ev, *size).await? == Routed::NeedsCopy {
                                            r = Routed::NeedsCopy;
                                        }
                                    }
                                    r
                                } else {
                                    Routed::Done
                                }
                            }
                            None => router.dispatch(&ev, size).await?,
                        };
                    }
                }
                None => {
                    idle = true;
                    // Nothing more to return, twice in a row: every open transaction is
                    // complete (on SecantusDB's Rust server, a transaction still open on the
                    // source can hold back the later events of one that committed; a second
                    // empty answer gives it time to finish, see docs/known-differences.md).
                    let waited = *quiet_since.get_or_insert_with(Instant::now);
                    let all = if open.is_empty() {
                        Vec::new()
                    } else if open.shared_time() || source_quiet(ctx, last_read).await {
                        debug!(
                            open = open.len(),
                            "transactions complete: the stream has nothing more"
                        );
                        open.take_all()
                    } else if waited.elapsed() >= OPEN_TXN_WAIT {
                        unproven(ctx, cp, open.len()).await;
                        open.take_all()
                    } else {
                        Vec::new()
                    };
                    routed = close(&mut router, all).await?;
                    if routed == Routed::Done {
                        // An empty batch: everything before the post-batch resume token was
                        // seen.
                        let tok = stream
                            .resume_token()
                            .and_then(|t| mongodb::bson::to_bson(&t).ok())
                            .and_then(|b| optime::token_timestamp(&b));
                        if let Some(t) = tok {
                            // The token's time may hold events not yet returned; stay just
                            // below it.
                            let below = Timestamp {
                                time: t.time,
                                increment: t.increment.saturating_sub(1),
                            };
                            dispatched_ts = dispatched_ts.max(below);
                            token_ts = Some(t);
                        }
                        let token = stream.resume_token().as_ref().and_then(token_doc);
                        if token.is_some() {
                            now = (dispatched_ts, token);
                        }
                    }
                }
            }
            if routed == Routed::NeedsCopy {
                // Everything up to the DDL is applied (its barrier drained the appliers); the
                // copy runs, then replication resumes from here.
                outcome = ReplOutcome::NeedsCopy;
                break;
            }
            let position = open.resume_point(&now);
            if (idle || last_marker.elapsed() >= MARKER_INTERVAL) && position != marked {
                router.mark(position.0, position.1.clone()).await?;
                marked = position;
                last_marker = Instant::now();
            }
            router.settle(false).await?;
            if idle && open.is_empty() && !router.has_markers() {
                // Where the server says how far the empty batch reaches (mongod's post-batch
                // token), trust that over the time asked at: oplog holes stay covered.
                let seen = match (asked_at, token_ts) {
                    (Some(a), Some(t)) => Some(a.min(t)),
                    (a, None) => a,
                    (None, t) => t,
                };
                if let Some(t) = seen {
                    ctx.live.set_caught_up(t);
                }
                if let Some(c) = cutoff {
                    // Every event up to the cutoff was returned: the post-batch token says
                    // so where it carries a time; otherwise an empty batch asked for after
                    // the cutoff was taken (this run starts after it) does.
                    if token_ts.is_none_or(|t| t >= c)
                        || ctx.live.effective_applied().is_some_and(|a| a >= c)
                    {
                        outcome = ReplOutcome::ReachedCutoff;
                        break;
                    }
                }
            }
            if last_save.elapsed() >= CHECKPOINT_INTERVAL {
                save_progress(ctx, cp).await?;
                last_save = Instant::now();
            }
        }
        // Drain: flush everything dispatched and wait for it. A transaction still being
        // gathered is not applied: it is read again on resume.
        let position = open.resume_point(&now);
        if position != marked {
            router.mark(position.0, position.1.clone()).await?;
        }
        router.settle(true).await
    }
    .await;
    router.close();
    for h in handles {
        if let Err(e) = h.await {
            warn!(error = %e, "an applier task ended abnormally");
        }
    }
    result?;
    save_progress(ctx, cp).await?;
    Ok(outcome)
}

/// How long transactions may stay open while the change stream returns nothing although the
/// source wrote past the last event read (see `source_quiet`).
const OPEN_TXN_WAIT: Duration = Duration::from_secs(5);

/// Whether the source wrote nothing after `last_read` (its cluster time, asked now, is not
/// past it): then the transactions gathered are complete. On SecantusDB's Rust server a
/// transaction still open holds back the events of those that committed after its first
/// write, and the change stream returns nothing meanwhile: the source's clock tells the two
/// apart (a transaction it aborted also moves the clock: see `OPEN_TXN_WAIT`).
async fn source_quiet(ctx: &Ctx, last_read: Timestamp) -> bool {
    match conn::cluster_time(&ctx.source, Side::Source).await {
        Ok(now) => now <= last_read,
        Err(e) => {
            debug!(error = %e, "cannot read the source's time");
            false
        }
    }
}

/// Transactions taken as complete without proof after `OPEN_TXN_WAIT` (the source's clock
/// moved past the last event read: an aborted transaction, or one still open that holds back
/// the rest of theirs): counted, logged and reported in the status.
async fn unproven(ctx: &Ctx, cp: &Arc<Mutex<Checkpoint>>, n: usize) {
    ctx.metrics.txns_unproven.inc_by(n as u64);
    let total = ctx.metrics.txns_unproven.get();
    warn!(
        open = n,
        "the source's clock is past the last event read, but the change stream returned nothing more for {} s: taking the transactions gathered as complete (if one is not, a reader of the target may see part of it)",
        OPEN_TXN_WAIT.as_secs()
    );
    let prefix = "source transactions taken as complete without proof";
    let line = format!(
        "{prefix} (the change stream idle for {} s while the source's clock moved on; SecantusDB's Rust server): {total}",
        OPEN_TXN_WAIT.as_secs()
    );
    let mut c = cp.lock().await;
    c.warnings.retain(|w| !w.starts_with(prefix));
    c.warnings.push(line);
}

/// Dispatch complete transactions (oldest first).
async fn close(router: &mut Router, groups: Vec<txn::Group>) -> Result<Routed> {
    let mut r = Routed::Done;
    for g in groups {
        if !g.split && router.dispatch_txn(&g.id, g.ts, &g.events).await? == Routed::NeedsCopy {
            r = Routed::NeedsCopy;
        }
    }
    Ok(r)
}

/// A transaction too large for one target transaction: applied operation by operation,
/// counted, logged and reported in the status.
async fn split_txn(ctx: &Ctx, cp: &Arc<Mutex<Checkpoint>>, g: &txn::Group) {
    ctx.metrics.txns_split.inc();
    let n = ctx.metrics.txns_split.get();
    warn!(
        operations_so_far = g.events.len(),
        bytes_so_far = g.bytes,
        at = %optime::ts_string(g.ts),
        "a source transaction exceeds one target transaction ({} operations or {} MiB): applying it operation by operation, not atomically",
        txn::MAX_TXN_OPS,
        txn::MAX_TXN_BYTES >> 20
    );
    let prefix = "source transactions applied operation by operation";
    let line = format!(
        "{prefix} (larger than {} operations or {} MiB; a reader of the target may see part of them): {n}, the latest at {}",
        txn::MAX_TXN_OPS,
        txn::MAX_TXN_BYTES >> 20,
        optime::ts_string(g.ts)
    );
    let mut c = cp.lock().await;
    c.warnings.retain(|w| !w.starts_with(prefix));
    c.warnings.push(line);
}

async fn save_progress(ctx: &Ctx, cp: &Arc<Mutex<Checkpoint>>) -> Result<()> {
    let mut c = cp.lock().await;
    let (applied, token) = ctx.live.applied_position();
    if c.resume_ts.is_none_or(|r| applied > r) {
        c.resume_ts = Some(applied);
        c.resume_token = token;
    } else if c.resume_ts == Some(applied) && token.is_some() {
        // A later position at the same op time (events of one transaction share it).
        c.resume_token = token;
    }
    c.events_applied = ctx.live.events_applied.load(Ordering::Relaxed) as i64;
    c.events_read = ctx.live.events_read.load(Ordering::Relaxed) as i64;
    ctx.store.save(&mut c).await?;
    // Transactions before the checkpoint are never replayed: their records can go (when any
    // were written since the last time).
    let txns = ctx.metrics.txns_applied.get();
    if let Some(ts) = c.resume_ts {
        if txns != ctx.live.txns_forgotten.swap(txns, Ordering::Relaxed) {
            ctx.store.forget_txn_markers(ts).await?;
        }
    }
    Ok(())
}

/// Refuse to start from a time the source's oplog no longer holds. mongod refuses such a
/// `startAtOperationTime` itself; some servers do not, so the engine checks on every server.
pub async fn check_oplog_floor(source: &Client, from: Timestamp) -> Result<()> {
    let oldest = source
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .hint(mongodb::options::Hint::Keys(doc! {"$natural": 1}))
        .projection(doc! {"ts": 1})
        .await;
    match oldest {
        Ok(Some(d)) => {
            if let Ok(ts) = d.get_timestamp("ts") {
                if ts > from {
                    return Err(EngineError::HistoryLost {
                        resume_point: format!(
                            "{} ({})",
                            optime::ts_string(from),
                            optime::ts_iso(from)
                        ),
                        oldest: format!("{} ({})", optime::ts_string(ts), optime::ts_iso(ts)),
                    });
                }
            }
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            if classify_mongo(&e) == ErrorClass::Transient {
                return Err(EngineError::mongo(Side::Source, "reading the oplog", e));
            }
            warn!(error = %e, "cannot read the source oplog's oldest entry; relying on the server to refuse lost history");
            Ok(())
        }
    }
}

/// A resume token as the document saved in the checkpoint.
fn token_doc(t: &mongodb::change_stream::event::ResumeToken) -> Option<Document> {
    match mongodb::bson::to_bson(t).ok()? {
        mongodb::bson::Bson::Document(d) => Some(d),
        _ => None,
    }
}

fn stream_error(e: mongodb::error::Error, from: Timestamp) -> EngineError {
    match mongo_code(&e) {
        Some(286) | Some(136) => EngineError::HistoryLost {
            resume_point: format!("{} ({})", optime::ts_string(from), optime::ts_iso(from)),
            oldest: "unknown".into(),
        },
        _ => EngineError::mongo(Side::Source, "reading the change stream", e),
    }
}
