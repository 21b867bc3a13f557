//! Which migration a job's worker serves (pure): its own (a forward job), or, for a job with
//! `spec.reverseOf`, the finalized migration it reverses.
//!
//! A reverse's worker is started exactly like the migration's worker was (same `--source`,
//! `--target` and credentials, the migration's `--job-id`): the worker finds the finalized
//! migration on the new cluster, and `POST /reverse` starts the reverse, whose job lives on the
//! old source under `<migration job id>:reverse`. The migration's own worker pod stops first
//! (the reverse's worker takes the migration's lease on the new cluster to read it).

use kube::ResourceExt;

use crate::api::crd::{Endpoint, MigrationJob};

/// Reason of the Ready condition (and of the Warning Event) while the job a reverse names is
/// not finalized.
pub const NOT_FINALIZED: &str = "ReverseOfNotFinalized";
pub const NOT_FOUND: &str = "ReverseOfNotFound";
pub const OF_A_REVERSE: &str = "ReverseOfReverse";
pub const TAKEN: &str = "ReverseOfTaken";

/// The migration a worker pod serves: endpoints as the migration named them (source: the old
/// source, target: the new cluster) and the migration's identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    pub source: Endpoint,
    pub target: Endpoint,
    /// The migration's job id (its MigrationJob's UID).
    pub job_id: String,
    /// `namespace/name` of the migration's MigrationJob.
    pub job_name: String,
}

/// Why a reverse cannot start yet (or at all).
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    pub reason: &'static str,
    pub message: String,
}

fn key(j: &MigrationJob) -> String {
    format!("{}/{}", j.namespace().unwrap_or_default(), j.name_any())
}

/// The migration of a forward job: its own endpoints and UID (`None` without them, which the
/// CRD's rules refuse).
pub fn own(job: &MigrationJob) -> Option<Migration> {
    Some(Migration {
        source: job.spec.source.clone()?,
        target: job.spec.target.clone()?,
        job_id: job.metadata.uid.clone().unwrap_or_default(),
        job_name: key(job),
    })
}

