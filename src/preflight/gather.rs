//! The I/O of the preflight: harmless commands on both sides. Nothing here decides.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::debug;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::Hint;
use mongodb::Client;

use super::checks::{self, MetadataFacts, Occupied, OplogFacts, Topology, Unsupported};
use super::privileges::{AuthInfo, Outcome, Privilege, Probe, Resource};
use super::{Facts, Options, Reach, SideFacts};
use crate::api::PreflightEstimate;
use crate::engine::catalog;

use crate::engine::error::{is_network, mongo_code, Side};
use crate::engine::filter::{is_system_db, META_DB};

/// Find probes run on at most this many selected collections.
const FIND_PROBES: usize = 20;
/// Window over which the source's write rate is measured, seconds.
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
    let dbs = match source.list_database_names().await {
        Ok(d) => {
            probes.push(probe(
                "listDatabases",
                "listDatabases on the cluster",
                Ok(()),
            ));
            d
        }
        Err(e) => {
            probes.push(probe(
                "listDatabases",
                "listDatabases on the cluster",
                Err(e),
            ));
            return sel;
        }
    };
    for db in dbs.iter().filter(|d| !is_system_db(d)) {
        let specs = source
            .database(db)
            .run_cursor_command(doc! {"listCollections": 1})
            .await;
        let specs: Vec<Document> = match specs {
            Ok(c) => match c.try_collect().await {
                Ok(v) => v,
                Err(e) => {
                    probes.push(probe(
                        format!("listCollections on {db}"),
                        format!("listCollections on database {db}"),
                        Err(e),
                    ));
                    continue;
                }
            },
            Err(e) => {
                probes.push(probe(
                    format!("listCollections on {db}"),
                    format!("listCollections on database {db}"),
                    Err(e),
                ));
                continue;
            }
        };
        for spec in specs {
            let name = spec.get_str("name").unwrap_or_default().to_string();
            let ns = format!("{db}.{name}");
            let kind = spec.get_str("type").unwrap_or("collection").to_string();
            let options = spec.get_document("options").cloned().unwrap_or_default();
            if name.starts_with("system.") {
                // `system.views` holds the views (migrated); buckets belong to time series.
                if name != "system.views"
                    && !name.starts_with("system.buckets.")
                    && filter.patterns_match(db, &name)
                {
                    sel.unsupported.push(Unsupported {
                        ns,
                        why: "system collection: skipped".into(),
                    });
                }
                continue;
            }
            if !filter.selected(db, &name) {
                continue;
            }
            if let Some(why) = catalog::unsupported_reason(&kind, &name, &options) {
                sel.unsupported.push(Unsupported {
                    ns,
                    why: format!("{why}: skipped"),
                });
                continue;
            }
            if kind == "view" {
                sel.estimate.views += 1;
                continue;
            }
            sel.capped |= options.get_bool("capped").unwrap_or(false);
            sel.selected.push((db.clone(), name));
        }
    }
    // Size, documents and indexes of each collection; find probes on the first few.
    for (i, (db, coll)) in sel.selected.iter().enumerate() {
        let d = source.database(db);
        match d.run_command(doc! {"collStats": coll}).await {
            Ok(stats) => {
                let mut size = crate::engine::reply::num(stats.get("size"));
                let count = crate::engine::reply::num(stats.get("count"));
                if count > 0 && size == 0 {
                    // No statistics kept: measure.
                    if let Ok((b, _)) = catalog::estimate(source, db, coll).await {
                        size = b;
                    }
                }
                sel.estimate.bytes += size.max(0) as u64;
                sel.estimate.documents += count.max(0) as u64;
            }
            Err(e) => {
                if i < FIND_PROBES || mongo_code(&e) == Some(13) {
                    probes.push(probe(
                        format!("collStats on {db}.{coll}"),
                        format!("collStats on {db}.{coll}"),
                        Err(e),
                    ));
                }
            }
        }
        match catalog::list_indexes(source, Side::Source, db, coll).await {
            Ok(ix) => sel.estimate.indexes += ix.len() as u64,
            Err(e) => {
                if i < FIND_PROBES {
                    probes.push(Probe {
                        op: format!("listIndexes on {db}.{coll}"),
                        privilege: format!("listIndexes on {db}.{coll}"),
                        outcome: if matches!(
                            e,
                            crate::engine::error::EngineError::Unauthorized { .. }
                        ) {
                            Outcome::Unauthorized(e.to_string())
                        } else {
                            Outcome::Failed(e.to_string())
                        },
                    });
                }
            }
        }
        if i < FIND_PROBES {
            let r = d
                .collection::<Document>(coll)
                .find_one(doc! {})
                .projection(doc! {"_id": 1})
                .await
                .map(|_| ());
            if !matches!(outcome(r.clone()), Outcome::Allowed) || i == 0 {
                probes.push(probe(
                    format!("find on {db}.{coll} (limit 1)"),
                    format!("find on {db}.{coll}"),
                    r,
                ));
            }
        }
    }
    sel.estimate.collections = sel.selected.len() as u64;
    sel.estimate.throughput_mbps = opts.throughput();
    sel.estimate.copy_seconds = checks::copy_seconds(sel.estimate.bytes, opts.throughput());
    sel
}

