//! Engine errors: each carries a message a user can act on, and a class that decides whether
//! the engine retries from its checkpoint or stops in `failed`.

use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use thiserror::Error;

/// Which side of the migration an error concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

#[derive(Debug, Clone, Error)]
pub enum EngineError {
    #[error("cannot reach the {side} deployment: {detail}. Check the URI, the network and that the server is up")]
    Unreachable { side: Side, detail: String },
    #[error("authentication to the {side} deployment failed: {detail}. Check the user name and password (and authSource)")]
    AuthFailed { side: Side, detail: String },
    #[error("TLS to the {side} deployment failed: {detail}. Check the CA file (--{side}-tls-ca-file or tlsCAFile): it must hold the CA that signed the server's certificate, and the certificate must name the host in the URI")]
    TlsFailed { side: Side, detail: String },
    #[error("the {side} deployment is not a replica set (change streams need one); run it as a replica set, even of one member")]
    NotReplicaSet { side: Side },
    #[error(
        "the source's oplog no longer holds the resume point {resume_point} (oldest entry {oldest}): change-stream history lost. \
         The migration cannot continue from its checkpoint. Enlarge the source's oplog (replSetResizeOplog) so it covers \
         the pauses and the copy, then start over with reset"
    )]
    HistoryLost {
        resume_point: String,
        oldest: String,
    },
    #[error(
        "history lost: the new cluster's oplog no longer holds this reverse's resume point {resume_point} \
         (oldest entry {oldest}), so the writes made there since cannot be replayed onto the old source. \
         The reverse cannot continue: copy the data back with a new migration from the new cluster to the \
         old source (dropTargetNamespaces: true replaces the old collections), and size the new cluster's \
         oplog (replSetResizeOplog) to cover pauses of the reverse"
    )]
    ReverseHistoryLost {
        resume_point: String,
        oldest: String,
    },
    #[error("unexpected DDL on the source: {0}")]
    UnexpectedDdl(String),
    #[error("another worker holds this job's lease on the target ({holder}); waiting up to {wait_secs}s for it to stop or expire — only one worker may write to a target")]
    LeaseHeld { holder: String, wait_secs: i64 },
    #[error("the target belongs to another migration job, {owner_name} (id {owner_id}); this job ({me}) will not touch it. Point this job at another target; if {owner_name} is gone for good, drop the target's `mongoferry` database to release the target")]
    TargetInUse {
        owner_id: String,
        owner_name: String,
        me: String,
    },
    #[error("this worker was deposed: another worker took this migration over (our epoch {ours}: {detail}); it stopped writing")]
    Fenced { ours: i64, detail: String },
    #[error("this worker does not hold the job (not taken yet, or given up on shutdown); nothing was written")]
    NotHolding,
    #[error("the {side} deployment's user lacks a privilege: {detail}. See docs/permissions.md for the roles to grant")]
    Unauthorized { side: Side, detail: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the target already holds {0}, which this migration would overwrite; drop it, exclude it, start with dropTargetNamespaces: true to let the migration replace it, or with reset if an earlier mongoferry run created it")]
    TargetNotEmpty(String),
    #[error("{side} error during {during}: {}", describe(source))]
    Mongo {
        side: Side,
        during: String,
        #[source]
        source: MongoError,
    },
    /// The target refused a write for a reason a retry will not change.
    #[error("{0}")]
    Write(String),
    #[error("{what}: cannot encode a record: {detail}")]
    Encode { what: String, detail: String },
    #[error("undecodable change event: {0}")]
    BadEvent(String),
    #[error("the checkpoint records no start time; start the migration again with reset")]
    NoStartTime,
    /// A task of the pipeline ended without its answer (it failed or panicked; its own error
    /// is logged).
    #[error("internal: {0} stopped")]
    TaskStopped(&'static str),
    /// A transaction the server asked to run again (a write conflict, an aborted transaction).
    #[error("{0}")]
    TransientTxn(String),
    /// A failure already described that a retry from the checkpoint may overcome.
    #[error("{0}")]
    Retry(String),
}

/// How the engine reacts to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network, failover, a restarting server: retry from the checkpoint after a backoff.
    Transient,
    /// Needs a person: stop in `failed` with the message.
    Fatal,
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// The server error code of a driver error, if any.
pub fn mongo_code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|v| v.first().map(|w| w.code))
            .or_else(|| m.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

/// A driver error in one line: the server's code, name and message when there is one (the
/// driver's own text appends the raw reply, which helps nobody reading a status).
pub fn describe(e: &MongoError) -> String {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => format!("{} (code {} {})", c.message, c.code, c.code_name),
        ErrorKind::Write(WriteFailure::WriteError(w)) => format!("{} (code {})", w.message, w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            format!("write concern: {} (code {})", w.message, w.code)
        }
        ErrorKind::InsertMany(m) => match (&m.write_errors, &m.write_concern_error) {
            (Some(w), _) if !w.is_empty() => {
                format!(
                    "{} write error(s), first: {} (code {})",
                    w.len(),
                    w[0].message,
                    w[0].code
                )
            }
            (_, Some(c)) => format!("write concern: {} (code {})", c.message, c.code),
            _ => "insert failed".into(),
        },
        other => other.to_string(),
    }
}

