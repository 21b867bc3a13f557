//! Privileges: what each side needs (the minimal roles of docs/permissions.md), matching the
//! privileges a server lists in `connectionStatus`, and turning probe outcomes into a check.
//! Pure.

use crate::api::{CheckStatus, PreflightCheck};

/// Documented minimal roles (all on `admin`).
pub const SOURCE_ROLES: &[&str] = &["readAnyDatabase", "clusterMonitor"];
pub const TARGET_ROLES: &[&str] = &["readWriteAnyDatabase", "dbAdminAnyDatabase"];

/// A resource as `connectionStatus` and the role tables name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Cluster,
    AnyResource,
    /// `db` and/or `collection` may be empty (= any).
    Ns {
        db: String,
        collection: String,
    },
    /// `{db, system_buckets}` patterns: never needed by the engine; kept to ignore them.
    Other,
}

impl Resource {
    pub fn ns(db: &str, coll: &str) -> Self {
        Resource::Ns {
            db: db.to_string(),
            collection: coll.to_string(),
        }
    }

    /// "Any normal resource" (`{db: "", collection: ""}`).
    pub fn any_normal() -> Self {
        Resource::ns("", "")
    }

    pub fn describe(&self) -> String {
        match self {
            Resource::Cluster => "the cluster".into(),
            Resource::AnyResource => "any resource".into(),
            Resource::Ns { db, collection } => match (db.is_empty(), collection.is_empty()) {
                (true, true) => "every database (any normal resource)".into(),
                (true, false) => format!("collection {collection} of every database"),
                (false, true) => format!("database {db}"),
                (false, false) => format!("{db}.{collection}"),
            },
            Resource::Other => "other".into(),
        }
    }
}

/// One privilege the server lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privilege {
    pub resource: Resource,
    pub actions: Vec<String>,
}

/// One privilege the engine needs on one side, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub resource: Resource,
    pub actions: Vec<&'static str>,
    pub why: &'static str,
}

fn special_db(db: &str) -> bool {
    db == "local" || db == "config"
}

/// Whether a listed privilege's resource pattern covers a needed resource (mongod's rules:
/// "any normal resource" leaves out `local`, `config` and `system.*` collections; a database
/// pattern leaves out its `system.*` collections).
pub fn covers(pattern: &Resource, target: &Resource) -> bool {
    match (pattern, target) {
        (Resource::AnyResource, _) => true,
        (Resource::Cluster, Resource::Cluster) => true,
        (
            Resource::Ns {
                db: pd,
                collection: pc,
            },
            Resource::Ns { db, collection },
        ) => {
            let system = collection.starts_with("system.");
            match (pd.is_empty(), pc.is_empty()) {
                (true, true) => {
                    if db.is_empty() {
                        // "Any normal resource" covers itself, not "a collection anywhere".
                        collection.is_empty()
                    } else {
                        !special_db(db) && !system
                    }
                }
                (true, false) => pc == collection,
                (false, true) => pd == db && !system,
                (false, false) => pd == db && pc == collection,
            }
        }
        _ => false,
    }
}

/// The actions of `need` that no listed privilege grants.
pub fn missing_actions(held: &[Privilege], need: &Need) -> Vec<&'static str> {
    need.actions
        .iter()
        .copied()
        .filter(|a| {
            !held.iter().any(|p| {
                covers(&p.resource, &need.resource)
                    && p.actions.iter().any(|h| h == a || h == "anyAction")
            })
        })
        .collect()
}

/// What the source user needs for the given selection (`(db, coll)` pairs).
pub fn source_needs(selected: &[(String, String)]) -> Vec<Need> {
    let mut out = vec![
        Need {
            resource: Resource::Cluster,
            actions: vec!["listDatabases"],
            why: "list the databases to select from",
        },
        Need {
            resource: Resource::any_normal(),
            actions: vec!["changeStream", "find"],
            why: "open the cluster-wide change stream",
        },
        Need {
            resource: Resource::ns("local", "oplog.rs"),
            actions: vec!["find"],
            why: "read the oplog's oldest entry (resume point and oplog window)",
        },
    ];
    let mut dbs: Vec<&String> = selected.iter().map(|(d, _)| d).collect();
    dbs.dedup();
    for db in dbs {
        out.push(Need {
            resource: Resource::ns(db, ""),
            actions: vec!["listCollections"],
            why: "list the selected collections",
        });
    }
    for (db, coll) in selected {
        out.push(Need {
            resource: Resource::ns(db, coll),
            actions: vec!["find", "listIndexes", "collStats"],
            why: "copy the collection, its indexes and its size",
        });
    }
    out
}