/// Open a cluster-wide change stream and close it again.
async fn probe_change_stream(source: &Client) -> Probe {
    let admin = source.database("admin");
    let r = admin
        .run_command(doc! {
            "aggregate": 1,
            "pipeline": [{"$changeStream": {"allChangesForCluster": true}}],
            "cursor": {"batchSize": 0}
        })
        .await;
    let r = match r {
        Ok(reply) => {
            let id = reply
                .get_document("cursor")
                .ok()
                .and_then(|c| c.get_i64("id").ok())
                .unwrap_or(0);
            if id != 0 {
                let _ = admin
                    .run_command(doc! {"killCursors": "$cmd.aggregate", "cursors": [id]})
                    .await;
            }
            Ok(())
        }
        Err(e) => Err(e),
    };
    probe(
        "aggregate $changeStream (allChangesForCluster) on admin",
        "changeStream + find on every database (any normal resource)",
        r,
    )
}

/// The oplog: oldest entry (also a probe), capacity, fill and write rate.
async fn oplog_facts(source: &Client, probes: &mut Vec<Probe>) -> Result<OplogFacts, String> {
    let local = source.database("local");
    let oplog = local.collection::<Document>("oplog.rs");
    let oldest = oplog
        .find_one(doc! {})
        .hint(Hint::Keys(doc! {"$natural": 1}))
        .projection(doc! {"ts": 1})
        .await;
    let oldest = match oldest {
        Ok(d) => {
            probes.push(probe(
                "find on local.oplog.rs (oldest entry)",
                "find on local.oplog.rs",
                Ok(()),
            ));
            d
        }
        Err(e) => {
            let msg = format!("the source's oplog cannot be read: {e}");
            probes.push(probe(
                "find on local.oplog.rs (oldest entry)",
                "find on local.oplog.rs",
                Err(e),
            ));
            return Err(msg);
        }
    };
    let oldest = oldest
        .and_then(|d| d.get_timestamp("ts").ok())
        .ok_or_else(|| "the source's oplog is empty".to_string())?;
    let now = crate::engine::conn::cluster_time(source, Side::Source)
        .await
        .map(|t| t.time)
        .unwrap_or_else(|_| now_secs());
    let age = f64::from(now.saturating_sub(oldest.time));
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
    let count_based = source
        .database("admin")
        .run_command(doc! {"serverStatus": 1})
        .await
        .map(|s| s.contains_key("secantus"))
        .unwrap_or(false)
        || (count > 0 && used == Some(0));
    let mut facts = OplogFacts {
        age_seconds: age,
        count,
        recent_entries: None,
        recent_span_seconds: f64::from(RECENT_SPAN),
        max_entries: None,
        used_bytes: used,
        max_bytes: None,
    };
    if count_based {
        facts.max_entries = created_size.map(|s| (s / SECANTUS_BYTES_PER_ENTRY).max(0) as u64);
    } else {
        facts.max_bytes = max_size.or(created_size).map(|m| m as u64);
    }
    if age > f64::from(RECENT_SPAN) {
        if let Some((n, span)) = recent_entries(&oplog, now).await {
            facts.recent_entries = Some(n);
            facts.recent_span_seconds = span;
        }
    }
    Ok(facts)
}

/// The newest entries the recent-rate scan reads at most, and the longest it reads.
const RECENT_SCAN_ENTRIES: u64 = 200_000;
const RECENT_SCAN_TIME: Duration = Duration::from_secs(2);

