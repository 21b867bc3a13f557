//! Fencing: no write of a deposed worker reaches the target, even one frozen mid-batch (a
//! stalled VM, SIGSTOP, a node cut off) that thaws long after another worker took over.
//!
//! Three layers, from strongest to weakest:
//!
//! 1. **Fenced transactions** (every data and metadata write). Each write batch runs in a
//!    target transaction whose first statement updates this worker's *fence slot* document
//!    (`mongoferry.fence`), conditional on the job epoch it took. A new holder first kills the
//!    sessions recorded in the slot documents (aborting any transaction a frozen holder left
//!    open), then raises every slot's epoch. A batch of the old holder then either committed
//!    before the raise (so it is ordered before every write of the new holder, which replays
//!    from the checkpoint it loaded) or finds its slot raised and writes nothing. The server
//!    decides; the old holder's clock and scheduling play no part.
//! 2. **Epoch compare-and-set** on the job document (checkpoint saves).
//! 3. **A local write deadline** for what cannot run in a transaction (DDL, index builds and
//!    drops, `collMod`): a batch may start only within the write window (`Identity::write_window`) of the last successful
//!    lease renewal *sent*; past it the worker stops writing and re-validates the lease first.
//!    Before each such command a fenced no-op transaction proves the epoch again. What remains:
//!    such a command that passed both checks and was then delayed more than the rest of the
//!    window (half the lease TTL) before the server ran it. docs/concepts.md says so.
//!
//! A target without transactions (a standalone server) gets layers 2 and 3 only; the status
//! says so.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::{Client, ClientSession, Collection, Database};
use tokio::sync::{watch, Mutex, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::super::error::{mongo_code, EngineError, ErrorClass, MongoContext, Result, Side};
use super::lease::{Identity, Lease};

/// Fence slots: at most this many fenced transactions run at once.
pub const SLOTS: usize = 64;
const FENCE_COLL: &str = "fence";
/// A fenced commit this recent proves the epoch for a command outside a transaction.
const PROOF_REUSE: Duration = Duration::from_secs(1);
/// How long a takeover tries to raise the fence past the old holder's open transactions.
const RAISE_PATIENCE: Duration = Duration::from_secs(60);

/// Where this process stands with the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    /// Not taken yet (or given up on shutdown).
    Unheld,
    Holding,
    /// Another worker took the job over; this one must never write again.
    Deposed(String),
}

struct Slot {
    id: String,
    /// Lent to a batch's body while it runs.
    session: Option<ClientSession>,
}

/// A fenced batch's body: it gets the batch's session and gives it back with its result.
pub type Body<'a, T> = BoxFuture<'a, (ClientSession, Result<T>)>;

struct Inner {
    client: Client,
    meta: Database,
    lease: Lease,
    epoch: AtomicI64,
    transactional: AtomicBool,
    origin: Instant,
    /// Monotonic nanoseconds since `origin` until which a write batch may start.
    deadline_ns: AtomicU64,
    standing: watch::Sender<Standing>,
    renew_now: Notify,
    slots: Mutex<Vec<Slot>>,
    free: Semaphore,
    committed: AtomicU64,
    refused: AtomicU64,
    /// When (monotonic ns since `origin`) a fenced transaction last committed: it proved the
    /// epoch then.
    proven_ns: AtomicU64,
}

/// The fence of one worker process. Cheap to clone.
#[derive(Clone)]
pub struct Fence {
    inner: Arc<Inner>,
}

/// Whether a driver error means "this transaction may simply be run again".
fn transient_txn(e: &mongodb::error::Error) -> bool {
    e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
}