/// What the target user needs for the given selected databases.
pub fn target_needs(dbs: &[String], capped: bool) -> Vec<Need> {
    let mut out = vec![Need {
        resource: Resource::ns(crate::engine::filter::META_DB, ""),
        actions: vec![
            "find",
            "insert",
            "update",
            "remove",
            "createCollection",
            "createIndex",
            "dropCollection",
            "listCollections",
        ],
        why: "keep the job's checkpoint in the mongoferry database",
    }];
    for db in dbs {
        let mut actions = vec![
            "find",
            "insert",
            "update",
            "remove",
            "bypassDocumentValidation",
            "createCollection",
            "dropCollection",
            "createIndex",
            "dropIndex",
            "collMod",
            "listCollections",
            "listIndexes",
        ];
        if capped {
            actions.push("convertToCapped");
        }
        out.push(Need {
            resource: Resource::ns(db, ""),
            actions,
            why: "create, fill and index the migrated collections",
        });
    }
    out
}

/// How a probe of one operation the engine needs went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// Error 13: the privilege is missing.
    Unauthorized(String),
    /// Another error: the operation could not be proven.
    Failed(String),
}

/// A harmless command standing for one operation of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What was run, e.g. `find on local.oplog.rs`.
    pub op: String,
    /// The privilege it proves, e.g. `find on local.oplog.rs`.
    pub privilege: String,
    pub outcome: Outcome,
}

/// What `connectionStatus` says about the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub users: Vec<String>,
    pub roles: Vec<(String, String)>,
    pub privileges: Vec<Privilege>,
}