/// The source's recent writes: the newest oplog entries read backwards (their `ts` only) until
/// one is older than `RECENT_SPAN` seconds or the scan's budget is spent. Returns the entries
/// read and the seconds they span. Bounded on purpose: counting the span with a filter reads
/// every entry of the oplog (the whole oplog, 1 MB documents and all: 50 s for 3 GB), and the
/// user waits for the preflight before the start is answered.
async fn recent_entries(oplog: &mongodb::Collection<Document>, now: u32) -> Option<(u64, f64)> {
    let since = now.saturating_sub(RECENT_SPAN);
    let t0 = Instant::now();
    let mut cur = oplog
        .find(doc! {})
        .sort(doc! {"$natural": -1})
        .projection(doc! {"ts": 1, "_id": 0})
        .batch_size(10_000)
        .max_time(RECENT_SCAN_TIME * 2)
        .await
        .ok()?;
    let mut n = 0u64;
    let mut oldest_seen = now;
    let mut crossed = false;
    while let Ok(Some(d)) = cur.try_next().await {
        let Ok(ts) = d.get_timestamp("ts") else {
            continue;
        };
        if ts.time < since {
            crossed = true;
            break;
        }
        n += 1;
        oldest_seen = ts.time;
        if n >= RECENT_SCAN_ENTRIES || t0.elapsed() >= RECENT_SCAN_TIME {
            break;
        }
    }
    if n == 0 && !crossed {
        // Nothing read (the cursor failed): no measurement, not a rate of zero.
        return None;
    }
    Some((
        n,
        checks::scanned_span(now, oldest_seen, crossed, RECENT_SPAN),
    ))
}

/// Create, write, index, modify and drop a scratch collection in the target's `mongoferry`
/// database; list the selected databases.
async fn target_probes(target: &Client, capped: bool) -> Vec<Probe> {
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
    if capped {
        let c = format!("{name}_capped");
        out.push(probe(
            format!("create capped {META_DB}.{c}"),
            format!("convertToCapped on {META_DB}"),
            run(doc! {"create": &c, "capped": true, "size": 4096_i64}).await,
        ));
        let _ = run(doc! {"drop": &c}).await;
    }
    out.push(probe(
        format!("drop {ns}"),
        format!("dropCollection on {META_DB}"),
        run(doc! {"drop": &name}).await,
    ));
    out
}

/// Selected collections that already hold documents on the target.
async fn occupied(
    target: &Client,
    selected: &[(String, String)],
    opts: &Options,
    probes: &mut Vec<Probe>,
) -> Option<Vec<Occupied>> {
    let mut dbs: Vec<&String> = selected.iter().map(|(d, _)| d).collect();
    dbs.sort();
    dbs.dedup();
    let mut out = Vec::new();
    let mut complete = true;
    for db in dbs {
        let names = match target.database(db).list_collection_names().await {
            Ok(n) => n,
            Err(e) => {
                probes.push(probe(
                    format!("listCollections on target {db}"),
                    format!("listCollections on database {db}"),
                    Err(e),
                ));
                complete = false;
                continue;
            }
        };
        for (_, coll) in selected
            .iter()
            .filter(|(d, c)| d == db && names.contains(c))
        {
            let n = target
                .database(db)
                .collection::<Document>(coll)
                .estimated_document_count()
                .await
                .unwrap_or(0);
            if n > 0 {
                let ns = format!("{db}.{coll}");
                out.push(Occupied {
                    owned: opts.owned.contains(&ns),
                    ns,
                    documents: n,
                });
            }
        }
    }
    complete.then_some(out)
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

/// Gather every fact. Never fails: what cannot be learned is recorded as such.
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
    if src.reach == Reach::Connected {
        // The three are independent; at once, since each can take seconds on a large source
        // (on SecantusDB `collStats` reads the whole collection).
        let t0 = Instant::now();
        let mut sel_probes = Vec::new();
        let mut oplog_probes = Vec::new();
        let (sel, stream, oplog) = tokio::join!(
            timed("namespaces", list_selection(source, opts, &mut sel_probes)),
            timed("change stream", probe_change_stream(source)),
            timed("oplog", oplog_facts(source, &mut oplog_probes)),
        );
        debug!(
            seconds = t0.elapsed().as_secs_f64(),
            "preflight: source facts gathered"
        );
        src.probes.extend(sel_probes);
        src.probes.push(stream);
        src.probes.extend(oplog_probes);
        match oplog {
            Ok(o) => facts.oplog = Some(o),
            Err(e) => facts.oplog_error = Some(e),
        }
        facts.selected = sel.selected;
        facts.capped = sel.capped;
        facts.estimate = sel.estimate;
        facts.unsupported = sel.unsupported;
    }
    if dst.reach == Reach::Connected {
        dst.probes = timed("target probes", target_probes(target, facts.capped)).await;
        facts.occupied = timed(
            "target namespaces",
            occupied(target, &facts.selected, opts, &mut dst.probes),
        )
        .await;
        facts.metadata = timed("target metadata", metadata(target)).await;
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
