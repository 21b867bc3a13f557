//! Replication: one reader on the source's cluster-wide change stream, N appliers keyed by
//! hash(namespace, `_id`) so each document's events stay in order, bulk writes, DDL behind a
//! barrier, and a resume point that only moves past events every applier has written.
//!
//! Commit tracking: the reader regularly sends a flush marker down every applier's queue.
//! When all appliers have acknowledged a marker, every event dispatched before it is
//! durably applied, and the marker's op time becomes the resume point.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, rawdoc, Bson, Document, RawArrayBuf, RawDocumentBuf, Timestamp};
use mongodb::Client;
use tokio::sync::{mpsc, oneshot, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::checkpoint::Checkpoint;
use super::ddl::{self, DdlDecision, DdlOp};
use super::error::{
    classify_mongo, mongo_code, EngineError, ErrorClass, MongoContext, Result, Side,
};
use super::filter::NamespaceFilter;
use super::optime;
use super::translate::{self, Translated, WriteOp};
use super::tuning::Tuning;
use super::Ctx;

#[derive(Debug, PartialEq, Eq)]
pub enum ReplOutcome {
    /// Stopped on request (pause, finalize, shutdown) after draining.
    Stopped,
    /// Every event up to the cutoff is applied.
    ReachedCutoff,
}

/// How often the reader asks appliers to flush (and so how fresh the resume point is).
const MARKER_INTERVAL: Duration = Duration::from_millis(250);
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);
/// Bytes of events queued for appliers.
const QUEUE_BUDGET_KIB: u32 = 64 * 1024;
/// A statement larger than this is written on its own with the driver's helpers.
const BIG_STATEMENT: usize = 4 * 1024 * 1024;
const COMMAND_BYTES: usize = 8 * 1024 * 1024;

enum Msg {
    Op {
        db: String,
        coll: String,
        op: Box<WriteOp>,
        _permit: OwnedSemaphorePermit,
    },
    Flush(oneshot::Sender<Result<u64>>),
}

struct Marker {
    ts: Timestamp,
    /// One acknowledgement per applier; `None` once received.
    acks: Vec<Option<oneshot::Receiver<Result<u64>>>>,
}

