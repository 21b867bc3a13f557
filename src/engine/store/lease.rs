//! The job lease: which worker process may run a migration on this target, and which job the
//! target belongs to.
//!
//! The lease is one document in the target's `mongoferry.checkpoint` collection. It names the
//! owning job (the MigrationJob UID through the operator, `--job-id` standalone), the holding
//! process (a random incarnation id, never host + PID: in a pod both repeat), and a renewal
//! counter `seq`. A contender never compares clocks with the holder: it watches `seq` and
//! takes over only after seeing it unchanged for the holder's TTL on its own monotonic clock,
//! or at once after an explicit release. Every change is a compare-and-set on
//! (`holder`, `seq`), so two contenders cannot both win.
//!
//! Owning the lease is what lets a worker *start*; what keeps a deposed worker from *writing*
//! is the fence (see `fence.rs`), which the new holder raises right after taking the lease.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::{Collection, Database};

use super::super::error::{mongo_code, EngineError, MongoContext, Result, Side};

pub const LEASE_ID: &str = "lease";
/// A lease not renewed for this long (on the contender's own clock) is free. The default;
/// `--lease-ttl` sets it per worker, and the lease records it, so a contender always waits
/// the holder's own TTL.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// The shortest TTL a worker accepts: below it, a busy machine's scheduling delays come close
/// to the write window.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(3);

/// Who a worker is: the job it serves and this process's incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The job: a MigrationJob UID, or `--job-id` for a standalone worker.
    pub job_id: String,
    /// A human name of the job (`namespace/name`), for messages.
    pub job_name: String,
    /// This process: random, new at every start.
    pub incarnation: String,
    /// Host and PID, for people reading the lease.
    pub host: String,
    /// How long this worker's lease lasts unrenewed (`--lease-ttl`).
    pub ttl: Duration,
}

/// The job id of a worker started without `--job-id`.
pub const STANDALONE_JOB: &str = "standalone";

impl Identity {
    pub fn new(job_id: Option<String>, job_name: Option<String>) -> Self {
        let job_id = job_id
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| STANDALONE_JOB.into());
        let job_name = job_name
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| job_id.clone());
        let incarnation = format!("{:032x}", rand::random::<u128>());
        let host = format!("{} pid {}", this_host(), std::process::id());
        Identity {
            job_id,
            job_name,
            incarnation,
            host,
            ttl: LEASE_TTL,
        }
    }

    /// The same worker with another lease TTL (at least `MIN_LEASE_TTL`).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(MIN_LEASE_TTL);
        self
    }

    /// How often the holder renews: five times per TTL.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 5
    }

    /// How long after sending a successful renewal the holder may still start a write batch:
    /// half the TTL, so a batch started at the last moment still has half a TTL to reach the
    /// server before any contender can take over.
    pub fn write_window(&self) -> Duration {
        self.ttl / 2
    }
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into())
}

/// The lease document as read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LeaseDoc {
    pub job_id: Option<String>,
    pub job_name: Option<String>,
    /// `None` once released (or never held).
    pub holder: Option<String>,
    pub holder_host: String,
    /// Renewal counter; `None` in a lease written by an older mongoferry.
    pub seq: Option<i64>,
    pub ttl_ms: Option<i64>,
    pub released: bool,
    pub renewed_at: Option<DateTime>,
}

impl LeaseDoc {
    pub fn parse(d: &Document) -> Self {
        let int = |k: &str| match d.get(k) {
            Some(Bson::Int64(v)) => Some(*v),
            Some(Bson::Int32(v)) => Some(i64::from(*v)),
            _ => None,
        };
        let job = d.get_document("job").ok();
        LeaseDoc {
            job_id: job.and_then(|j| j.get_str("id").ok()).map(str::to_string),
            job_name: job.and_then(|j| j.get_str("name").ok()).map(str::to_string),
            holder: d
                .get_str("holder")
                .ok()
                .filter(|h| !h.is_empty())
                .map(str::to_string),
            holder_host: d.get_str("holderHost").unwrap_or_default().to_string(),
            seq: int("seq"),
            ttl_ms: int("ttlMs"),
            released: d.get_bool("released").unwrap_or(false),
            renewed_at: d.get_datetime("renewedAt").ok().copied(),
        }
    }

    /// What a contender watches: it changes at every renewal. An older mongoferry's lease
    /// has no `seq`; its renewal time stands in.
    pub fn version(&self) -> (Option<String>, i64) {
        let v = self
            .seq
            .unwrap_or_else(|| self.renewed_at.map(|d| d.timestamp_millis()).unwrap_or(0));
        (self.holder.clone(), v)
    }

    fn ttl(&self) -> Duration {
        self.ttl_ms
            .filter(|t| *t > 0)
            .map(|t| Duration::from_millis(t as u64))
            .unwrap_or(LEASE_TTL)
    }
}