/// The server's own error inside a driver error that describes a whole topology (a server
/// selection timeout lists every server with its last error): the first server error, else the
/// text as given.
pub fn server_error_summary(text: &str) -> String {
    const START: &str = "Error: Kind: ";
    if let Some(i) = text.find(START) {
        let rest = &text[i + START.len()..];
        let end = rest.find(", labels").unwrap_or(rest.len());
        let inner = rest[..end].trim();
        let inner = inner.strip_prefix("I/O error: ").unwrap_or(inner);
        if !inner.is_empty() {
            return inner.to_string();
        }
    }
    text.to_string()
}

/// Whether a connection error is a TLS failure (a certificate not trusted, a handshake refused).
pub fn is_tls_failure(text: &str) -> bool {
    let t = text.to_lowercase();
    t.contains("certificate") || t.contains("tls handshake") || t.contains("handshakefailure")
}

/// Codes that mean the collection went away under a read (dropped or renamed meanwhile).
pub const COLLECTION_GONE_CODES: &[i32] = &[26, 175];

/// Codes that mean "the server is changing state or busy; try again".
pub const TRANSIENT_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 43, 50, 64, 100, 112, 117,
    133, 234, 251, 10058,
];

/// Pure classification from the parts of an error.
pub fn classify_parts(code: Option<i32>, labels: &[&str], network: bool) -> ErrorClass {
    if network
        || labels.iter().any(|l| {
            matches!(
                *l,
                "RetryableWriteError"
                    | "ResumableChangeStreamError"
                    | "TransientTransactionError"
                    | "SystemOverloadedError"
                    | "RetryableError"
            )
        })
    {
        return ErrorClass::Transient;
    }
    match code {
        Some(c) if TRANSIENT_CODES.contains(&c) => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    }
}

pub fn is_network(e: &MongoError) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
    )
}

pub fn classify_mongo(e: &MongoError) -> ErrorClass {
    let labels: Vec<&str> = e.labels().iter().map(String::as_str).collect();
    classify_parts(mongo_code(e), &labels, is_network(e))
}

impl EngineError {
    pub fn mongo(side: Side, during: impl Into<String>, source: MongoError) -> Self {
        if let ErrorKind::Authentication { message, .. } = source.kind.as_ref() {
            return EngineError::AuthFailed {
                side,
                detail: message.clone(),
            };
        }
        match mongo_code(&source) {
            Some(18) => EngineError::AuthFailed {
                side,
                detail: source.to_string(),
            },
            Some(13) => EngineError::Unauthorized {
                side,
                detail: source.to_string(),
            },
            _ => EngineError::Mongo {
                side,
                during: during.into(),
                source,
            },
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            EngineError::Unreachable { .. }
            | EngineError::LeaseHeld { .. }
            | EngineError::TransientTxn(_)
            | EngineError::Retry(_) => ErrorClass::Transient,
            EngineError::Mongo { source, .. } => classify_mongo(source),
            _ => ErrorClass::Fatal,
        }
    }

    pub const TARGET_IN_USE: &'static str = "TargetInUse";
    pub const DEPOSED: &'static str = "Deposed";
    pub const HISTORY_LOST: &'static str = "HistoryLost";