pub async fn replicate(
    ctx: &Arc<Ctx>,
    cp: &Arc<Mutex<Checkpoint>>,
    tuning: &Tuning,
    cancel: &CancellationToken,
    cutoff: Option<Timestamp>,
) -> Result<ReplOutcome> {
    let (resume_ts, filter, copy_finish) = {
        let c = cp.lock().await;
        let ts = c
            .resume_ts
            .or(c.start_ts)
            .ok_or_else(|| EngineError::Other("no start time recorded; start with reset".into()))?;
        let f = NamespaceFilter::new(&c.options.include_namespaces, &c.options.exclude_namespaces)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        (ts, f, c.copy_finish_ts)
    };
    if let Some(cut) = cutoff {
        if resume_ts > cut {
            return Ok(ReplOutcome::ReachedCutoff);
        }
    }
    check_oplog_floor(&ctx.source, resume_ts).await?;
    ctx.live.set_applied(resume_ts);
    let mut capped: HashSet<String> = ctx
        .store
        .all_collections()
        .await?
        .into_iter()
        .filter(|c| c.capped)
        .map(|c| c.ns)
        .collect();

    let mut stream = ctx
        .source
        .watch()
        .show_expanded_events(true)
        .start_at_operation_time(resume_ts)
        .max_await_time(Duration::from_millis(300))
        .batch_size(5000)
        .await
        .map_err(|e| stream_error(e, resume_ts))?
        .with_type::<RawDocumentBuf>();
    info!(from = %optime::ts_string(resume_ts), workers = tuning.repl_workers, "replicating");

    let budget = Arc::new(Semaphore::new(QUEUE_BUDGET_KIB as usize));
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for id in 0..tuning.repl_workers {
        let (tx, rx) = mpsc::channel::<Msg>(4096);
        senders.push(tx);
        let ctx = ctx.clone();
        let bulk = tuning.bulk_ops;
        handles.push(tokio::spawn(
            async move { applier(ctx, id, rx, bulk).await },
        ));
    }

    let mut markers: VecDeque<Marker> = VecDeque::new();
    let mut last_marker = Instant::now();
    let mut last_save = Instant::now();
    let mut dispatched_ts = resume_ts;
    let mut marked_ts = resume_ts;
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
                    let ev: Document = raw.to_document().map_err(|e| {
                        EngineError::Other(format!("undecodable change event: {e}"))
                    })?;
                    let ts = ev.get_timestamp("clusterTime").unwrap_or(dispatched_ts);
                    if cutoff.is_some_and(|c| ts > c) {
                        outcome = ReplOutcome::ReachedCutoff;
                        break;
                    }
                    ctx.metrics.events_read.inc();
                    ctx.live.events_read.fetch_add(1, Ordering::Relaxed);
                    dispatch(
                        ctx,
                        &ev,
                        size,
                        &filter,
                        &mut capped,
                        &senders,
                        &budget,
                        &mut markers,
                        copy_finish,
                    )
                    .await?;
                    dispatched_ts = dispatched_ts.max(ts);
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
                if dispatched_ts > marked_ts {
                    markers.push_back(send_marker(&senders, dispatched_ts).await?);
                    marked_ts = dispatched_ts;
                }
                last_marker = Instant::now();
            }
            settle(ctx, &mut markers, false).await?;
            if idle && markers.is_empty() {
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
        if dispatched_ts > marked_ts {
            markers.push_back(send_marker(&senders, dispatched_ts).await?);
        }
        settle(ctx, &mut markers, true).await
    }
    .await;
    drop(senders);
    for h in handles {
        let _ = h.await;
    }
    result?;
    save_progress(ctx, cp).await?;
    Ok(outcome)
}

/// Route one event: CRUD to its applier, DDL behind a barrier.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    ctx: &Arc<Ctx>,
    ev: &Document,
    size: usize,
    filter: &NamespaceFilter,
    capped: &mut HashSet<String>,
    senders: &[mpsc::Sender<Msg>],
    budget: &Arc<Semaphore>,
    markers: &mut VecDeque<Marker>,
    catch_up_until: Option<Timestamp>,
) -> Result<()> {
    match translate::translate(ev) {
        Translated::Crud { db, coll, op } => {
            if !filter.selected(&db, &coll) {
                return Ok(());
            }
            let ns = format!("{db}.{coll}");
            let key = if capped.contains(&ns) {
                Document::new()
            } else {
                op.filter().clone()
            };
            let w = translate::route(&db, &coll, &key, senders.len());
            let kib = ((size / 1024).max(1) as u32).min(QUEUE_BUDGET_KIB);
            let permit = budget
                .clone()
                .acquire_many_owned(kib)
                .await
                .map_err(|_| EngineError::Other("applier budget closed".into()))?;
            ctx.metrics
                .applier_queue_depth
                .with_label_values(&[&w.to_string()])
                .set((senders[w].max_capacity() - senders[w].capacity()) as i64);
            senders[w]
                .send(Msg::Op {
                    db,
                    coll,
                    op: Box::new(op),
                    _permit: permit,
                })
                .await
                .map_err(|_| EngineError::Other("an applier stopped".into()))?;
        }
        Translated::Ddl => match ddl::decide(ev, filter) {
            DdlDecision::Skip => {}
            DdlDecision::Fail(m) => return Err(EngineError::UnexpectedDdl(m)),
            DdlDecision::Apply(op) => {
                let ts = ev.get_timestamp("clusterTime").unwrap_or(Timestamp {
                    time: 0,
                    increment: 0,
                });
                let ops = ddl::during_catch_up(op, ts, catch_up_until);
                // Barrier: everything before the DDL is written first.
                let before = Timestamp {
                    time: ts.time,
                    increment: ts.increment.saturating_sub(1),
                };
                markers.push_back(send_marker(senders, before).await?);
                settle(ctx, markers, true).await?;
                for op in &ops {
                    ddl::apply(&ctx.source, &ctx.target, &ctx.store, filter, op).await?;
                    track_capped(capped, op);
                    ctx.metrics
                        .ddl_applied
                        .with_label_values(&[op.name()])
                        .inc();
                }
                ctx.live.set_applied(ts);
                ctx.metrics.events_applied.inc();
                ctx.live.events_applied.fetch_add(1, Ordering::Relaxed);
            }
        },
        Translated::Skip(why) => debug!(why, "event skipped"),
        Translated::Unsupported(m) => return Err(EngineError::UnexpectedDdl(m)),
    }
    Ok(())
}