/// What a contender does about the lease it read. Pure.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No lease yet: create it.
    Create,
    /// Free (released, expired, or ours): take it with a compare-and-set.
    Take,
    /// Another job owns this target: never take it.
    OtherJob { id: String, name: String },
    /// A live holder of this job: wait, at most this long before looking again.
    Wait { remaining: Duration },
}

/// Decide about `lease` (None: absent). `unchanged_for` is how long this contender has seen
/// the lease's version unchanged on its own clock (zero at the first look). Pure.
pub fn judge(lease: Option<&LeaseDoc>, me: &Identity, unchanged_for: Duration) -> Verdict {
    let Some(l) = lease else {
        return Verdict::Create;
    };
    if let Some(owner) = l.job_id.as_ref().filter(|o| **o != me.job_id) {
        return Verdict::OtherJob {
            id: owner.clone(),
            name: l.job_name.clone().unwrap_or_else(|| owner.clone()),
        };
    }
    if l.released || l.holder.is_none() || l.holder.as_deref() == Some(me.incarnation.as_str()) {
        return Verdict::Take;
    }
    let ttl = l.ttl();
    if unchanged_for >= ttl {
        Verdict::Take
    } else {
        Verdict::Wait {
            remaining: ttl - unchanged_for,
        }
    }
}

/// The lease's IO: read, create, take, renew, release. Every change is a compare-and-set.
#[derive(Clone)]
pub struct Lease {
    coll: Collection<Document>,
    pub me: Identity,
}

impl Lease {
    pub fn new(db: &Database, me: Identity) -> Self {
        Lease {
            coll: db.collection("checkpoint"),
            me,
        }
    }

    pub async fn read(&self) -> Result<Option<LeaseDoc>> {
        Ok(self
            .coll
            .find_one(doc! {"_id": LEASE_ID})
            .await
            .on(Side::Target, "reading the job lease")?
            .map(|d| LeaseDoc::parse(&d)))
    }

    fn held_fields(&self) -> Document {
        doc! {
            "job": {"id": &self.me.job_id, "name": &self.me.job_name},
            "holder": &self.me.incarnation,
            "holderHost": &self.me.host,
            "ttlMs": self.me.ttl.as_millis() as i64,
            "released": false,
            "renewedAt": DateTime::now(),
        }
    }

    /// Take the lease for this job, waiting while a live holder of the same job renews it.
    /// Refuses at once (`TargetInUse`) when the target belongs to another job. `waiting` is
    /// told why it waits (for the status). Returns when the winning write was sent (the
    /// holder's write deadline counts from there).
    pub async fn acquire(&self, waiting: impl Fn(&EngineError)) -> Result<Instant> {
        // (version seen, when first seen on our clock)
        let mut seen: Option<((Option<String>, i64), Instant)> = None;
        loop {
            let cur = self.read().await?;
            let unchanged_for = match (&cur, &seen) {
                (Some(l), Some((v, at))) if *v == l.version() => at.elapsed(),
                _ => Duration::ZERO,
            };
            if let Some(l) = &cur {
                if seen.as_ref().is_none_or(|(v, _)| *v != l.version()) {
                    seen = Some((l.version(), Instant::now()));
                }
            }
            match judge(cur.as_ref(), &self.me, unchanged_for) {
                Verdict::OtherJob { id, name } => {
                    return Err(EngineError::TargetInUse {
                        owner_id: id,
                        owner_name: name,
                        me: self.me.job_name.clone(),
                    })
                }
                Verdict::Create => {
                    let mut d = self.held_fields();
                    d.insert("_id", LEASE_ID);
                    d.insert("seq", 1_i64);
                    let sent = Instant::now();
                    match self.coll.insert_one(d).await {
                        Ok(_) => return Ok(sent),
                        // Another contender created it first: look again.
                        Err(e) if mongo_code(&e) == Some(11000) => continue,
                        Err(e) => {
                            return Err(EngineError::mongo(
                                Side::Target,
                                "creating the job lease",
                                e,
                            ))
                        }
                    }
                }
                Verdict::Take => {
                    let l = cur.unwrap_or_default();
                    let sent = Instant::now();
                    if self.take(&l).await? {
                        return Ok(sent);
                    }
                }
                Verdict::Wait { remaining } => {
                    let l = cur.unwrap_or_default();
                    waiting(&EngineError::LeaseHeld {
                        holder: if l.holder_host.is_empty() {
                            l.holder.clone().unwrap_or_default()
                        } else {
                            l.holder_host.clone()
                        },
                        wait_secs: remaining.as_secs_f64().ceil() as i64,
                    });
                    tokio::time::sleep(remaining.min(Duration::from_millis(500))).await;
                }
            }
        }
    }