    /// A stable name for a failure a tool may act on (`failureReason` of the status).
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            EngineError::TargetInUse { .. } => Some(Self::TARGET_IN_USE),
            EngineError::Fenced { .. } => Some(Self::DEPOSED),
            EngineError::HistoryLost { .. } | EngineError::ReverseHistoryLost { .. } => {
                Some(Self::HISTORY_LOST)
            }
            _ => None,
        }
    }

    /// The error as a reverse reports it: its fix differs where the migration's would not
    /// apply (a reverse is never reset).
    pub fn in_reverse(self) -> EngineError {
        match self {
            EngineError::HistoryLost {
                resume_point,
                oldest,
            } => EngineError::ReverseHistoryLost {
                resume_point,
                oldest,
            },
            other => other,
        }
    }

    /// Whether a fenced transaction that failed with this error may simply run again.
    pub fn is_transient_txn(&self) -> bool {
        match self {
            EngineError::TransientTxn(_) => true,
            EngineError::Mongo { source, .. } => {
                source.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
            }
            _ => false,
        }
    }

    /// A short label for metrics.
    pub fn kind_label(&self) -> &'static str {
        match self {
            EngineError::Unreachable { .. } => "unreachable",
            EngineError::AuthFailed { .. } => "auth",
            EngineError::TlsFailed { .. } => "tls",
            EngineError::NotReplicaSet { .. } => "topology",
            EngineError::HistoryLost { .. } | EngineError::ReverseHistoryLost { .. } => {
                "history_lost"
            }
            EngineError::UnexpectedDdl(_) => "ddl",
            EngineError::Fenced { .. } => "fenced",
            EngineError::LeaseHeld { .. } => "lease_held",
            EngineError::Unauthorized { .. } => "unauthorized",
            EngineError::Invalid(_) => "invalid",
            EngineError::TargetNotEmpty(_) => "target_not_empty",
            EngineError::Mongo { .. } => "mongo",
            EngineError::TargetInUse { .. } => "target_in_use",
            EngineError::NotHolding => "not_holding",
            EngineError::Write(_) => "write",
            EngineError::Encode { .. } => "encode",
            EngineError::BadEvent(_) => "bad_event",
            EngineError::NoStartTime => "no_start_time",
            EngineError::TaskStopped(_) => "internal",
            EngineError::TransientTxn(_) | EngineError::Retry(_) => "transient",
        }
    }
}

/// Extension to attach side and step to driver results.
pub trait MongoContext<T> {
    fn on(self, side: Side, during: &str) -> Result<T>;
}

impl<T> MongoContext<T> for std::result::Result<T, MongoError> {
    fn on(self, side: Side, during: &str) -> Result<T> {
        self.map_err(|e| EngineError::mongo(side, during, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify_parts(None, &[], true), ErrorClass::Transient);
        assert_eq!(
            classify_parts(Some(10107), &[], false),
            ErrorClass::Transient
        );
        assert_eq!(classify_parts(Some(43), &[], false), ErrorClass::Transient);
        assert_eq!(
            classify_parts(Some(2), &["RetryableWriteError"], false),
            ErrorClass::Transient
        );
        assert_eq!(classify_parts(Some(286), &[], false), ErrorClass::Fatal);
        assert_eq!(classify_parts(Some(11000), &[], false), ErrorClass::Fatal);
        assert_eq!(classify_parts(None, &[], false), ErrorClass::Fatal);
    }

    #[test]
    fn topology_dumps_are_summarised() {
        let t = "Kind: Server selection timeout: No available servers. Topology: { Type: Unknown, Servers: [ { Address: 127.0.0.1:1, Type: Unknown, Error: Kind: I/O error: invalid peer certificate: BadSignature, labels: {\"RetryableError\"}, source: None } ] }, labels: {}";
        assert_eq!(
            server_error_summary(t),
            "invalid peer certificate: BadSignature"
        );
        assert!(is_tls_failure(t));
        assert_eq!(server_error_summary("plain"), "plain");
        let e = EngineError::TlsFailed {
            side: Side::Source,
            detail: server_error_summary(t),
        };
        assert!(e.to_string().contains("--source-tls-ca-file"));
        assert_eq!(e.class(), ErrorClass::Fatal);
    }

    #[test]
    fn messages_name_the_fix() {
        let e = EngineError::HistoryLost {
            resume_point: "1.1".into(),
            oldest: "2.1".into(),
        };
        let m = e.to_string();
        assert!(m.contains("history lost") && m.contains("oplog") && m.contains("reset"));
        assert_eq!(e.class(), ErrorClass::Fatal);
        let e = EngineError::NotReplicaSet { side: Side::Source };
        assert!(e.to_string().contains("replica set"));
    }
}
