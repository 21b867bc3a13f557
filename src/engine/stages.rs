//! What the engine's command and retry logic needs from the world, behind two small traits:
//! [`JobStore`] (taking the job, saving it, resetting it) and [`Stages`] (the copy,
//! replication and finalize stages). The engine runs against [`Mongo`], which implements both
//! on the source and target deployments; its unit tests run against in-memory fakes, without
//! servers.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use mongodb::bson::Timestamp;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::copy::{self, CopyOutcome};
use super::ctx::Ctx;
use super::error::{EngineError, MongoContext, Result, Side};
use super::repl::{self, ReplOutcome};
use super::store::Checkpoint;
use super::tuning::Tuning;
use super::{conn, finalize};

/// The job as kept by the engine while it runs.
pub type SharedCheckpoint = Arc<Mutex<Checkpoint>>;

/// Copy progress an earlier run left: documents, bytes, collections copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub documents: u64,
    pub bytes: u64,
    pub collections: u64,
}

/// Called once if another worker takes the job over.
pub type OnDeposed = Box<dyn FnOnce(EngineError) + Send>;

/// Where the job's state lives and who may write it.
pub trait JobStore: Send + Sync {
    /// Both deployments answer and have the topology a migration needs.
    fn probe(&self) -> BoxFuture<'_, Result<()>>;
    /// Take the job (waiting out a live holder of this job; `waiting` is told why) and load
    /// its checkpoint.
    fn acquire<'a>(
        &'a self,
        waiting: Box<dyn Fn(&EngineError) + Send + Sync + 'a>,
    ) -> BoxFuture<'a, Result<Checkpoint>>;
    /// Renew the job while this process runs; `on_deposed` is called if another worker takes
    /// it over. The task ends with `stop`.
    fn keep(&self, stop: CancellationToken, on_deposed: OnDeposed) -> tokio::task::JoinHandle<()>;
    fn save<'a>(&'a self, cp: &'a mut Checkpoint) -> BoxFuture<'a, Result<()>>;
    /// Drop, on the target, every namespace an earlier run of this job created.
    fn drop_namespaces(&self) -> BoxFuture<'_, Result<()>>;
    /// Forget the records of the earlier run (catalog, partitions, indexes).
    fn clear_records(&self) -> BoxFuture<'_, Result<()>>;
    fn progress(&self) -> BoxFuture<'_, Result<Progress>>;
    /// Give the job up (clean shutdown).
    fn release(&self) -> BoxFuture<'_, Result<()>>;
    /// The source's current cluster time (a finalize's cutoff).
    fn source_time(&self) -> BoxFuture<'_, Result<Timestamp>>;
    /// Refuse at once when the source cannot block user writes.
    fn check_write_blocking(&self) -> BoxFuture<'_, Result<()>>;
    fn block_writes(&self) -> BoxFuture<'_, Result<()>>;
}

/// The pipeline's stages.
pub trait Stages: Send + Sync {
    /// Whether a collection waits to be copied (the initial copy, or a copy anew).
    fn copy_pending(&self) -> BoxFuture<'_, Result<bool>>;
    fn copy<'a>(
        &'a self,
        cp: &'a SharedCheckpoint,
        tuning: &'a Tuning,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<CopyOutcome>>;
    fn replicate<'a>(
        &'a self,
        cp: &'a SharedCheckpoint,
        tuning: &'a Tuning,
        cancel: &'a CancellationToken,
        cutoff: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<ReplOutcome>>;
    fn finalize<'a>(
        &'a self,
        cp: &'a SharedCheckpoint,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>>;
}

/// Both traits on real deployments.
pub struct Mongo {
    pub ctx: Arc<Ctx>,
}

impl JobStore for Mongo {
    fn probe(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            conn::probe(&self.ctx.source, Side::Source).await?;
            conn::probe(&self.ctx.target, Side::Target).await?;
            Ok(())
        }
        .boxed()
    }

    fn acquire<'a>(
        &'a self,
        waiting: Box<dyn Fn(&EngineError) + Send + Sync + 'a>,
    ) -> BoxFuture<'a, Result<Checkpoint>> {
        async move { self.ctx.store.acquire(waiting).await }.boxed()
    }

    fn keep(&self, stop: CancellationToken, on_deposed: OnDeposed) -> tokio::task::JoinHandle<()> {
        self.ctx.store.fence().spawn_renewal(stop, on_deposed)
    }

    fn save<'a>(&'a self, cp: &'a mut Checkpoint) -> BoxFuture<'a, Result<()>> {
        self.ctx.store.save(cp).boxed()
    }

    fn drop_namespaces(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            let ctx = &self.ctx;
            for c in ctx.store.all_collections().await? {
                let what = format!("dropping {} of the earlier run", c.ns);
                let coll = ctx
                    .target
                    .database(&c.db)
                    .collection::<mongodb::bson::Document>(&c.coll);
                ctx.store
                    .fence()
                    .ddl(&what, async { coll.drop().await.on(Side::Target, &what) })
                    .await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn clear_records(&self) -> BoxFuture<'_, Result<()>> {
        self.ctx.store.clear_records().boxed()
    }

    fn progress(&self) -> BoxFuture<'_, Result<Progress>> {
        async move {
            let (docs, bytes) = self.ctx.store.copied_totals().await?;
            let collections = self
                .ctx
                .store
                .all_collections()
                .await?
                .iter()
                .filter(|c| c.copied)
                .count();
            Ok(Progress {
                documents: docs.max(0) as u64,
                bytes: bytes.max(0) as u64,
                collections: collections as u64,
            })
        }
        .boxed()
    }

    fn release(&self) -> BoxFuture<'_, Result<()>> {
        self.ctx.store.fence().release().boxed()
    }

    fn source_time(&self) -> BoxFuture<'_, Result<Timestamp>> {
        conn::cluster_time(&self.ctx.source, Side::Source).boxed()
    }

    fn check_write_blocking(&self) -> BoxFuture<'_, Result<()>> {
        finalize::check_write_blocking(&self.ctx.source).boxed()
    }

    fn block_writes(&self) -> BoxFuture<'_, Result<()>> {
        finalize::block_writes(&self.ctx.source, true).boxed()
    }
}

impl Stages for Mongo {
    fn copy_pending(&self) -> BoxFuture<'_, Result<bool>> {
        async move {
            Ok(self
                .ctx
                .store
                .all_collections()
                .await?
                .iter()
                .any(|c| c.kind == "collection" && !c.copied))
        }
        .boxed()
    }

    fn copy<'a>(
        &'a self,
        cp: &'a SharedCheckpoint,
        tuning: &'a Tuning,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<CopyOutcome>> {
        copy::run(&self.ctx, cp, tuning, cancel).boxed()
    }

    fn replicate<'a>(
        &'a self,
        cp: &'a SharedCheckpoint,
        tuning: &'a Tuning,
        cancel: &'a CancellationToken,
        cutoff: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<ReplOutcome>> {
        repl::replicate(&self.ctx, cp, tuning, cancel, cutoff).boxed()
    }

    fn finalize<'a>(
        &'a self,
        cp: &'a SharedCheckpoint,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            finalize::run(&self.ctx, cp, cancel).await?;
            info!("finalize done");
            Ok(())
        }
        .boxed()
    }
}
