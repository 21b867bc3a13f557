//! Replication: one reader on the source's cluster-wide change stream feeding the router
//! (see `router.rs`), N appliers writing fenced batches, DDL behind a barrier, and a resume
//! point that only moves past events every applier has written.

pub mod applier;
pub mod ddl;
pub mod router;
pub mod translate;
pub mod write;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document, RawDocumentBuf, Timestamp};
use mongodb::Client;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

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

    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for id in 0..tuning.repl_workers {
        let (tx, rx) = mpsc::channel::<Msg>(4096);
        senders.push(tx);
        let ctx = ctx.clone();
        let bulk = tuning.bulk_ops;
        handles.push(tokio::spawn(
            applier::run(ctx, id, rx, bulk).instrument(info_span!("applier", id)),
        ));
    }
    let mut router = Router::new(ctx.clone(), senders, filter, capped, copy_finish);
    let mut last_marker = Instant::now();
    let mut last_save = Instant::now();
    let mut dispatched_ts = resume_ts;
    let mut marked_ts = resume_ts;
    let mut marked_token: Option<Document> = None;
    let mut past_cutoff = false;
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
            let mut idle = false;
            let mut token_ts = None;
            match next {
                Some(raw) => {
                    let size = raw.as_bytes().len();
                    let ev: Document = raw
                        .to_document()
                        .map_err(|e| EngineError::BadEvent(e.to_string()))?;
                    let ts = ev.get_timestamp("clusterTime").unwrap_or(dispatched_ts);
                    if cutoff.is_some_and(|c| ts > c) {
                        outcome = ReplOutcome::ReachedCutoff;
                        // The stream's position is this event's, which is not applied.
                        past_cutoff = true;
                        break;
                    }
                    ctx.metrics.events_read.inc();
                    ctx.live.events_read.fetch_add(1, Ordering::Relaxed);
                    let routed = router.dispatch(&ev, size).await?;
                    dispatched_ts = dispatched_ts.max(ts);
                    if routed == Routed::NeedsCopy {
                        // Everything up to the DDL is applied (its barrier drained the
                        // appliers); the copy runs, then replication resumes from here.
                        outcome = ReplOutcome::NeedsCopy;
                        marked_ts = dispatched_ts;
                        break;
                    }
                }
                None => {
                    idle = true;
                    // An empty batch: everything before the post-batch resume token was seen.
                    let tok = stream
                        .resume_token()
                        .and_then(|t| mongodb::bson::to_bson(&t).ok())
                        .and_then(|b| optime::token_timestamp(&b));
                    if let Some(t) = tok {
                        // The token's time may hold events not yet returned; stay just below it.
                        let below = Timestamp {
                            time: t.time,
                            increment: t.increment.saturating_sub(1),
                        };
                        dispatched_ts = dispatched_ts.max(below);
                        token_ts = Some(t);
                    }
                }
            }
            if idle || last_marker.elapsed() >= MARKER_INTERVAL {
                let token = stream.resume_token().as_ref().and_then(token_doc);
                if dispatched_ts > marked_ts || (token.is_some() && token != marked_token) {
                    router.mark(dispatched_ts, token.clone()).await?;
                    marked_ts = dispatched_ts;
                    marked_token = token;
                }
                last_marker = Instant::now();
            }
            router.settle(false).await?;
            if idle && !router.has_markers() {
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
        // Drain: flush everything dispatched and wait for it.
        let token = if past_cutoff {
            None
        } else {
            stream.resume_token().as_ref().and_then(token_doc)
        };
        if dispatched_ts > marked_ts || (token.is_some() && token != marked_token) {
            router.mark(dispatched_ts, token).await?;
        }
        router.settle(true).await
    }
    .await;
    router.close();
    for h in handles {
        let _ = h.await;
    }
    result?;
    save_progress(ctx, cp).await?;
    Ok(outcome)
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
