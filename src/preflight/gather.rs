//! The I/O of the preflight: harmless commands on both sides. Nothing here decides.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::Client;

use super::checks::{self, MetadataFacts, Occupied, OplogFacts, Topology, Unsupported};
use super::privileges::{AuthInfo, Outcome, Privilege, Probe, Resource};
use super::{Facts, Options, Reach, SideFacts};
use crate::api::PreflightEstimate;
use crate::engine::catalog;

use crate::engine::error::{is_network, mongo_code, EngineError, Side};
use crate::engine::filter::META_DB;

/// Find probes run on at most this many selected collections.
const FIND_PROBES: usize = 20;
/// The longest the preflight waits for what a server may answer slowly (collection sizes
/// and document counts: SecantusDB reads every document to answer them).
const SIZE_BUDGET: Duration = Duration::from_millis(500);
/// Collections sized at once.
const SIZE_CONCURRENCY: usize = 8;
/// The span the oplog check calls recent, seconds (an oplog younger than this has its write
/// rate measured over its age).
const RECENT_SPAN: u32 = 60;
/// SecantusDB reports a count-capped oplog's `size` as 16 KiB an entry.
const SECANTUS_BYTES_PER_ENTRY: i64 = 16 * 1024;

fn outcome(r: Result<(), mongodb::error::Error>) -> Outcome {
    match r {
        Ok(()) => Outcome::Allowed,
        Err(e) if mongo_code(&e) == Some(13) => Outcome::Unauthorized(e.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

fn probe(
    op: impl Into<String>,
    privilege: impl Into<String>,
    r: Result<(), mongodb::error::Error>,
) -> Probe {
    Probe {
        op: op.into(),
        privilege: privilege.into(),
        outcome: outcome(r),
    }
}

fn reach_error(e: &mongodb::error::Error) -> Reach {
    let auth = matches!(
        e.kind.as_ref(),
        mongodb::error::ErrorKind::Authentication { .. }
    ) || mongo_code(e) == Some(18);
    if auth {
        Reach::AuthFailed(e.to_string())
    } else if is_network(e) {
        Reach::Unreachable(e.to_string())
    } else {
        Reach::Error(e.to_string())
    }
}

fn parse_privileges(list: &[Bson]) -> Vec<Privilege> {
    list.iter()
        .filter_map(Bson::as_document)
        .map(|p| {
            let r = p.get_document("resource").ok();
            let resource = match r {
                Some(r) if r.get_bool("cluster").unwrap_or(false) => Resource::Cluster,
                Some(r) if r.get_bool("anyResource").unwrap_or(false) => Resource::AnyResource,
                Some(r) if r.contains_key("db") && r.contains_key("collection") => Resource::Ns {
                    db: r.get_str("db").unwrap_or_default().to_string(),
                    collection: r.get_str("collection").unwrap_or_default().to_string(),
                },
                _ => Resource::Other,
            };
            let actions = p
                .get_array("actions")
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            Privilege { resource, actions }
        })
        .collect()
}

fn parse_auth(d: &Document) -> AuthInfo {
    let info = d.get_document("authInfo").cloned().unwrap_or_default();
    let pairs = |key: &str, a: &str, b: &str| -> Vec<(String, String)> {
        info.get_array(key)
            .map(|v| {
                v.iter()
                    .filter_map(Bson::as_document)
                    .map(|u| {
                        (
                            u.get_str(a).unwrap_or_default().to_string(),
                            u.get_str(b).unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    AuthInfo {
        users: pairs("authenticatedUsers", "user", "db")
            .into_iter()
            .map(|(u, d)| format!("{u}@{d}"))
            .collect(),
        roles: pairs("authenticatedUserRoles", "role", "db"),
        privileges: info
            .get_array("authenticatedUserPrivileges")
            .map(|v| parse_privileges(v))
            .unwrap_or_default(),
    }
}

/// Reach one side: `hello`, `buildInfo`, `connectionStatus`.
async fn reach(client: &Client) -> SideFacts {
    let admin = client.database("admin");
    let mut f = SideFacts {
        reach: Reach::Connected,
        version: String::new(),
        topology: Topology::default(),
        auth: None,
        probes: Vec::new(),
    };
    let hello = match admin.run_command(doc! {"hello": 1}).await {
        Ok(h) => h,
        Err(e) => {
            f.reach = reach_error(&e);
            return f;
        }
    };
    f.topology = Topology {
        set_name: hello.get_str("setName").ok().map(str::to_string),
        mongos: hello.get_str("msg") == Ok("isdbgrid"),
    };
    match admin.run_command(doc! {"buildInfo": 1}).await {
        Ok(b) => f.version = b.get_str("version").unwrap_or("unknown").to_string(),
        Err(e) => {
            f.reach = reach_error(&e);
            return f;
        }
    }
    if let Ok(cs) = admin
        .run_command(doc! {"connectionStatus": 1, "showPrivileges": true})
        .await
    {
        f.auth = Some(parse_auth(&cs));
    }
    f
}

fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// The selection on the source: supported collections, views, what is skipped, the estimate.
struct Selection {
    selected: Vec<(String, String)>,
    capped: bool,
    estimate: PreflightEstimate,
    unsupported: Vec<Unsupported>,
}

/// A probe from an engine error (error 13 names the missing privilege).
fn engine_probe(op: impl Into<String>, privilege: impl Into<String>, e: &EngineError) -> Probe {
    Probe {
        op: op.into(),
        privilege: privilege.into(),
        outcome: if matches!(e, EngineError::Unauthorized { .. }) {
            Outcome::Unauthorized(e.to_string())
        } else {
            Outcome::Failed(e.to_string())
        },
    }
}

/// What one selected collection told: its size (if given in time), its indexes, and the
/// probes it failed (or the first one, which stands for all).
struct Sized {
    size: Option<(i64, i64)>,
    indexes: u64,
    probes: Vec<Probe>,
}

/// Size, index count and access probes of one selected collection: metadata commands only
/// (`collStats` within the budget, `listIndexes`, and the `find` privilege proven by an
/// `_id` lookup that matches nothing).
async fn size_one(
    source: &Client,
    i: usize,
    db: &str,
    coll: &str,
    deadline: Instant,
    keep: Option<&crate::engine::sizes::Sizes>,
) -> Sized {
    let mut out = Sized {
        size: None,
        indexes: 0,
        probes: Vec::new(),
    };
    let sizing = async {
        if Instant::now() >= deadline {
            return Ok(None);
        }
        catalog::estimate_by(source, db, coll, deadline).await
    };
    let indexes = catalog::list_indexes(source, Side::Source, db, coll);
    let find = async {
        if i >= FIND_PROBES {
            return None;
        }
        Some(
            source
                .database(db)
                .run_command(doc! {
                    // An `_id` lookup no document matches: answered from the index.
                    "find": coll, "filter": {"_id": Bson::MinKey}, "limit": 1,
                    "singleBatch": true,
                })
                .await
                .map(|_| ()),
        )
    };
    let (size, ix, find) = tokio::join!(sizing, indexes, find);
    match size {
        Ok(s) => {
            // Left for the copy that may follow this preflight (see `engine::sizes`).
            if let (Some(k), Some((bytes, docs))) = (keep, s) {
                k.put(db, coll, bytes, docs);
            }
            out.size = s
        }
        Err(e) => {
            if i < FIND_PROBES || matches!(e, EngineError::Unauthorized { .. }) {
                out.probes.push(engine_probe(
                    format!("collStats on {db}.{coll}"),
                    format!("collStats on {db}.{coll}"),
                    &e,
                ));
            }
        }
    }
    match ix {
        Ok(ix) => out.indexes = ix.len() as u64,
        Err(e) => {
            if i < FIND_PROBES || matches!(e, EngineError::Unauthorized { .. }) {
                out.probes.push(engine_probe(
                    format!("listIndexes on {db}.{coll}"),
                    format!("listIndexes on {db}.{coll}"),
                    &e,
                ));
            }
        }
    }
    if let Some(r) = find {
        if !matches!(outcome(r.clone()), Outcome::Allowed) || i == 0 {
            out.probes.push(probe(
                format!("find on {db}.{coll} (an _id lookup)"),
                format!("find on {db}.{coll}"),
                r,
            ));
        }
    }
    out
}

async fn list_selection(source: &Client, opts: &Options, probes: &mut Vec<Probe>) -> Selection {
    let mut sel = Selection {
        selected: Vec::new(),
        capped: false,
        estimate: PreflightEstimate::default(),
        unsupported: Vec::new(),
    };
    let Ok(filter) = opts.filter() else {
        return sel;
    };
    // The engine's own listing: what the preflight judges is what the copy will take.
    let listing = match catalog::list_selection(source, &filter).await {
        Ok(l) => {
            probes.push(probe(
                "listDatabases",
                "listDatabases on the cluster",
                Ok(()),
            ));
            l
        }
        Err(e) => {
            probes.push(engine_probe(
                "listDatabases",
                "listDatabases on the cluster",
                &e,
            ));
            return sel;
        }
    };
    for (db, e) in &listing.unlisted {
        probes.push(engine_probe(
            format!("listCollections on {db}"),
            format!("listCollections on database {db}"),
            e,
        ));
    }
    for l in listing.listed {
        let e = l.entry;
        if let Some(why) = l.unsupported {
            sel.unsupported.push(Unsupported {
                ns: e.ns,
                why: format!("{why}: skipped"),
            });
            continue;
        }
        if e.kind == "view" {
            sel.estimate.views += 1;
            continue;
        }
        sel.capped |= e.capped;
        sel.selected.push((e.db, e.coll));
    }
    // Sizes within one budget (metadata on mongod; SecantusDB reads every document to
    // answer, so what it cannot size in time is counted as unsized), at once.
    let deadline = Instant::now() + SIZE_BUDGET;
    let sized: Vec<Sized> = futures::stream::iter(sel.selected.clone().into_iter().enumerate())
        .map(|(i, (db, coll)): (usize, (String, String))| async move {
            size_one(source, i, &db, &coll, deadline, opts.sizes.as_ref()).await
        })
        .buffered(SIZE_CONCURRENCY)
        .collect()
        .await;
    for s in sized {
        match s.size {
            Some((bytes, docs)) => {
                sel.estimate.bytes += bytes.max(0) as u64;
                sel.estimate.documents += docs.max(0) as u64;
            }
            None => sel.estimate.unsized_collections += 1,
        }
        sel.estimate.indexes += s.indexes;
        probes.extend(s.probes);
    }
    sel.estimate.collections = sel.selected.len() as u64;
    sel.estimate.throughput_mbps = opts.throughput();
    sel.estimate.copy_seconds = checks::copy_seconds(sel.estimate.bytes, opts.throughput());
    sel
}

/// Open a cluster-wide change stream and close it again; its post-batch resume token says
/// where the stream stands (the newest oplog position).
async fn probe_change_stream(source: &Client) -> (Probe, Option<Document>) {
    let admin = source.database("admin");
    let r = admin
        .run_command(doc! {
            "aggregate": 1,
            "pipeline": [{"$changeStream": {"allChangesForCluster": true, "showExpandedEvents": true}}],
            "cursor": {"batchSize": 0}
        })
        .await;
    let mut token = None;
    let r = match r {
        Ok(reply) => {
            let cursor = reply.get_document("cursor").ok();
            token = cursor
                .and_then(|c| c.get_document("postBatchResumeToken").ok())
                .cloned();
            let id = cursor.and_then(|c| c.get_i64("id").ok()).unwrap_or(0);
            kill_stream(&admin, id).await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    (
        probe(
            "aggregate $changeStream (allChangesForCluster) on admin",
            "changeStream + find on every database (any normal resource)",
            r,
        ),
        token,
    )
}

async fn kill_stream(admin: &mongodb::Database, id: i64) {
    if id != 0 {
        // Not fatal: an unkilled cursor times out on the server by itself.
        if let Err(e) = admin
            .run_command(doc! {"killCursors": "$cmd.aggregate", "cursors": [id]})
            .await
        {
            debug!(error = %e, "cannot kill the probe's change-stream cursor; it times out");
        }
    }
}

/// How many times the oldest held sequence number is searched for (each a resume of a change
/// stream: one round trip), when the oplog holds fewer entries than its capacity says.
const OLDEST_SEARCH_STEPS: u32 = 8;

/// The first change event after sequence `s` on SecantusDB: its time and sequence. `Ok(None)`:
/// no event after it; `Err(true)`: the server no longer holds `s` (history lost);
/// `Err(false)`: another failure.
async fn secantus_event_after(
    admin: &mongodb::Database,
    template: &Document,
    s: i64,
) -> std::result::Result<Option<(Timestamp, i64)>, bool> {
    let tok = super::token::at_sequence(template, s).ok_or(false)?;
    let reply = admin
        .run_command(doc! {
            "aggregate": 1,
            "pipeline": [{"$changeStream": {
                "allChangesForCluster": true, "showExpandedEvents": true, "resumeAfter": tok,
            }}],
            "cursor": {"batchSize": 1},
        })
        .await
        .map_err(|e| matches!(mongo_code(&e), Some(286) | Some(136)))?;
    let cursor = reply.get_document("cursor").map_err(|_| false)?;
    kill_stream(admin, cursor.get_i64("id").unwrap_or(0)).await;
    let first = cursor
        .get_array("firstBatch")
        .ok()
        .and_then(|b| b.first())
        .and_then(Bson::as_document);
    let Some(ev) = first else { return Ok(None) };
    let ts = ev.get_timestamp("clusterTime").map_err(|_| false)?;
    let seq = ev
        .get_document("_id")
        .ok()
        .and_then(super::token::decode)
        .map(|(s, _)| s)
        .ok_or(false)?;
    Ok(Some((ts, seq)))
}

/// SecantusDB's oplog located by sequence numbers (its queries of `local.oplog.rs` read the
/// whole oplog): the newest position from the change stream's post-batch token, the oldest
/// held entry by resuming after the sequence the capacity says is the oldest (searching
/// forward when the server already pruned it, as its time-based retention does). Returns the
/// oldest entry's time and the entries held; `None` when the server's tokens are not
/// SecantusDB's.
async fn secantus_oplog(
    source: &Client,
    newest: &Document,
    capacity: Option<u64>,
) -> Option<(Timestamp, u64)> {
    let (last, last_ts) = super::token::decode(newest)?;
    let admin = source.database("admin");
    let held = capacity.map_or(last, |c| last.min(c as i64));
    // Resuming after `lo` (exclusive) is refused while `lo` is pruned; `hi` is known held.
    let (mut lo, mut hi) = (last - held, last);
    let mut found: Option<(Timestamp, i64)> = None;
    let mut guess = lo;
    for _ in 0..OLDEST_SEARCH_STEPS {
        match secantus_event_after(&admin, newest, guess).await {
            Ok(ev) => {
                found = ev.or(found);
                hi = guess;
                if guess == lo {
                    break;
                }
            }
            Err(true) => lo = guess,
            Err(false) => return None,
        }
        if hi - lo <= 1 {
            break;
        }
        guess = lo + (hi - lo) / 2;
    }
    match found {
        Some((ts, s)) => Some((ts, (last - s + 1).max(1) as u64)),
        // Nothing after the oldest position: the newest position is all there is.
        None => Some((last_ts, 0)),
    }
}

/// The oplog in `$natural` order, first or last entry (mongod answers from its ends).
async fn natural_end(
    oplog: &mongodb::Collection<Document>,
    dir: i32,
) -> std::result::Result<Option<Timestamp>, mongodb::error::Error> {
    Ok(oplog
        .find_one(doc! {})
        .sort(doc! {"$natural": dir})
        .projection(doc! {"ts": 1, "_id": 0})
        .await?
        .and_then(|d| d.get_timestamp("ts").ok()))
}

/// The oplog: its oldest entry, capacity, fill and write rate — from metadata and the
/// oplog's two ends, never a scan. The privilege to read it is proven by `explain`.
async fn oplog_facts(
    source: &Client,
    newest: Option<&Document>,
    probes: &mut Vec<Probe>,
) -> Result<OplogFacts, String> {
    let local = source.database("local");
    let oplog = local.collection::<Document>("oplog.rs");
    let allowed = local
        .run_command(doc! {
            "explain": {"find": "oplog.rs", "filter": {}, "limit": 1},
            "verbosity": "queryPlanner",
        })
        .await
        .map(|_| ());
    let denied = allowed.as_ref().err().map(|e| e.to_string());
    probes.push(probe(
        "explain find on local.oplog.rs",
        "find on local.oplog.rs",
        allowed,
    ));
    if let Some(e) = denied {
        return Err(format!("the source's oplog cannot be read: {e}"));
    }
    let now = crate::engine::conn::cluster_time(source, Side::Source)
        .await
        .map(|t| t.time)
        .unwrap_or_else(|_| now_secs());
    // The capped size as created (bytes on mongod; 16 KiB an entry on SecantusDB).
    let created_size = match local
        .run_cursor_command(doc! {"listCollections": 1, "filter": {"name": "oplog.rs"}})
        .await
    {
        Ok(c) => c
            .try_collect::<Vec<Document>>()
            .await
            .ok()
            .and_then(|v| v.into_iter().next())
            .and_then(|s| {
                s.get_document("options")
                    .ok()
                    .map(|o| crate::engine::reply::num(o.get("size")))
            })
            .filter(|s| *s > 0),
        Err(_) => None,
    };
    let secantus = source
        .database("admin")
        .run_command(doc! {"serverStatus": 1})
        .await
        .map(|s| s.contains_key("secantus"))
        .unwrap_or(false);
    let max_entries = created_size.map(|s| (s / SECANTUS_BYTES_PER_ENTRY).max(0) as u64);
    if let Some((oldest, held)) = match newest {
        Some(t) if secantus => secantus_oplog(source, t, max_entries).await,
        _ => None,
    } {
        return Ok(OplogFacts {
            age_seconds: f64::from(now.saturating_sub(oldest.time)),
            count: held,
            recent_entries: None,
            recent_span_seconds: f64::from(RECENT_SPAN),
            max_entries,
            used_bytes: None,
            max_bytes: None,
        });
    }
    // mongod: the two ends in `$natural` order and the collection's statistics, all kept by
    // the server.
    let oldest = match natural_end(&oplog, 1).await {
        Ok(Some(ts)) => ts,
        Ok(None) => return Err("the source's oplog is empty".into()),
        Err(e) => return Err(format!("the source's oplog cannot be read: {e}")),
    };
    let stats = local.run_command(doc! {"collStats": "oplog.rs"}).await.ok();
    let count = stats
        .as_ref()
        .map(|s| crate::engine::reply::num(s.get("count")).max(0) as u64)
        .unwrap_or(0);
    let used = stats
        .as_ref()
        .map(|s| crate::engine::reply::num(s.get("size")).max(0) as u64);
    let max_size = stats
        .as_ref()
        .map(|s| crate::engine::reply::num(s.get("maxSize")))
        .filter(|m| *m > 0);
    let mut facts = OplogFacts {
        age_seconds: f64::from(now.saturating_sub(oldest.time)),
        count,
        recent_entries: None,
        recent_span_seconds: f64::from(RECENT_SPAN),
        max_entries: None,
        used_bytes: used,
        max_bytes: None,
    };
    if secantus || (count > 0 && used == Some(0)) {
        facts.max_entries = max_entries;
    } else {
        facts.max_bytes = max_size.or(created_size).map(|m| m as u64);
    }
    Ok(facts)
}

/// Create, write, index, modify and drop a scratch collection in the target's `mongoferry`
/// database; list the selected databases.
async fn target_probes(target: &Client, _opts: &Options) -> Vec<Probe> {
    let db = target.database(META_DB);
    let name = format!(
        "preflight_{}_{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let ns = format!("{META_DB}.{name}");
    let mut out = Vec::new();
    let run = |cmd: Document| {
        let db = db.clone();
        async move { db.run_command(cmd).await.map(|_| ()) }
    };
    out.push(probe(
        format!("create {ns}"),
        format!("createCollection on {META_DB}"),
        run(doc! {"create": &name}).await,
    ));
    out.push(probe(
        format!("insert into {ns} (bypassDocumentValidation)"),
        format!("insert + bypassDocumentValidation on {META_DB}"),
        run(doc! {"insert": &name, "documents": [{"_id": 1, "a": 1}], "bypassDocumentValidation": true}).await,
    ));
    out.push(probe(
        format!("find on {ns}"),
        format!("find on {META_DB}"),
        run(doc! {"find": &name, "filter": {}, "limit": 1}).await,
    ));
    out.push(probe(
        format!("update on {ns} (bypassDocumentValidation)"),
        format!("update + bypassDocumentValidation on {META_DB}"),
        run(doc! {"update": &name, "updates": [{"q": {"_id": 1}, "u": {"$set": {"a": 2}}}], "bypassDocumentValidation": true}).await,
    ));
    out.push(probe(
        format!("createIndexes on {ns}"),
        format!("createIndex on {META_DB}"),
        run(doc! {"createIndexes": &name, "indexes": [{"key": {"a": 1}, "name": "a_1"}]}).await,
    ));
    out.push(probe(
        format!("collMod on {ns}"),
        format!("collMod on {META_DB} (role dbAdminAnyDatabase)"),
        run(doc! {"collMod": &name, "index": {"name": "a_1", "hidden": false}}).await,
    ));
    out.push(probe(
        format!("dropIndexes on {ns}"),
        format!("dropIndex on {META_DB}"),
        run(doc! {"dropIndexes": &name, "index": "a_1"}).await,
    ));
    out.push(probe(
        format!("delete on {ns}"),
        format!("remove on {META_DB}"),
        run(doc! {"delete": &name, "deletes": [{"q": {}, "limit": 0}]}).await,
    ));
    out.push(probe(
        format!("drop {ns}"),
        format!("dropCollection on {META_DB}"),
        run(doc! {"drop": &name}).await,
    ));
    out
}

/// Create and drop a capped scratch collection in the target's `mongoferry` database (the
/// privilege to create capped collections).
async fn capped_probe(target: &Client) -> Vec<Probe> {
    let db = target.database(META_DB);
    let c = format!(
        "preflight_{}_{}_capped",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let r = db
        .run_command(doc! {"create": &c, "capped": true, "size": 4096_i64})
        .await
        .map(|_| ());
    if r.is_ok() {
        if let Err(e) = db.run_command(doc! {"drop": &c}).await {
            warn!(collection = %format!("{META_DB}.{c}"), error = %e,
                  "cannot drop the preflight's scratch collection; drop it by hand");
        }
    }
    vec![probe(
        format!("create capped {META_DB}.{c}"),
        format!("convertToCapped on {META_DB}"),
        r,
    )]
}

/// Selected collections that already hold documents on the target (counted within the
/// budget; beyond it, "holds documents").
async fn occupied(
    target: &Client,
    selected: &[(String, String)],
    opts: &Options,
    probes: &mut Vec<Probe>,
) -> Option<Vec<Occupied>> {
    let mut dbs: Vec<String> = selected.iter().map(|(d, _)| d.clone()).collect();
    dbs.sort();
    dbs.dedup();
    let listed: Vec<_> = futures::stream::iter(dbs)
        .map(|db| {
            let t = target.clone();
            async move {
                let names = t.database(&db).list_collection_names().await;
                (db, names)
            }
        })
        .buffered(SIZE_CONCURRENCY)
        .collect()
        .await;
    let mut present = Vec::new();
    let mut complete = true;
    for (db, names) in listed {
        match names {
            Ok(names) => present.extend(
                selected
                    .iter()
                    .filter(|(d, c)| *d == db && names.contains(c))
                    .cloned(),
            ),
            Err(e) => {
                probes.push(probe(
                    format!("listCollections on target {db}"),
                    format!("listCollections on database {db}"),
                    Err(e),
                ));
                complete = false;
            }
        }
    }
    let deadline = Instant::now() + SIZE_BUDGET;
    let counted: Vec<Option<Occupied>> = futures::stream::iter(present)
        .map(|(db, coll): (String, String)| async move {
            let c = target.database(&db).collection::<Document>(&coll);
            let left = deadline.saturating_duration_since(Instant::now());
            let n = match c
                .estimated_document_count()
                .max_time(left.max(Duration::from_millis(1)))
                .await
            {
                Ok(0) => return None,
                Ok(n) => Some(n),
                // Not counted in time: does it hold anything?
                Err(_) => {
                    c.find_one(doc! {})
                        .projection(doc! {"_id": 1})
                        .await
                        .ok()
                        .flatten()?;
                    None
                }
            };
            let ns = format!("{db}.{coll}");
            Some(Occupied {
                owned: opts.owned.contains(&ns),
                ns,
                documents: n,
            })
        })
        .buffered(SIZE_CONCURRENCY)
        .collect()
        .await;
    complete.then(|| counted.into_iter().flatten().collect())
}

async fn metadata(target: &Client) -> Option<MetadataFacts> {
    let (job, collections) = crate::engine::store::earlier_run(target).await.ok()?;
    Some(MetadataFacts {
        job_state: job.map(|j| j.state.as_str().to_string()),
        collections,
    })
}

/// Await `f`, logging (debug) how long it took: which part of a slow preflight to blame.
async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let t0 = Instant::now();
    let out = f.await;
    debug!(
        part = what,
        seconds = t0.elapsed().as_secs_f64(),
        "preflight: part done"
    );
    out
}

/// Gather every fact. Never fails: what cannot be learned is recorded as such. Both sides
/// at once; on each, the independent parts at once.
pub async fn gather(source: &Client, target: &Client, opts: &Options) -> Facts {
    let (mut src, mut dst) = tokio::join!(reach(source), reach(target));
    let mut facts = Facts {
        source: src.clone(),
        target: dst.clone(),
        selected: Vec::new(),
        capped: false,
        estimate: PreflightEstimate {
            throughput_mbps: opts.throughput(),
            ..Default::default()
        },
        unsupported: Vec::new(),
        oplog: None,
        oplog_error: None,
        occupied: None,
        metadata: None,
    };
    let (src_ok, dst_ok) = (src.reach == Reach::Connected, dst.reach == Reach::Connected);
    let source_side = async {
        if !src_ok {
            return None;
        }
        let t0 = Instant::now();
        let mut sel_probes = Vec::new();
        let mut oplog_probes = Vec::new();
        let oplog = async {
            let (stream, newest) = timed("change stream", probe_change_stream(source)).await;
            let o = timed(
                "oplog",
                oplog_facts(source, newest.as_ref(), &mut oplog_probes),
            )
            .await;
            (stream, o)
        };
        let (sel, (stream, oplog)) = tokio::join!(
            timed("namespaces", list_selection(source, opts, &mut sel_probes)),
            oplog,
        );
        debug!(
            seconds = t0.elapsed().as_secs_f64(),
            "preflight: source facts gathered"
        );
        sel_probes.push(stream);
        sel_probes.extend(oplog_probes);
        Some((sel, sel_probes, oplog))
    };
    let target_side = async {
        if !dst_ok {
            return None;
        }
        let (probes, meta) = tokio::join!(
            timed("target probes", target_probes(target, opts)),
            timed("target metadata", metadata(target)),
        );
        Some((probes, meta))
    };
    let (src_facts, dst_facts) = tokio::join!(source_side, target_side);
    if let Some((sel, probes, oplog)) = src_facts {
        src.probes.extend(probes);
        match oplog {
            Ok(o) => facts.oplog = Some(o),
            Err(e) => facts.oplog_error = Some(e),
        }
        facts.selected = sel.selected;
        facts.capped = sel.capped;
        facts.estimate = sel.estimate;
        facts.unsupported = sel.unsupported;
    }
    if let Some((probes, meta)) = dst_facts {
        dst.probes = probes;
        facts.metadata = meta;
        // Needs the selection: after it.
        facts.occupied = timed(
            "target namespaces",
            occupied(target, &facts.selected, opts, &mut dst.probes),
        )
        .await;
        if facts.capped {
            dst.probes.extend(capped_probe(target).await);
        }
    }
    facts.source = src;
    facts.target = dst;
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connection_status() {
        let d = doc! {"authInfo": {
            "authenticatedUsers": [{"user": "ferry", "db": "admin"}],
            "authenticatedUserRoles": [{"role": "readAnyDatabase", "db": "admin"}],
            "authenticatedUserPrivileges": [
                {"resource": {"cluster": true}, "actions": ["listDatabases"]},
                {"resource": {"db": "", "collection": ""}, "actions": ["find", "changeStream"]},
                {"resource": {"anyResource": true}, "actions": ["collStats"]},
                {"resource": {"db": "", "system_buckets": ""}, "actions": ["find"]},
            ]
        }, "ok": 1};
        let a = parse_auth(&d);
        assert_eq!(a.users, vec!["ferry@admin"]);
        assert_eq!(
            a.roles,
            vec![("readAnyDatabase".to_string(), "admin".to_string())]
        );
        assert_eq!(a.privileges.len(), 4);
        assert_eq!(a.privileges[0].resource, Resource::Cluster);
        assert_eq!(a.privileges[1].resource, Resource::any_normal());
        assert_eq!(a.privileges[2].resource, Resource::AnyResource);
        assert_eq!(a.privileges[3].resource, Resource::Other);
        assert_eq!(parse_auth(&doc! {}), AuthInfo::default());
    }
}