    /// Compare-and-set the lease from the version read to ours; false when it changed since.
    async fn take(&self, l: &LeaseDoc) -> Result<bool> {
        let holder = l.holder.clone().map(Bson::String).unwrap_or(Bson::Null);
        let seq = l.seq.map(Bson::Int64).unwrap_or(Bson::Null);
        let mut filter = doc! {"_id": LEASE_ID, "holder": holder, "seq": seq};
        if l.seq.is_none() {
            // An older mongoferry's lease: its renewal time is the version.
            filter.insert(
                "renewedAt",
                l.renewed_at.map(Bson::DateTime).unwrap_or(Bson::Null),
            );
        }
        let mut set = self.held_fields();
        set.insert("seq", l.seq.unwrap_or(0) + 1);
        let r = self
            .coll
            .update_one(filter, doc! {"$set": set})
            .await
            .on(Side::Target, "taking the job lease")?;
        Ok(r.matched_count == 1)
    }

    /// Renew; `Ok(false)` when another process holds the lease now (this one is deposed).
    pub async fn renew(&self) -> Result<bool> {
        let r = self
            .coll
            .update_one(
                doc! {"_id": LEASE_ID, "holder": &self.me.incarnation, "released": false},
                doc! {"$inc": {"seq": 1_i64}, "$set": {"renewedAt": DateTime::now()}},
            )
            .await
            .on(Side::Target, "renewing the job lease")?;
        Ok(r.matched_count == 1)
    }

    /// Give the lease up so a successor need not wait for it to expire. The holder is
    /// cleared, so no renewal of this process can ever match again; the owning job stays.
    pub async fn release(&self) -> Result<()> {
        self.coll
            .update_one(
                doc! {"_id": LEASE_ID, "holder": &self.me.incarnation},
                doc! {"$set": {"holder": Bson::Null, "released": true, "releasedBy": &self.me.incarnation},
                      "$inc": {"seq": 1_i64}},
            )
            .await
            .on(Side::Target, "releasing the job lease")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(job: &str) -> Identity {
        Identity {
            job_id: job.into(),
            job_name: format!("ns/{job}"),
            incarnation: "me".into(),
            host: "h pid 1".into(),
            ttl: LEASE_TTL,
        }
    }

    fn held(job: Option<&str>, holder: &str) -> LeaseDoc {
        LeaseDoc {
            job_id: job.map(str::to_string),
            job_name: job.map(|j| format!("ns/{j}")),
            holder: Some(holder.into()),
            seq: Some(7),
            ttl_ms: Some(15_000),
            ..Default::default()
        }
    }

    #[test]
    fn absent_lease_is_created() {
        assert_eq!(judge(None, &me("a"), Duration::ZERO), Verdict::Create);
    }

    #[test]
    fn another_job_is_refused_whatever_the_lease_state() {
        for l in [
            held(Some("b"), "x"),
            LeaseDoc {
                released: true,
                holder: None,
                ..held(Some("b"), "x")
            },
        ] {
            assert_eq!(
                judge(Some(&l), &me("a"), Duration::from_secs(3600)),
                Verdict::OtherJob {
                    id: "b".into(),
                    name: "ns/b".into()
                }
            );
        }
    }

    #[test]
    fn a_live_holder_of_the_same_job_is_waited_out() {
        let l = held(Some("a"), "other");
        assert_eq!(
            judge(Some(&l), &me("a"), Duration::from_secs(4)),
            Verdict::Wait {
                remaining: Duration::from_secs(11)
            }
        );
        assert_eq!(
            judge(Some(&l), &me("a"), Duration::from_secs(15)),
            Verdict::Take
        );
        // The same host and PID mean nothing: only the incarnation counts.
        let mut twin = me("a");
        twin.incarnation = "other2".into();
        assert!(matches!(
            judge(Some(&l), &twin, Duration::ZERO),
            Verdict::Wait { .. }
        ));
    }

    #[test]
    fn released_or_unowned_leases_are_taken_at_once() {
        let released = LeaseDoc {
            released: true,
            holder: None,
            ..held(Some("a"), "x")
        };
        assert_eq!(
            judge(Some(&released), &me("a"), Duration::ZERO),
            Verdict::Take
        );
        // A lease of an older mongoferry names no job: adopted after it expires.
        let legacy = LeaseDoc {
            seq: None,
            ttl_ms: None,
            renewed_at: Some(DateTime::from_millis(5)),
            ..held(None, "host-1-5")
        };
        assert!(matches!(
            judge(Some(&legacy), &me("a"), Duration::ZERO),
            Verdict::Wait { .. }
        ));
        assert_eq!(legacy.version(), (Some("host-1-5".into()), 5));
    }

    #[test]
    fn parse_reads_what_acquire_writes() {
        let d = doc! {"_id": LEASE_ID, "job": {"id": "u1", "name": "ns/j"}, "holder": "inc",
        "holderHost": "pod pid 1", "seq": 3_i64, "ttlMs": 15000_i64,
        "released": false};
        let l = LeaseDoc::parse(&d);
        assert_eq!(l.job_id.as_deref(), Some("u1"));
        assert_eq!(l.holder.as_deref(), Some("inc"));
        assert_eq!(l.version(), (Some("inc".into()), 3));
        let released = LeaseDoc::parse(&doc! {"holder": Bson::Null, "released": true});
        assert_eq!(released.holder, None);
    }
}