/// The privileges check of one side. Pure.
pub fn privileges_check(
    side: &str,
    auth: Option<&AuthInfo>,
    needs: &[Need],
    probes: &[Probe],
) -> PreflightCheck {
    let name = format!("{side}.privileges");
    let roles_doc = if side == "source" {
        SOURCE_ROLES
    } else {
        TARGET_ROLES
    };
    let fix = || {
        Some(format!(
            "grant the {side} user the roles {} (docs/permissions.md), e.g. \
             db.getSiblingDB(\"admin\").grantRolesToUser(\"<user>\", [{}])",
            roles_doc
                .iter()
                .map(|r| format!("{r}@admin"))
                .collect::<Vec<_>>()
                .join(" + "),
            roles_doc
                .iter()
                .map(|r| format!("{{role: \"{r}\", db: \"admin\"}}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    let mut missing: Vec<String> = Vec::new();
    // 1. The listed privileges, when the server lists any.
    if let Some(a) = auth.filter(|a| !a.privileges.is_empty()) {
        for n in needs {
            let m = missing_actions(&a.privileges, n);
            if !m.is_empty() {
                missing.push(format!(
                    "{} on {} (to {})",
                    m.join(", "),
                    n.resource.describe(),
                    n.why
                ));
            }
        }
    }
    // 2. The probes: error 13 names the privilege.
    for p in probes {
        if let Outcome::Unauthorized(_) = p.outcome {
            let line = format!("{} (refused: {})", p.privilege, p.op);
            if !missing.contains(&line) {
                missing.push(line);
            }
        }
    }
    let who = match auth {
        Some(a) if !a.users.is_empty() => {
            let roles: Vec<String> = a.roles.iter().map(|(r, d)| format!("{r}@{d}")).collect();
            format!(
                "user {} (roles: {})",
                a.users.join(", "),
                if roles.is_empty() {
                    "none".to_string()
                } else {
                    roles.join(", ")
                }
            )
        }
        Some(_) => "no authenticated user (the server does not require authentication)".into(),
        None => "user unknown (connectionStatus failed)".into(),
    };
    if !missing.is_empty() {
        return PreflightCheck {
            name,
            status: CheckStatus::Fail,
            reason: format!("{who} lacks: {}", missing.join("; ")),
            fix: fix(),
        };
    }
    let failed: Vec<String> = probes
        .iter()
        .filter_map(|p| match &p.outcome {
            Outcome::Failed(e) => Some(format!("{}: {e}", p.op)),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        return PreflightCheck {
            name,
            status: CheckStatus::Warn,
            reason: format!(
                "{who}: could not verify {} operation(s): {}",
                failed.len(),
                failed.join("; ")
            ),
            fix: Some("check the server log for these errors".into()),
        };
    }
    let how = match auth {
        Some(a) if !a.privileges.is_empty() => format!(
            "its listed privileges cover all {} needs and {} probes succeeded",
            needs.len(),
            probes.len()
        ),
        _ => format!(
            "the server lists no privileges; all {} probes of the operations the engine runs succeeded",
            probes.len()
        ),
    };
    PreflightCheck {
        name,
        status: CheckStatus::Pass,
        reason: format!("{who}: {how}"),
        fix: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(resource: Resource, actions: &[&str]) -> Privilege {
        Privilege {
            resource,
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn any_normal_leaves_out_local_config_and_system() {
        let any = Resource::any_normal();
        assert!(covers(&any, &Resource::ns("app", "c")));
        assert!(covers(&any, &Resource::ns("app", "")));
        assert!(covers(&any, &Resource::any_normal()));
        assert!(!covers(&any, &Resource::ns("local", "oplog.rs")));
        assert!(!covers(&any, &Resource::ns("config", "x")));
        assert!(!covers(&any, &Resource::ns("app", "system.js")));
        assert!(!covers(&any, &Resource::Cluster));
    }

    #[test]
    fn database_and_collection_patterns() {
        let db = Resource::ns("app", "");
        assert!(covers(&db, &Resource::ns("app", "c")));
        assert!(!covers(&db, &Resource::ns("app", "system.profile")));
        assert!(!covers(&db, &Resource::ns("other", "c")));
        // A database pattern does not cover "any normal resource".
        assert!(!covers(&db, &Resource::any_normal()));
        let coll = Resource::ns("", "c");
        assert!(covers(&coll, &Resource::ns("local", "c")));
        assert!(!covers(&coll, &Resource::ns("app", "d")));
        let exact = Resource::ns("local", "oplog.rs");
        assert!(covers(&exact, &Resource::ns("local", "oplog.rs")));
        assert!(covers(&Resource::AnyResource, &Resource::Cluster));
        assert!(covers(&Resource::Cluster, &Resource::Cluster));
        assert!(!covers(&Resource::Cluster, &Resource::ns("a", "b")));
    }

    #[test]
    fn documented_source_roles_cover_the_source_needs() {
        // readAnyDatabase + clusterMonitor, as mongod lists them (the parts that matter).
        let held = vec![
            p(
                Resource::any_normal(),
                &[
                    "changeStream",
                    "collStats",
                    "find",
                    "listCollections",
                    "listIndexes",
                ],
            ),
            p(Resource::Cluster, &["listDatabases", "serverStatus"]),
            p(Resource::ns("local", ""), &["find", "collStats"]),
        ];
        let needs = source_needs(&[("app".into(), "c".into())]);
        for n in &needs {
            assert!(missing_actions(&held, n).is_empty(), "{n:?}");
        }
        // Without clusterMonitor: the oplog is out of reach.
        let without: Vec<Privilege> = held[..2].to_vec();
        let m: Vec<_> = needs
            .iter()
            .filter(|n| !missing_actions(&without, n).is_empty())
            .collect();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].resource, Resource::ns("local", "oplog.rs"));
    }

    #[test]
    fn db_scoped_read_cannot_open_a_cluster_stream() {
        let held = vec![p(
            Resource::ns("app", ""),
            &[
                "changeStream",
                "find",
                "listCollections",
                "listIndexes",
                "collStats",
            ],
        )];
        let needs = source_needs(&[("app".into(), "c".into())]);
        let stream = &needs[1];
        assert_eq!(missing_actions(&held, stream), vec!["changeStream", "find"]);
    }

    #[test]
    fn target_needs_collmod_and_bypass() {
        let rw_only = vec![p(
            Resource::any_normal(),
            &[
                "find",
                "insert",
                "update",
                "remove",
                "createCollection",
                "dropCollection",
                "createIndex",
                "dropIndex",
                "listCollections",
                "listIndexes",
                "convertToCapped",
            ],
        )];
        let needs = target_needs(&["app".into()], true);
        assert_eq!(
            missing_actions(&rw_only, &needs[1]),
            vec!["bypassDocumentValidation", "collMod"]
        );
        assert!(missing_actions(&rw_only, &needs[0]).is_empty());
    }

    fn probe(op: &str, o: Outcome) -> Probe {
        Probe {
            op: op.into(),
            privilege: format!("priv of {op}"),
            outcome: o,
        }
    }

    #[test]
    fn probe_refusals_fail_and_name_the_privilege() {
        let auth = AuthInfo {
            users: vec!["u@admin".into()],
            roles: vec![("readAnyDatabase".into(), "admin".into())],
            privileges: vec![],
        };
        let c = privileges_check(
            "source",
            Some(&auth),
            &[],
            &[
                probe("listDatabases", Outcome::Allowed),
                probe("find local.oplog.rs", Outcome::Unauthorized("13".into())),
            ],
        );
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(
            c.reason.contains("priv of find local.oplog.rs"),
            "{}",
            c.reason
        );
        assert!(c.reason.contains("readAnyDatabase@admin"));
        assert!(c.fix.as_deref().unwrap_or("").contains("clusterMonitor"));
    }

    #[test]
    fn listed_privileges_fail_even_when_probes_pass() {
        let auth = AuthInfo {
            users: vec!["u@admin".into()],
            roles: vec![],
            privileges: vec![p(Resource::Cluster, &["listDatabases"])],
        };
        let needs = source_needs(&[]);
        let c = privileges_check("source", Some(&auth), &needs, &[]);
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(c.reason.contains("changeStream, find on every database"));
    }

    #[test]
    fn other_probe_errors_warn_and_success_passes() {
        let c = privileges_check(
            "target",
            Some(&AuthInfo::default()),
            &[],
            &[probe("collMod", Outcome::Failed("boom".into()))],
        );
        assert_eq!(c.status, CheckStatus::Warn);
        let c = privileges_check(
            "target",
            Some(&AuthInfo::default()),
            &[],
            &[probe("collMod", Outcome::Allowed)],
        );
        assert_eq!(c.status, CheckStatus::Pass);
        assert!(c.reason.contains("lists no privileges"));
    }
}