/// The migration `job` serves, given the job its `spec.reverseOf` names (as the cache holds
/// it) and the oldest reverse of that job (`namespace/name`; one reverse per migration). A
/// forward job serves its own.
pub fn resolve(
    job: &MigrationJob,
    referenced: Option<&MigrationJob>,
    oldest_reverse: Option<&str>,
) -> Result<Migration, Blocked> {
    let Some(name) = job.spec.reverse_of_name() else {
        return own(job).ok_or_else(|| Blocked {
            reason: "SpecIncomplete",
            message: "spec.source and spec.target are required (unless spec.reverseOf is set)"
                .into(),
        });
    };
    let ns = job.namespace().unwrap_or_default();
    let Some(fwd) = referenced else {
        return Err(Blocked {
            reason: NOT_FOUND,
            message: format!(
                "spec.reverseOf names MigrationJob {ns}/{name}, which does not exist: a reverse \
                 rolls back a finalized MigrationJob of its own namespace; correct \
                 spec.reverseOf.name (create a new MigrationJob: it is immutable), or do not \
                 delete the MigrationJob a reverse rolls back"
            ),
        });
    };
    if fwd.spec.reverse_of.is_some() {
        return Err(Blocked {
            reason: OF_A_REVERSE,
            message: format!(
                "MigrationJob {ns}/{name} is itself a reverse, and a reverse cannot be \
                 reversed: to migrate forward again, create a new MigrationJob with \
                 spec.source and spec.target"
            ),
        });
    }
    if let Some(other) = oldest_reverse.filter(|o| *o != key(job)) {
        return Err(Blocked {
            reason: TAKEN,
            message: format!(
                "MigrationJob {ns}/{name} is already reversed by MigrationJob {other}: one \
                 reverse per migration; delete this MigrationJob (or the other one, then this \
                 one takes the reverse over from its checkpoint)"
            ),
        });
    }
    let state = fwd
        .status
        .as_ref()
        .and_then(|s| s.state.clone())
        .unwrap_or_else(|| "pending".into());
    if state != "finalized" {
        return Err(Blocked {
            reason: NOT_FINALIZED,
            message: format!(
                "MigrationJob {ns}/{name} is not finalized (state: {state}): a reverse starts \
                 from a finalized migration. Set its spec.desiredState to finalized and wait \
                 for its Finalized condition (kubectl wait --for=condition=Finalized \
                 migrationjob/{name}); this reverse then starts on its own"
            ),
        });
    }
    own(fwd).ok_or_else(|| Blocked {
        reason: NOT_FOUND,
        message: format!("MigrationJob {ns}/{name} names no source or target"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd::MigrationJobStatus;

    fn job(name: &str, uid: &str, spec: serde_json::Value, state: Option<&str>) -> MigrationJob {
        let mut j = MigrationJob::new(name, serde_json::from_value(spec).expect("spec"));
        j.metadata.namespace = Some("shop".into());
        j.metadata.uid = Some(uid.into());
        j.status = state.map(|s| MigrationJobStatus {
            state: Some(s.into()),
            ..Default::default()
        });
        j
    }

    fn forward(state: Option<&str>) -> MigrationJob {
        job(
            "mig",
            "uid-1",
            serde_json::json!({
                "source": {"uri": "mongodb://old:1", "credentialsSecretRef": {"name": "old-creds"}},
                "target": {"uri": "mongodb://new:1"},
                "desiredState": "finalized"
            }),
            state,
        )
    }

    fn reverse() -> MigrationJob {
        job(
            "back",
            "uid-2",
            serde_json::json!({"reverseOf": {"name": "mig"}}),
            None,
        )
    }

    #[test]
    fn a_forward_job_serves_its_own_migration() {
        let m = resolve(&forward(None), None, None).expect("own");
        assert_eq!(
            (m.source.uri.as_str(), m.target.uri.as_str()),
            ("mongodb://old:1", "mongodb://new:1")
        );
        assert_eq!(
            (m.job_id.as_str(), m.job_name.as_str()),
            ("uid-1", "shop/mig")
        );
    }

    #[test]
    fn a_reverse_serves_the_finalized_migration_it_names() {
        let m = resolve(
            &reverse(),
            Some(&forward(Some("finalized"))),
            Some("shop/back"),
        )
        .expect("resolved");
        assert_eq!(
            m.source.uri, "mongodb://old:1",
            "the worker keeps the migration's roles"
        );
        assert_eq!(m.job_id, "uid-1", "the migration's job id");
        assert_eq!(
            m.source.credentials_secret_ref.map(|c| c.name).as_deref(),
            Some("old-creds")
        );
    }

    #[test]
    fn a_reverse_is_refused_until_the_migration_is_finalized() {
        let b = resolve(&reverse(), Some(&forward(Some("running"))), None).expect_err("refused");
        assert_eq!(b.reason, NOT_FINALIZED);
        assert!(
            b.message
                .contains("shop/mig is not finalized (state: running)")
                && b.message.contains("desiredState to finalized"),
            "{}",
            b.message
        );
        let b = resolve(&reverse(), Some(&forward(None)), None).expect_err("refused");
        assert!(b.message.contains("(state: pending)"), "{}", b.message);
        let b = resolve(&reverse(), None, None).expect_err("refused");
        assert_eq!(b.reason, NOT_FOUND);
        assert!(
            b.message.contains("shop/mig, which does not exist"),
            "{}",
            b.message
        );
        let mut of_reverse = reverse();
        of_reverse.status = Some(MigrationJobStatus {
            state: Some("finalized".into()),
            ..Default::default()
        });
        let b = resolve(&reverse(), Some(&of_reverse), None).expect_err("refused");
        assert_eq!(b.reason, OF_A_REVERSE);
        let b = resolve(
            &reverse(),
            Some(&forward(Some("finalized"))),
            Some("shop/first"),
        )
        .expect_err("one reverse per migration");
        assert_eq!(b.reason, TAKEN);
        assert!(
            b.message
                .contains("already reversed by MigrationJob shop/first"),
            "{}",
            b.message
        );
    }
}
