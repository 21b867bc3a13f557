//! `mongoferry operator check`: is this installation able to work? Run in the cluster under
//! the operator's ServiceAccount (the chart's `helm test` Pod does), it confirms that
//! the API server serves MigrationJobs, that they can be listed in every watched namespace,
//! and — with SelfSubjectAccessReviews — that every permission the operator uses is granted.
//!
//! The list of permissions and the report are pure; only [`run`] talks to the API server.

use std::fmt::Write as _;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde::Serialize;

use crate::api::crd::MigrationJob;

use super::error::{Error, Result};

pub const GROUP: &str = "mongoferry.io";
pub const VERSION: &str = "v1alpha1";
pub const PLURAL: &str = "migrationjobs";

/// One permission the operator uses: `verb` on `group/resource[/subresource]` in `namespace`
/// (None: all namespaces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Permission {
    pub namespace: Option<String>,
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    /// One object's name, for rules limited by `resourceNames`.
    pub name: Option<String>,
    pub verb: &'static str,
}

impl Permission {
    /// `kubectl auth can-i` style: `list migrationjobs.mongoferry.io -n shop`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.verb, self.resource);
        if let Some(sub) = self.subresource {
            let _ = write!(s, "/{sub}");
        }
        if !self.group.is_empty() {
            let _ = write!(s, ".{}", self.group);
        }
        if let Some(name) = &self.name {
            let _ = write!(s, "/{name}");
        }
        match &self.namespace {
            Some(ns) => {
                let _ = write!(s, " -n {ns}");
            }
            None => s.push_str(" --all-namespaces"),
        }
        s
    }
}

/// What the operator does with each resource of a watched namespace (see src/operator/:
/// observe, apply, status, the controller's watches and the event recorder).
const PER_NAMESPACE: &[(&str, &str, Option<&str>, &[&str])] = &[
    (GROUP, PLURAL, None, &["get", "list", "watch", "patch"]),
    (GROUP, PLURAL, Some("status"), &["patch"]),
    // Owner references with blockOwnerDeletion need it where the admission plugin
    // OwnerReferencesPermissionEnforcement is on.
    (GROUP, PLURAL, Some("finalizers"), &["update"]),
    (
        "",
        "pods",
        None,
        &["get", "list", "watch", "create", "delete"],
    ),
    ("", "secrets", None, &["get", "list", "watch", "create"]),
    ("events.k8s.io", "events", None, &["create", "patch"]),
];

/// The leader Lease: kube-lease-manager creates it (any name: `create` cannot be limited by
/// `resourceNames`), then reads and patches that one Lease.
const LEASE_GROUP: &str = "coordination.k8s.io";
const LEASE_VERBS: &[(&str, bool)] = &[("create", false), ("get", true), ("patch", true)];

/// Every permission the operator needs for these namespaces (empty: all namespaces) and,
/// with leader election, for the Lease `lease_name` in `lease_namespace`.
pub fn required_permissions(
    namespaces: &[String],
    lease_namespace: Option<&str>,
    lease_name: &str,
) -> Vec<Permission> {
    let mut out = Vec::new();
    for scope in super::scopes(namespaces) {
        for (group, resource, subresource, verbs) in PER_NAMESPACE {
            for verb in verbs.iter() {
                out.push(Permission {
                    namespace: scope.clone(),
                    group,
                    resource,
                    subresource: *subresource,
                    name: None,
                    verb,
                });
            }
        }
    }
    if let Some(ns) = lease_namespace.map(str::trim).filter(|n| !n.is_empty()) {
        for (verb, named) in LEASE_VERBS {
            out.push(Permission {
                namespace: Some(ns.to_string()),
                group: LEASE_GROUP,
                resource: "leases",
                subresource: None,
                name: named.then(|| lease_name.to_string()),
                verb,
            });
        }
    }
    out
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Report {
        Report {
            ok: !checks.is_empty() && checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// One line per check, then a summary line.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for c in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            let _ = write!(s, "{mark} {}", c.name);
            if !c.detail.is_empty() {
                let _ = write!(s, ": {}", c.detail);
            }
            s.push('\n');
        }
        let failed = self.checks.iter().filter(|c| !c.ok).count();
        if self.ok {
            let _ = writeln!(s, "all {} checks passed", self.checks.len());
        } else {
            let _ = writeln!(s, "{failed} of {} checks failed", self.checks.len());
        }
        s
    }
}

/// What to check (the CLI builds it from `mongoferry operator check`'s flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// Namespaces the operator watches (empty: all namespaces).
    pub namespaces: Vec<String>,
    /// Namespace of the leader Lease; its permissions are checked when given.
    pub lease_namespace: Option<String>,
    /// Name of the leader Lease.
    pub lease_name: String,
}