/// Keep the set of capped namespaces (routed to one applier) in step with DDL.
fn track_capped(capped: &mut HashSet<String>, op: &DdlOp) {
    match op {
        DdlOp::Create {
            db,
            coll,
            capped: true,
            ..
        } => {
            capped.insert(format!("{db}.{coll}"));
        }
        DdlOp::Drop { db, coll } => {
            capped.remove(&format!("{db}.{coll}"));
        }
        DdlOp::Rename {
            db,
            coll,
            to_db,
            to_coll,
        } if capped.remove(&format!("{db}.{coll}")) => {
            capped.insert(format!("{to_db}.{to_coll}"));
        }
        _ => {}
    }
}

async fn send_marker(senders: &[mpsc::Sender<Msg>], ts: Timestamp) -> Result<Marker> {
    let mut acks = Vec::with_capacity(senders.len());
    for s in senders {
        let (tx, rx) = oneshot::channel();
        s.send(Msg::Flush(tx))
            .await
            .map_err(|_| EngineError::Other("an applier stopped".into()))?;
        acks.push(Some(rx));
    }
    Ok(Marker { ts, acks })
}

/// Advance the applied op time past every fully acknowledged marker; with `wait`, wait for all.
async fn settle(ctx: &Ctx, markers: &mut VecDeque<Marker>, wait: bool) -> Result<()> {
    while let Some(front) = markers.front_mut() {
        let mut all = true;
        for slot in front.acks.iter_mut() {
            let Some(rx) = slot.as_mut() else { continue };
            let r = if wait {
                rx.await
                    .map_err(|_| EngineError::Other("an applier stopped".into()))?
            } else {
                match rx.try_recv() {
                    Ok(r) => r,
                    Err(oneshot::error::TryRecvError::Empty) => {
                        all = false;
                        break;
                    }
                    Err(oneshot::error::TryRecvError::Closed) => {
                        return Err(EngineError::Other("an applier stopped".into()))
                    }
                }
            };
            *slot = None;
            note_ack(ctx, r)?;
        }
        if !all {
            break;
        }
        if let Some(m) = markers.pop_front() {
            ctx.live.set_applied(m.ts);
        }
    }
    Ok(())
}

