//! Batched upserts of records by `_id`: one `update` command of many statements instead of
//! one round trip per record, each command one fenced transaction.

use futures::FutureExt;
use mongodb::bson::{rawdoc, RawArrayBuf, RawDocumentBuf};
use mongodb::{ClientSession, Database};
use serde::Serialize;

use super::super::error::{EngineError, Result};
use super::super::reply;
use super::fence::{txn_error, Fence};

/// Records per command.
const UPSERT_BATCH: usize = 500;
/// Approximate bytes per command (well under the 16 MiB message limit).
const UPSERT_BATCH_BYTES: usize = 4 << 20;

/// A record as BSON bytes.
pub fn encode<T: Serialize>(item: &T, what: &str) -> Result<RawDocumentBuf> {
    mongodb::bson::to_raw_document_buf(item).map_err(|e| EngineError::Encode {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

/// Upsert `items` (`_id`, record) into `coll`. Each statement is idempotent, so a batch cut
/// short by a crash is simply written again by the next run.
pub async fn upsert_many(
    fence: &Fence,
    db: &Database,
    coll: &str,
    items: Vec<(String, RawDocumentBuf)>,
    what: &str,
) -> Result<()> {
    let mut chunks: Vec<RawArrayBuf> = Vec::new();
    let (mut stmts, mut n, mut bytes) = (RawArrayBuf::new(), 0usize, 0usize);
    for (id, u) in items {
        bytes += u.as_bytes().len() + id.len() + 48;
        stmts.push(rawdoc! {"q": {"_id": id}, "u": u, "upsert": true});
        n += 1;
        if n >= UPSERT_BATCH || bytes >= UPSERT_BATCH_BYTES {
            chunks.push(std::mem::take(&mut stmts));
            (n, bytes) = (0, 0);
        }
    }
    if n > 0 {
        chunks.push(stmts);
    }
    for stmts in chunks {
        let cmd = rawdoc! {"update": coll, "updates": stmts, "ordered": false};
        write(fence, db, vec![cmd], what).await?;
    }
    Ok(())
}

/// Run write commands on `db` as one fenced transaction; every statement must succeed.
pub async fn write(
    fence: &Fence,
    db: &Database,
    cmds: Vec<RawDocumentBuf>,
    what: &str,
) -> Result<()> {
    fence
        .txn(what, |mut s: ClientSession| {
            let cmds = &cmds;
            async move {
                let mut r = Ok(());
                for cmd in cmds {
                    r = db
                        .run_raw_command(cmd.clone())
                        .session(&mut s)
                        .await
                        .map_err(|e| txn_error(e, what))
                        .and_then(|reply| reply::require_all(&reply, what));
                    if r.is_err() {
                        break;
                    }
                }
                (s, r)
            }
            .boxed()
        })
        .await
}
