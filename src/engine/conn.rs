//! Connections to the source and target: URI parsing, credentials from files, forced read
//! and write settings, and redaction of passwords for logs.

use std::time::Duration;

use mongodb::bson::{doc, Document, Timestamp};
use mongodb::options::{
    ClientOptions, ReadConcern, ReadPreference, SelectionCriteria, WriteConcern,
};
use mongodb::Client;

use super::error::{EngineError, MongoContext, Result, Side};

/// How to reach one deployment. The password is never printed (see `Debug`).
#[derive(Clone, Default)]
pub struct Endpoint {
    pub uri: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM file of the CA that signed the server's certificate.
    pub tls_ca_file: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("uri", &redact_uri(&self.uri))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The URI with any password replaced by `****`.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let rest = &uri[scheme_end + 3..];
    let host_start = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..host_start];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{}:****@{}", &uri[..scheme_end], user, &rest[at + 1..])
        }
        None => uri.to_string(),
    }
}

/// Whether the URI carries a user or password of its own.
pub fn uri_has_credentials(uri: &str) -> bool {
    redact_uri(uri) != uri
}

impl Endpoint {
    pub async fn client(&self, side: Side, app: &str) -> Result<Client> {
        let mut opts = ClientOptions::parse(&self.uri)
            .await
            .map_err(|e| EngineError::Invalid(format!("{side} URI: {e}")))?;
        opts.app_name = Some(app.to_string());
        opts.connect_timeout = Some(Duration::from_secs(10));
        opts.server_selection_timeout = Some(Duration::from_secs(15));
        opts.selection_criteria = Some(SelectionCriteria::ReadPreference(ReadPreference::Primary));
        opts.read_concern = Some(ReadConcern::majority());
        opts.write_concern = Some(WriteConcern::majority());
        if let Some(user) = &self.username {
            let mut cred = opts.credential.take().unwrap_or_default();
            cred.username = Some(user.clone());
            cred.password = self.password.clone();
            opts.credential = Some(cred);
        } else if self.password.is_some() {
            return Err(EngineError::Invalid(format!(
                "a {side} password was given without a user name"
            )));
        }
        if let Some(ca) = &self.tls_ca_file {
            let tls = mongodb::options::TlsOptions::builder()
                .ca_file_path(Some(std::path::PathBuf::from(ca)))
                .build();
            opts.tls = Some(mongodb::options::Tls::Enabled(tls));
        }
        Client::with_options(opts).map_err(|e| EngineError::Invalid(format!("{side}: {e}")))
    }
}

/// Everything about a deployment the engine checks before using it.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    pub major: u32,
    pub set_name: Option<String>,
}

/// Connect and check: reachable, authenticated, a replica set.
pub async fn probe(client: &Client, side: Side) -> Result<ServerInfo> {
    let admin = client.database("admin");
    let hello = admin
        .run_command(doc! {"hello": 1})
        .await
        .map_err(|e| connect_error(side, e))?;
    // `hello` needs no authentication; a command that does proves the credentials.
    let build = admin
        .run_command(doc! {"buildInfo": 1})
        .await
        .map_err(|e| connect_error(side, e))?;
    admin
        .run_command(doc! {"listDatabases": 1, "nameOnly": true})
        .await
        .map_err(|e| connect_error(side, e))?;
    let version = build.get_str("version").unwrap_or("unknown").to_string();
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let set_name = hello.get_str("setName").ok().map(str::to_string);
    if set_name.is_none() {
        return Err(EngineError::NotReplicaSet { side });
    }
    Ok(ServerInfo {
        version,
        major,
        set_name,
    })
}

fn connect_error(side: Side, e: mongodb::error::Error) -> EngineError {
    if super::error::is_network(&e) {
        let text = e.to_string();
        let detail = super::error::server_error_summary(&text);
        if super::error::is_tls_failure(&text) {
            return EngineError::TlsFailed { side, detail };
        }
        EngineError::Unreachable { side, detail }
    } else {
        EngineError::mongo(side, "connecting", e)
    }
}

/// The deployment's current cluster time (the `operationTime` of a no-op read).
pub async fn cluster_time(client: &Client, side: Side) -> Result<Timestamp> {
    let mut session = client
        .start_session()
        .await
        .on(side, "reading cluster time")?;
    client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .session(&mut session)
        .await
        .on(side, "reading cluster time")?;
    session
        .operation_time()
        .or_else(|| {
            session.cluster_time().and_then(|ct| {
                mongodb::bson::to_document(ct)
                    .ok()
                    .and_then(|d: Document| d.get_timestamp("clusterTime").ok())
            })
        })
        .ok_or(EngineError::NotReplicaSet { side })
}

/// Where the source's change stream stands now: its cluster time, then the post-batch resume
/// token of an empty cluster-wide stream opened right after (none where the server gives
/// none). Replication from the copy's start resumes after that token; every event after it is
/// delivered, and the server finds it without reading its oplog (a start at a time makes
/// SecantusDB read its whole oplog: seconds for a million entries).
pub async fn stream_position(source: &Client) -> Result<(Timestamp, Option<Document>)> {
    let ts = cluster_time(source, Side::Source).await?;
    let admin = source.database("admin");
    let what = "opening the change stream";
    let reply = admin
        .run_command(doc! {
            "aggregate": 1,
            "pipeline": [{"$changeStream": {"allChangesForCluster": true, "showExpandedEvents": true}}],
            "cursor": {"batchSize": 0},
        })
        .await
        .map_err(|e| EngineError::mongo(Side::Source, what, e))?;
    let cursor = reply.get_document("cursor").ok();
    let token = cursor
        .and_then(|c| c.get_document("postBatchResumeToken").ok())
        .cloned();
    if let Some(id) = cursor
        .and_then(|c| c.get_i64("id").ok())
        .filter(|i| *i != 0)
    {
        if let Err(e) = admin
            .run_command(doc! {"killCursors": "$cmd.aggregate", "cursors": [id]})
            .await
        {
            tracing::debug!(error = %e, "cannot close the probe change stream");
        }
    }
    Ok((ts, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_uri("mongodb://alice:s3cret@db1:27017,db2/app?tls=true"),
            "mongodb://alice:****@db1:27017,db2/app?tls=true"
        );
        assert_eq!(
            redact_uri("mongodb://h:1/?replicaSet=rs"),
            "mongodb://h:1/?replicaSet=rs"
        );
        assert_eq!(redact_uri("mongodb+srv://u:p@x"), "mongodb+srv://u:****@x");
        assert!(uri_has_credentials("mongodb://u:p@h"));
        assert!(!uri_has_credentials("mongodb://h"));
        let ep = Endpoint {
            uri: "mongodb://u:pw1@h".into(),
            username: Some("u".into()),
            password: Some("pw2".into()),
            tls_ca_file: None,
        };
        let dbg = format!("{ep:?}");
        assert!(!dbg.contains("pw1") && !dbg.contains("pw2"), "{dbg}");
    }
}