impl Fence {
    pub fn new(target: &Client, meta: Database, me: Identity) -> Self {
        let (standing, _) = watch::channel(Standing::Unheld);
        Fence {
            inner: Arc::new(Inner {
                client: target.clone(),
                lease: Lease::new(&meta, me),
                meta,
                epoch: AtomicI64::new(0),
                transactional: AtomicBool::new(true),
                origin: Instant::now(),
                deadline_ns: AtomicU64::new(0),
                standing,
                renew_now: Notify::new(),
                slots: Mutex::new(Vec::new()),
                free: Semaphore::new(0),
                committed: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                proven_ns: AtomicU64::new(0),
            }),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.inner.lease.me
    }

    pub fn lease(&self) -> &Lease {
        &self.inner.lease
    }

    pub fn epoch(&self) -> i64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    /// Whether writes run in fenced transactions (false: the target has no transactions).
    pub fn transactional(&self) -> bool {
        self.inner.transactional.load(Ordering::SeqCst)
    }

    pub fn standing(&self) -> Standing {
        self.inner.standing.borrow().clone()
    }

    /// Fenced batches committed, and refused because this worker was deposed.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.inner.committed.load(Ordering::Relaxed),
            self.inner.refused.load(Ordering::Relaxed),
        )
    }

    fn now_ns(&self) -> u64 {
        self.inner.origin.elapsed().as_nanos() as u64
    }

    fn extend_deadline(&self, sent_ns: u64) {
        let d = sent_ns + self.identity().write_window().as_nanos() as u64;
        self.inner.deadline_ns.fetch_max(d, Ordering::SeqCst);
    }

    fn collection(&self) -> Collection<Document> {
        self.inner.meta.collection(FENCE_COLL)
    }

    /// Take the job: the lease (waiting out a live holder of this job, refusing another job),
    /// a new epoch, then the fence raised past every earlier holder. Returns the epoch.
    pub async fn acquire(&self, waiting: impl Fn(&EngineError)) -> Result<i64> {
        if self.standing() == Standing::Holding {
            return Ok(self.epoch());
        }
        let sent = self.inner.lease.acquire(&waiting).await?;
        self.extend_deadline(sent.saturating_duration_since(self.inner.origin).as_nanos() as u64);
        let job = self
            .inner
            .meta
            .collection::<Document>("checkpoint")
            .find_one_and_update(doc! {"_id": "job"}, doc! {"$inc": {"epoch": 1_i64}})
            .upsert(true)
            .return_document(mongodb::options::ReturnDocument::After)
            .await
            .on(Side::Target, "taking the job")?;
        let epoch = job
            .as_ref()
            .and_then(|d| d.get("epoch"))
            .and_then(Bson::as_i64)
            .unwrap_or(1);
        self.inner.epoch.store(epoch, Ordering::SeqCst);
        self.raise(epoch, &waiting).await?;
        self.inner.standing.send_replace(Standing::Holding);
        info!(
            epoch,
            transactional = self.transactional(),
            "job taken; fence raised"
        );
        Ok(epoch)
    }

    /// Raise every fence slot to `epoch` and bind this process's sessions to its slots. Kills
    /// the sessions an earlier holder recorded first, so a transaction it left open (frozen
    /// mid-batch) is aborted instead of blocking the raise.
    async fn raise(&self, epoch: i64, waiting: &impl Fn(&EngineError)) -> Result<()> {
        let mut slots = Vec::with_capacity(SLOTS);
        for i in 0..SLOTS {
            let session = self
                .inner
                .client
                .start_session()
                .await
                .on(Side::Target, "starting a session")?;
            slots.push(Slot {
                id: format!("s{i}"),
                session: Some(session),
            });
        }
        let started = Instant::now();
        let mut raiser = self
            .inner
            .client
            .start_session()
            .await
            .on(Side::Target, "starting a session")?;
        loop {
            self.kill_recorded_sessions().await;
            match self.try_raise(&mut raiser, epoch, &slots).await {
                Ok(()) => break,
                Err(e)
                    if e.class() == ErrorClass::Transient && started.elapsed() < RAISE_PATIENCE =>
                {
                    waiting(&EngineError::Retry(format!(
                        "raising the fence past the previous holder's open writes: {e}"
                    )));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
        let n = slots.len();
        let mut held = self.inner.slots.lock().await;
        // A raise run again (a retried start) replaces the slots; their permits stay.
        let had = held.len();
        *held = slots;
        self.inner.free.add_permits(n.saturating_sub(had));
        Ok(())
    }

    /// Abort whatever an earlier holder still runs on its recorded sessions.
    async fn kill_recorded_sessions(&self) {
        use futures::TryStreamExt;
        let lsids: Vec<Bson> = match self
            .collection()
            .find(doc! {"lsid": {"$exists": true}})
            .projection(doc! {"lsid": 1})
            .await
        {
            Ok(c) => match c.try_collect::<Vec<Document>>().await {
                Ok(docs) => docs
                    .into_iter()
                    .filter_map(|d| d.get("lsid").cloned())
                    .collect(),
                Err(e) => {
                    warn!(error = %e, "cannot read the fence slots");
                    return;
                }
            },
            Err(e) => {
                warn!(error = %e, "cannot read the fence slots");
                return;
            }
        };
        if lsids.is_empty() {
            return;
        }
        if let Err(e) = self
            .inner
            .client
            .database("admin")
            .run_command(doc! {"killSessions": lsids})
            .await
        {
            // Without killSessions a frozen holder's open transaction blocks the raise until
            // the server expires it (transactionLifetimeLimitSeconds); the raise waits.
            warn!(error = %e, "cannot kill the previous holder's sessions");
        }
    }

    async fn try_raise(&self, s: &mut ClientSession, epoch: i64, slots: &[Slot]) -> Result<()> {
        let mut stmts = vec![doc! {"q": {}, "u": {"$max": {"epoch": epoch}}, "multi": true}];
        for slot in slots {
            stmts.push(doc! {
                "q": {"_id": &slot.id},
                "u": {"$max": {"epoch": epoch}, "$set": {"lsid": slot.session.as_ref().map(|s| Bson::Document(s.id().clone())).unwrap_or(Bson::Null),
                      "holder": &self.inner.lease.me.incarnation}},
                "upsert": true,
            });
        }
        let cmd = doc! {"update": FENCE_COLL, "updates": stmts, "ordered": true};
        let txn = s.start_transaction().await;
        if let Err(e) = txn {
            if is_no_transactions(&e) {
                return self.raise_without_transactions(cmd).await;
            }
            return Err(EngineError::mongo(Side::Target, "raising the fence", e));
        }
        let r = self
            .inner
            .meta
            .run_command(cmd.clone())
            .session(&mut *s)
            .await;
        match r {
            Ok(reply) => {
                super::super::reply::require_all(&reply, "raising the fence")?;
                s.commit_transaction()
                    .await
                    .on(Side::Target, "raising the fence")?;
                Ok(())
            }
            Err(e) if is_no_transactions(&e) => {
                abort(s).await;
                self.raise_without_transactions(cmd).await
            }
            Err(e) => {
                abort(s).await;
                if transient_txn(&e) {
                    return Err(EngineError::Retry(format!(
                        "raising the fence: {}",
                        super::super::error::describe(&e)
                    )));
                }
                Err(EngineError::mongo(Side::Target, "raising the fence", e))
            }
        }
    }

    async fn raise_without_transactions(&self, cmd: Document) -> Result<()> {
        warn!("the target does not run transactions: writes are fenced by the lease deadline only");
        self.inner.transactional.store(false, Ordering::SeqCst);
        let reply = self
            .inner
            .meta
            .run_command(cmd)
            .await
            .on(Side::Target, "raising the fence")?;
        super::super::reply::require_all(&reply, "raising the fence")
    }

    /// Renew the lease every `Identity::renew_every` (or at once when a writer is past its deadline)
    /// until `stop`; on losing the lease, mark this process deposed and call `on_deposed`.
    pub fn spawn_renewal(
        &self,
        stop: CancellationToken,
        on_deposed: impl FnOnce(EngineError) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut on_deposed = Some(on_deposed);
            let mut pause = this.identity().renew_every();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                    _ = this.inner.renew_now.notified() => {}
                }
                if stop.is_cancelled() {
                    return;
                }
                let sent = this.now_ns();
                match this.inner.lease.renew().await {
                    Ok(true) => {
                        this.extend_deadline(sent);
                        // Wake writers waiting on the deadline.
                        this.inner.standing.send_modify(|_| {});
                        pause = this.identity().renew_every();
                    }
                    Ok(false) => {
                        let e = EngineError::Fenced {
                            ours: this.epoch(),
                            detail: "the job lease is held by another worker now".into(),
                        };
                        this.depose(&e);
                        if let Some(f) = on_deposed.take() {
                            f(e);
                        }
                        return;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot renew the job lease; retrying");
                        pause = Duration::from_secs(1);
                    }
                }
            }
        })
    }

    fn depose(&self, e: &EngineError) {
        self.inner
            .standing
            .send_replace(Standing::Deposed(e.to_string()));
        self.inner.deadline_ns.store(0, Ordering::SeqCst);
    }

    /// Wait until this worker may start a write batch: it holds the job and its last renewal
    /// is recent. Past the deadline it asks for a renewal and waits for its answer; a worker
    /// that was deposed gets `Fenced`.
    pub async fn guard(&self) -> Result<()> {
        let mut rx = self.inner.standing.subscribe();
        let began = Instant::now();
        loop {
            match &*rx.borrow_and_update() {
                Standing::Deposed(why) => {
                    return Err(EngineError::Fenced {
                        ours: self.epoch(),
                        detail: why.clone(),
                    })
                }
                Standing::Unheld => return Err(EngineError::NotHolding),
                Standing::Holding => {
                    if self.now_ns() < self.inner.deadline_ns.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                }
            }
            if began.elapsed() > self.identity().ttl {
                return Err(EngineError::Retry(
                    "cannot confirm the job lease with the target; writes wait until it is renewed"
                        .into(),
                ));
            }
            debug!("write deadline passed; re-validating the lease");
            self.inner.renew_now.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(500), rx.changed()).await;
        }
    }

    /// Run `body` as one fenced write batch: in a target transaction that first proves this
    /// worker's epoch on its fence slot. Retried whole on a transient transaction error (the
    /// body must be idempotent); refused with `Fenced` once another worker took over.
    ///
    /// The body gets the transaction's session and hands it back with its result.
    pub async fn txn<'a, T>(
        &self,
        what: &str,
        mut body: impl FnMut(ClientSession) -> Body<'a, T>,
    ) -> Result<T> {
        let r = self
            .txn_or_abort(what, |s| {
                let f = body(s);
                async move {
                    let (s, r) = f.await;
                    (s, r.map(Ok::<T, std::convert::Infallible>))
                }
                .boxed()
            })
            .await?;
        match r {
            Ok(t) => Ok(t),
            Err(never) => match never {},
        }
    }

    /// [`Fence::txn`] whose body may also end the batch without committing: `Ok(Err(r))`
    /// aborts the transaction and is returned as is (for a statement the target refused, which
    /// aborts a transaction anyway).
    pub async fn txn_or_abort<'a, T, R>(
        &self,
        what: &str,
        mut body: impl FnMut(ClientSession) -> Body<'a, std::result::Result<T, R>>,
    ) -> Result<std::result::Result<T, R>> {
        let mut slot = self.take_slot().await?;
        let r = self.run_in_slot(&mut slot, what, &mut body).await;
        self.put_slot(slot).await;
        r
    }

    /// Run `body` with a session but outside any transaction, for writes a transaction cannot
    /// hold (capped collections): right after a fenced no-op transaction proved the epoch, and
    /// within the write deadline.
    pub async fn beside<'a, T>(
        &self,
        what: &str,
        body: impl FnOnce(ClientSession) -> Body<'a, T>,
    ) -> Result<T> {
        self.prove(what).await?;
        let mut slot = self.take_slot().await?;
        let r = match self.guard().await {
            Err(e) => Err(e),
            Ok(()) => match slot.session.take() {
                None => Err(EngineError::NotHolding),
                Some(session) => {
                    let (session, r) = body(session).await;
                    slot.session = Some(session);
                    r
                }
            },
        };
        self.put_slot(slot).await;
        r
    }

    async fn take_slot(&self) -> Result<Slot> {
        let permit = self
            .inner
            .free
            .acquire()
            .await
            .map_err(|_| EngineError::NotHolding)?;
        permit.forget();
        let mut slots = self.inner.slots.lock().await;
        slots.pop().ok_or(EngineError::NotHolding)
    }

    async fn put_slot(&self, slot: Slot) {
        if slot.session.is_none() {
            // Lost with a body that never finished: one concurrent batch fewer.
            warn!(slot = %slot.id, "a fence slot lost its session");
            return;
        }
        self.inner.slots.lock().await.push(slot);
        self.inner.free.add_permits(1);
    }

    async fn run_in_slot<'a, T, R>(
        &self,
        slot: &mut Slot,
        what: &str,
        body: &mut impl FnMut(ClientSession) -> Body<'a, std::result::Result<T, R>>,
    ) -> Result<std::result::Result<T, R>> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.guard().await?;
            let Some(mut s) = slot.session.take() else {
                return Err(EngineError::NotHolding);
            };
            if !self.transactional() {
                let (s, r) = body(s).await;
                slot.session = Some(s);
                let out = r?;
                self.inner.committed.fetch_add(1, Ordering::Relaxed);
                return Ok(out);
            }
            if let Err(e) = s.start_transaction().await {
                slot.session = Some(s);
                return Err(EngineError::mongo(
                    Side::Target,
                    "starting a transaction",
                    e,
                ));
            }
            let (mut s, r) = self.fenced_body(s, &slot.id, what, body).await;
            let out = match r {
                Ok(Ok(out)) => out,
                Ok(Err(refused)) => {
                    abort(&mut s).await;
                    slot.session = Some(s);
                    return Ok(Err(refused));
                }
                Err(e) => {
                    abort(&mut s).await;
                    slot.session = Some(s);
                    if matches!(e, EngineError::Fenced { .. }) {
                        self.inner.refused.fetch_add(1, Ordering::Relaxed);
                        self.depose(&e);
                        return Err(e);
                    }
                    if e.is_transient_txn() && attempt < 20 {
                        tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                        continue;
                    }
                    return Err(e);
                }
            };
            // Frozen between the fence check and here? Then do not commit: the batch waits
            // for the lease to be confirmed and runs again.
            if self.now_ns() >= self.inner.deadline_ns.load(Ordering::SeqCst) {
                abort(&mut s).await;
                slot.session = Some(s);
                continue;
            }
            let began = self.now_ns();
            let committed = commit(&mut s).await;
            slot.session = Some(s);
            match committed {
                Ok(()) => {
                    self.inner.committed.fetch_add(1, Ordering::Relaxed);
                    self.inner.proven_ns.fetch_max(began, Ordering::SeqCst);
                    return Ok(Ok(out));
                }
                Err(e) if transient_txn(&e) && attempt < 20 => {
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                Err(e) => return Err(EngineError::mongo(Side::Target, what, e)),
            }
        }
    }

    async fn fenced_body<'a, T, R>(
        &self,
        mut s: ClientSession,
        slot: &str,
        what: &str,
        body: &mut impl FnMut(ClientSession) -> Body<'a, std::result::Result<T, R>>,
    ) -> (ClientSession, Result<std::result::Result<T, R>>) {
        let epoch = self.epoch();
        let r = self
            .collection()
            .update_one(
                doc! {"_id": slot, "epoch": epoch},
                doc! {"$inc": {"batches": 1_i64}},
            )
            .session(&mut s)
            .await
            .map_err(|e| txn_error(e, what));
        match r {
            Err(e) => (s, Err(e)),
            Ok(r) if r.matched_count == 0 => (
                s,
                Err(EngineError::Fenced {
                    ours: epoch,
                    detail: "another worker raised the fence: it took this migration over".into(),
                }),
            ),
            Ok(_) => body(s).await,
        }
    }

    /// Run a command that cannot be part of a transaction (DDL, index builds, `collMod`):
    /// within the write deadline, right after a fenced no-op transaction proved the epoch.
    pub async fn ddl<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.prove(what).await?;
        self.guard().await?;
        f.await
    }

    /// Prove the epoch with a fenced no-op transaction, unless a fenced transaction committed
    /// within the last `PROOF_REUSE` (busy replication commits all the time).
    async fn prove(&self, what: &str) -> Result<()> {
        let recent = self
            .now_ns()
            .saturating_sub(self.inner.proven_ns.load(Ordering::SeqCst))
            < PROOF_REUSE.as_nanos() as u64;
        if self.transactional() && recent {
            return Ok(());
        }
        self.txn(what, |s| async move { (s, Ok(())) }.boxed()).await
    }

    /// Give the job up (clean shutdown): the renewal must be stopped first. Afterwards no
    /// write of this process passes the guard.
    pub async fn release(&self) -> Result<()> {
        let was = self.inner.standing.send_replace(Standing::Unheld);
        self.inner.deadline_ns.store(0, Ordering::SeqCst);
        if was == Standing::Holding {
            self.inner.lease.release().await?;
        }
        Ok(())
    }
}

/// Abort a transaction that will not be committed. A failure only means the server already
/// dropped it (killed, expired, or the connection is gone).
async fn abort(s: &mut ClientSession) {
    if let Err(e) = s.abort_transaction().await {
        debug!(error = %e, "aborting a transaction the server no longer holds");
    }
}

async fn commit(s: &mut ClientSession) -> mongodb::error::Result<()> {
    let mut tries = 0;
    loop {
        match s.commit_transaction().await {
            Err(e)
                if e.contains_label(mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT)
                    && tries < 3 =>
            {
                tries += 1;
            }
            r => return r,
        }
    }
}

/// A driver error inside a fenced transaction, keeping "run it again" apart.
pub fn txn_error(e: mongodb::error::Error, what: &str) -> EngineError {
    if transient_txn(&e) {
        EngineError::TransientTxn(format!("{what}: {}", super::super::error::describe(&e)))
    } else {
        EngineError::mongo(Side::Target, what, e)
    }
}

/// The server runs no transactions (a standalone mongod answers 20 IllegalOperation).
fn is_no_transactions(e: &mongodb::error::Error) -> bool {
    matches!(mongo_code(e), Some(20) | Some(263))
        || e.to_string()
            .contains("Transaction numbers are only allowed")
}