fn note_ack(ctx: &Ctx, r: Result<u64>) -> Result<()> {
    let n = r?;
    ctx.metrics.events_applied.inc_by(n);
    ctx.live.events_applied.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

async fn save_progress(ctx: &Ctx, cp: &Arc<Mutex<Checkpoint>>) -> Result<()> {
    let mut c = cp.lock().await;
    let applied = ctx.live.applied();
    if c.resume_ts.is_none_or(|r| applied > r) {
        c.resume_ts = Some(applied);
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

fn stream_error(e: mongodb::error::Error, from: Timestamp) -> EngineError {
    match mongo_code(&e) {
        Some(286) | Some(136) => EngineError::HistoryLost {
            resume_point: format!("{} ({})", optime::ts_string(from), optime::ts_iso(from)),
            oldest: "unknown".into(),
        },
        _ => EngineError::mongo(Side::Source, "reading the change stream", e),
    }
}

/// One applier: buffers operations and writes them in bulk on a flush marker or when full.
async fn applier(ctx: Arc<Ctx>, id: usize, mut rx: mpsc::Receiver<Msg>, bulk_ops: usize) {
    let mut buf: Vec<(String, String, WriteOp)> = Vec::new();
    let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
    // The first failure, kept with its class: a transient one (a target restarting) makes
    // the pipeline retry from the checkpoint, not fail.
    let mut failed: Option<EngineError> = None;
    let mut applied_since_ack: u64 = 0;
    let label = id.to_string();
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Op {
                db,
                coll,
                op,
                _permit,
            } => {
                if failed.is_some() {
                    continue;
                }
                buf.push((db, coll, *op));
                permits.push(_permit);
                if buf.len() >= bulk_ops {
                    match flush(&ctx, &mut buf).await {
                        Ok(n) => applied_since_ack += n,
                        Err(e) => failed = Some(e),
                    }
                    permits.clear();
                }
            }
            Msg::Flush(ack) => {
                let r = if let Some(f) = &failed {
                    Err(f.as_text())
                } else {
                    match flush(&ctx, &mut buf).await {
                        Ok(n) => {
                            let total = applied_since_ack + n;
                            applied_since_ack = 0;
                            Ok(total)
                        }
                        Err(e) => {
                            let r = Err(e.as_text());
                            failed = Some(e);
                            r
                        }
                    }
                };
                permits.clear();
                ctx.metrics
                    .applier_queue_depth
                    .with_label_values(&[&label])
                    .set(rx.len() as i64);
                let _ = ack.send(r);
            }
        }
    }
}

/// Write a buffer of operations. Operations on distinct documents are independent; an
/// operation on a document already written in this buffer waits for the next round.
async fn flush(ctx: &Ctx, buf: &mut Vec<(String, String, WriteOp)>) -> Result<u64> {
    if buf.is_empty() {
        return Ok(0);
    }
    let started = Instant::now();
    let ops = std::mem::take(buf);
    let n = ops.len() as u64;
    for round in rounds(ops) {
        let mut by_ns: HashMap<(String, String), Vec<WriteOp>> = HashMap::new();
        for (db, coll, op) in round {
            by_ns.entry((db, coll)).or_default().push(op);
        }
        for ((db, coll), ops) in by_ns {
            write_ns(ctx, &db, &coll, ops).await?;
        }
    }
    ctx.metrics
        .flush_duration
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics.flush_ops.observe(n as f64);
    Ok(n)
}

/// Split operations into rounds in which every document appears at most once, keeping each
/// document's order. Pure.
pub fn rounds(ops: Vec<(String, String, WriteOp)>) -> Vec<Vec<(String, String, WriteOp)>> {
    let mut seen: HashMap<(String, String, Vec<u8>), usize> = HashMap::new();
    let mut out: Vec<Vec<(String, String, WriteOp)>> = Vec::new();
    for (db, coll, op) in ops {
        let key = mongodb::bson::to_vec(op.filter()).unwrap_or_default();
        let r = seen.entry((db.clone(), coll.clone(), key)).or_insert(0);
        if out.len() <= *r {
            out.push(Vec::new());
        }
        out[*r].push((db, coll, op));
        *r += 1;
    }
    out
}

/// Write operations on distinct documents of one collection: one `update` command for the
/// replaces and updates, one `delete` command for the deletes, re-reads for the rest.
///
/// Each statement is built by moving the operation's documents into it and serialized once
/// (which also gives its size); the command is assembled from those bytes. Only the filter is
/// kept beside it, to re-read the document if the target refuses the statement.
async fn write_ns(ctx: &Ctx, db: &str, coll: &str, ops: Vec<WriteOp>) -> Result<()> {
    let mut deletes: Vec<Document> = Vec::new();
    let mut refetch: Vec<Document> = Vec::new();
    let mut batch: Vec<(RawDocumentBuf, Document)> = Vec::new();
    let mut batch_bytes = 0usize;
    for op in ops {
        let (filter, mut stmt) = match op {
            WriteOp::Upsert { ref doc, .. } if has_dollar_fields(doc) => {
                // A replacement may not hold `$`-prefixed field names: written alone.
                write_alone(ctx, db, coll, &op).await?;
                continue;
            }
            WriteOp::Upsert { filter, doc } => {
                let stmt = doc! {"q": filter.clone(), "u": doc, "upsert": true};
                (filter, stmt)
            }
            WriteOp::Update {
                filter,
                mut updates,
            } if updates.len() == 1 => {
                let u = updates.pop().unwrap_or_default();
                let stmt = doc! {"q": filter.clone(), "u": u};
                (filter, stmt)
            }
            WriteOp::Update { .. } => {
                // Several steps (truncation, then sets): apply them in order, alone.
                write_alone(ctx, db, coll, &op).await?;
                continue;
            }
            WriteOp::Delete { filter } => {
                deletes.push(doc! {"q": filter, "limit": 1});
                continue;
            }
            WriteOp::Refetch { filter } => {
                refetch.push(filter);
                continue;
            }
        };
        let raw = RawDocumentBuf::from_document(&stmt)
            .ok()
            .filter(|r| r.as_bytes().len() < BIG_STATEMENT);
        let Some(raw) = raw else {
            // Too big to share a command (or not encodable as one): the driver's helpers.
            let upsert = stmt.get_bool("upsert").unwrap_or(false);
            let u = match stmt.remove("u") {
                Some(Bson::Document(d)) => d,
                _ => Document::new(),
            };
            let op = if upsert {
                WriteOp::Upsert { filter, doc: u }
            } else {
                WriteOp::Update {
                    filter,
                    updates: vec![u],
                }
            };
            write_alone(ctx, db, coll, &op).await?;
            continue;
        };
        let len = raw.as_bytes().len();
        if batch_bytes + len > COMMAND_BYTES {
            refetch.extend(run_updates(ctx, db, coll, std::mem::take(&mut batch)).await?);
            batch_bytes = 0;
        }
        batch_bytes += len;
        batch.push((raw, filter));
    }
    refetch.extend(run_updates(ctx, db, coll, batch).await?);
    if !deletes.is_empty() {
        for chunk in deletes.chunks(10_000) {
            let cmd = doc! {"delete": coll, "deletes": chunk.to_vec(), "ordered": false};
            let cmd = RawDocumentBuf::from_document(&cmd).map_err(|e| {
                EngineError::Other(format!("encoding deletes for {db}.{coll}: {e}"))
            })?;
            let reply = retrying(ctx, &ctx.target.database(db), &cmd, "deleting").await?;
            if let Ok(wce) = reply.get_document("writeConcernError") {
                return Err(wce_error(wce, &format!("{db}.{coll}")));
            }
            if let Some(e) = first_write_error(&reply) {
                return Err(EngineError::Other(format!(
                    "deleting in {db}.{coll} failed: {e}"
                )));
            }
        }
    }
    for filter in refetch {
        refetch_one(ctx, db, coll, filter).await?;
    }
    Ok(())
}

/// The `update` command for serialized statements.
fn update_command(coll: &str, stmts: Vec<RawDocumentBuf>) -> RawDocumentBuf {
    let mut updates = RawArrayBuf::new();
    for s in stmts {
        updates.push(s);
    }
    rawdoc! {"update": coll, "updates": updates, "ordered": false, "bypassDocumentValidation": true}
}

/// Run an `update` command of (statement, filter) pairs; returns the filters of the
/// statements the target refused (to re-read).
async fn run_updates(
    ctx: &Ctx,
    db: &str,
    coll: &str,
    batch: Vec<(RawDocumentBuf, Document)>,
) -> Result<Vec<Document>> {
    if batch.is_empty() {
        return Ok(vec![]);
    }
    let (stmts, filters): (Vec<RawDocumentBuf>, Vec<Document>) = batch.into_iter().unzip();
    let cmd = update_command(coll, stmts);
    let reply = retrying(ctx, &ctx.target.database(db), &cmd, "updating").await?;
    let mut refetch = Vec::new();
    if let Ok(errs) = reply.get_array("writeErrors") {
        for e in errs.iter().filter_map(Bson::as_document) {
            let idx = catalog_num(e.get("index")) as usize;
            let Some(filter) = filters.get(idx) else {
                continue;
            };
            // The target's document cannot take this update (its shape differs from the
            // source's at the time of the event): take the source's current document.
            let code = catalog_num(e.get("code"));
            debug!(ns = %format!("{db}.{coll}"), code, "update refused; re-reading the document");
            refetch.push(filter.clone());
        }
    }
    if let Ok(wce) = reply.get_document("writeConcernError") {
        return Err(wce_error(wce, &format!("{db}.{coll}")));
    }
    Ok(refetch)
}

/// A write-concern error in a reply: the writes happened but were not confirmed. A transient
/// code (a primary stepping down, a timeout) is retried from the checkpoint (every write the
/// appliers issue is idempotent); any other stops the migration with the server's message.
fn wce_error(wce: &Document, ns: &str) -> EngineError {
    let code = catalog_num(wce.get("code")) as i32;
    let msg = format!(
        "the target did not confirm writes to {ns}: write concern error {} (code {code})",
        wce.get_str("errmsg").unwrap_or("")
    );
    match super::error::classify_parts(Some(code), &[], false) {
        ErrorClass::Transient => EngineError::Retry(msg),
        ErrorClass::Fatal => EngineError::Other(msg),
    }
}

/// Whether a reply carries a write-concern error worth retrying at once.
fn transient_wce(reply: &Document) -> bool {
    reply
        .get_document("writeConcernError")
        .ok()
        .is_some_and(|w| wce_error(w, "").class() == ErrorClass::Transient)
}

fn catalog_num(b: Option<&Bson>) -> i64 {
    super::catalog::num(b)
}

fn first_write_error(reply: &Document) -> Option<String> {
    reply
        .get_array("writeErrors")
        .ok()
        .and_then(|a| a.first())
        .map(|e| e.to_string())
        .or_else(|| {
            reply
                .get_document("writeConcernError")
                .ok()
                .map(|d| d.to_string())
        })
}

async fn write_alone(ctx: &Ctx, db: &str, coll: &str, op: &WriteOp) -> Result<()> {
    let c = ctx.target.database(db).collection::<Document>(coll);
    let ns = format!("{db}.{coll}");
    match op {
        WriteOp::Upsert { filter, doc } => {
            put_document(ctx, db, coll, filter.clone(), doc.clone()).await?
        }
        WriteOp::Update { filter, updates } => {
            for u in updates {
                if let Err(e) = c
                    .update_one(filter.clone(), u.clone())
                    .bypass_document_validation(true)
                    .await
                {
                    if classify_mongo(&e) == ErrorClass::Transient {
                        return Err(EngineError::mongo(
                            Side::Target,
                            format!("writing to {ns}"),
                            e,
                        ));
                    }
                    return refetch_one(ctx, db, coll, filter.clone()).await;
                }
            }
        }
        WriteOp::Delete { filter } => {
            c.delete_one(filter.clone())
                .await
                .on(Side::Target, &format!("deleting in {ns}"))?;
        }
        WriteOp::Refetch { filter } => return refetch_one(ctx, db, coll, filter.clone()).await,
    }
    Ok(())
}

/// Whether a document holds a `$`-prefixed field name at any depth (walked in place: no
/// copy of the document).
fn has_dollar_fields(d: &Document) -> bool {
    d.iter()
        .any(|(k, v)| k.starts_with('$') || translate::has_dollar_keys(v))
}

/// Make the target's document equal `doc`: a replace with upsert, or — for documents with
/// `$`-prefixed field names, which no replacement may carry — a delete then an insert (both
/// on this applier, so the document's order of events is kept).
async fn put_document(
    ctx: &Ctx,
    db: &str,
    coll: &str,
    filter: Document,
    doc: Document,
) -> Result<()> {
    let ns = format!("{db}.{coll}");
    let c = ctx.target.database(db).collection::<Document>(coll);
    if has_dollar_fields(&doc) {
        c.delete_one(filter)
            .await
            .on(Side::Target, &format!("writing to {ns}"))?;
        c.insert_one(doc)
            .bypass_document_validation(true)
            .await
            .on(Side::Target, &format!("writing to {ns}"))?;
    } else {
        c.replace_one(filter, doc)
            .upsert(true)
            .bypass_document_validation(true)
            .await
            .on(Side::Target, &format!("writing to {ns}"))?;
    }
    Ok(())
}

/// Replace the target's document by the source's current one, or delete it if it is gone.
async fn refetch_one(ctx: &Ctx, db: &str, coll: &str, filter: Document) -> Result<()> {
    ctx.metrics.refetches.inc();
    let ns = format!("{db}.{coll}");
    let cur = ctx
        .source
        .database(db)
        .collection::<Document>(coll)
        .find_one(filter.clone())
        .await
        .on(Side::Source, &format!("re-reading a document of {ns}"))?;
    let t = ctx.target.database(db).collection::<Document>(coll);
    match cur {
        Some(d) => put_document(ctx, db, coll, filter, d).await?,
        None => {
            t.delete_one(filter)
                .await
                .on(Side::Target, &format!("deleting in {ns}"))?;
        }
    }
    Ok(())
}

/// Run a target command, retrying transient errors for up to a minute (every write the
/// appliers issue is idempotent).
async fn retrying(
    ctx: &Ctx,
    db: &mongodb::Database,
    cmd: &RawDocumentBuf,
    what: &str,
) -> Result<Document> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        // A copy of the serialized command is a memcpy; the driver sends its bytes as they are.
        match db.run_raw_command(cmd.clone()).await {
            Ok(d) if transient_wce(&d) && started.elapsed() < Duration::from_secs(60) => {
                ctx.metrics.errors.with_label_values(&["apply_retry"]).inc();
                warn!(reply = %d, "write concern error while {what}; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Ok(d) => return Ok(d),
            Err(e)
                if classify_mongo(&e) == ErrorClass::Transient
                    && started.elapsed() < Duration::from_secs(60) =>
            {
                ctx.metrics.errors.with_label_values(&["apply_retry"]).inc();
                warn!(error = %e, "transient error while {what}; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(EngineError::mongo(Side::Target, what, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(id: i32) -> (String, String, WriteOp) {
        (
            "d".into(),
            "c".into(),
            WriteOp::Upsert {
                filter: doc! {"_id": id},
                doc: doc! {"_id": id},
            },
        )
    }

    #[test]
    fn update_command_carries_the_statements_as_given() {
        let stmts = vec![
            RawDocumentBuf::from_document(
                &doc! {"q": {"_id": 1}, "u": {"_id": 1, "a": 1}, "upsert": true},
            )
            .expect("encode"),
            RawDocumentBuf::from_document(&doc! {"q": {"_id": 2}, "u": {"$set": {"b.c": 2}}})
                .expect("encode"),
        ];
        let cmd = update_command("c", stmts).to_document().expect("decode");
        assert_eq!(
            cmd,
            doc! {"update": "c", "updates": [
                {"q": {"_id": 1}, "u": {"_id": 1, "a": 1}, "upsert": true},
                {"q": {"_id": 2}, "u": {"$set": {"b.c": 2}}},
            ], "ordered": false, "bypassDocumentValidation": true}
        );
        // The command name comes first, as servers require.
        assert_eq!(cmd.keys().next().map(String::as_str), Some("update"));
    }

    #[test]
    fn rounds_keep_document_order() {
        let ops = vec![up(1), up(2), up(1), up(3), up(1)];
        let r = rounds(ops);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].len(), 3);
        assert_eq!(r[1].len(), 1);
        assert_eq!(r[2].len(), 1);
        // Same _id in another collection is another document.
        let mut other = up(1);
        other.1 = "x".into();
        assert_eq!(rounds(vec![up(1), other]).len(), 1);
    }
}