/// Run every check with the in-cluster (or KUBECONFIG) credentials.
pub async fn run(args: &CheckOptions) -> Result<Report> {
    let client = Client::try_default()
        .await
        .map_err(|e| Error::Connect(e.to_string()))?;
    let mut checks = vec![served(&client).await];
    for scope in super::scopes(&args.namespaces) {
        checks.push(listable(&client, scope.as_deref()).await);
    }
    let lease_ns = args.lease_namespace.as_deref();
    for p in required_permissions(&args.namespaces, lease_ns, &args.lease_name) {
        checks.push(allowed(&client, &p).await);
    }
    Ok(Report::new(checks))
}

async fn served(client: &Client) -> Check {
    let name = format!("the API server serves {PLURAL}.{GROUP}/{VERSION}");
    match client
        .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
        .await
    {
        Ok(list) if list.resources.iter().any(|r| r.name == PLURAL) => Check {
            name,
            ok: true,
            detail: String::new(),
        },
        Ok(_) => Check {
            name,
            ok: false,
            detail: format!("{GROUP}/{VERSION} has no {PLURAL}; install the CRD"),
        },
        Err(e) => Check {
            name,
            ok: false,
            detail: format!("{e}; is the CRD installed (crds/)?"),
        },
    }
}

async fn listable(client: &Client, ns: Option<&str>) -> Check {
    let (api, name): (Api<MigrationJob>, String) = match ns {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            format!("list MigrationJobs in namespace {ns}"),
        ),
        None => (
            Api::all(client.clone()),
            "list MigrationJobs in all namespaces".to_string(),
        ),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Check {
            name,
            ok: true,
            detail: String::new(),
        },
        Err(e) => Check {
            name,
            ok: false,
            detail: e.to_string(),
        },
    }
}

async fn allowed(client: &Client, p: &Permission) -> Check {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: p.namespace.clone(),
                group: Some(p.group.to_string()),
                resource: Some(p.resource.to_string()),
                subresource: p.subresource.map(str::to_string),
                name: p.name.clone(),
                verb: Some(p.verb.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let name = format!("can {}", p.describe());
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    match api.create(&PostParams::default(), &review).await {
        Ok(r) => {
            let st = r.status.unwrap_or_default();
            Check {
                name,
                ok: st.allowed,
                detail: if st.allowed {
                    String::new()
                } else {
                    let why = st.reason.unwrap_or_default();
                    if why.is_empty() {
                        "denied by RBAC".to_string()
                    } else {
                        format!("denied: {why}")
                    }
                },
            }
        }
        Err(e) => Check {
            name,
            ok: false,
            detail: format!("cannot ask the API server: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_per_namespace_and_for_the_lease() {
        let p = required_permissions(&["shop".into(), "billing".into()], Some("ops"), "lead");
        let per_ns: usize = PER_NAMESPACE.iter().map(|(_, _, _, v)| v.len()).sum();
        assert_eq!(p.len(), 2 * per_ns + 3);
        let described: Vec<String> = p.iter().map(Permission::describe).collect();
        for needle in [
            "list migrationjobs.mongoferry.io -n shop",
            "patch migrationjobs/status.mongoferry.io -n billing",
            "create pods -n shop",
            "create events.events.k8s.io -n billing",
            "create leases.coordination.k8s.io -n ops",
            "patch leases.coordination.k8s.io/lead -n ops",
        ] {
            assert!(
                described.iter().any(|d| d == needle),
                "{needle} missing in {described:#?}"
            );
        }
        assert!(!described
            .iter()
            .any(|d| d.contains("leases") && !d.ends_with("-n ops")));
    }

    #[test]
    fn all_namespaces_without_lease() {
        let p = required_permissions(&[], None, "lead");
        assert!(p.iter().all(|p| p.namespace.is_none()));
        assert!(p.iter().all(|p| p.resource != "leases"));
        assert_eq!(
            p[0].describe(),
            "get migrationjobs.mongoferry.io --all-namespaces"
        );
        assert!(required_permissions(&[], Some(" "), "lead")
            .iter()
            .all(|p| p.resource != "leases"));
    }

    #[test]
    fn report_passes_only_when_every_check_does() {
        let ok = |n: &str| Check {
            name: n.into(),
            ok: true,
            detail: String::new(),
        };
        let r = Report::new(vec![ok("a"), ok("b")]);
        assert!(r.ok);
        assert_eq!(r.render(), "ok   a\nok   b\nall 2 checks passed\n");
        let r = Report::new(vec![
            ok("a"),
            Check {
                name: "can create pods -n x".into(),
                ok: false,
                detail: "denied by RBAC".into(),
            },
        ]);
        assert!(!r.ok);
        assert!(r
            .render()
            .contains("FAIL can create pods -n x: denied by RBAC\n1 of 2 checks failed"));
        assert!(!Report::new(vec![]).ok, "no check is not a pass");
    }
}
