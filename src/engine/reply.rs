//! Reading the replies of write commands run as raw commands: numbers of any BSON width,
//! per-statement write errors and write-concern errors, each turned into an engine error that
//! keeps the server's code and message. Pure.

use mongodb::bson::{Bson, Document};

use super::error::{classify_parts, EngineError, ErrorClass};

/// A number in a reply, whatever its BSON width (servers differ); 0 when absent.
pub fn num(b: Option<&Bson>) -> i64 {
    match b {
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Double(v)) => *v as i64,
        _ => 0,
    }
}

/// One refused statement of a write command.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteError {
    /// Position of the statement in the command.
    pub index: usize,
    pub code: i32,
    pub message: String,
}

/// The statements a write command refused, in the order the server listed them.
pub fn write_errors(reply: &Document) -> Vec<WriteError> {
    reply
        .get_array("writeErrors")
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .map(|e| WriteError {
                    index: num(e.get("index")).max(0) as usize,
                    code: num(e.get("code")) as i32,
                    message: e.get_str("errmsg").unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A write-concern error in a reply: the writes happened but were not confirmed. A transient
/// code (a primary stepping down, a timeout) becomes a retry from the checkpoint (every write
/// the engine issues is idempotent); any other stops the migration with the server's message.
pub fn write_concern_error(reply: &Document, what: &str) -> Option<EngineError> {
    let w = reply.get_document("writeConcernError").ok()?;
    let code = num(w.get("code")) as i32;
    let msg = format!(
        "{what}: the target did not confirm the write: {} (code {code})",
        w.get_str("errmsg").unwrap_or_default()
    );
    Some(match classify_parts(Some(code), &[], false) {
        ErrorClass::Transient => EngineError::Retry(msg),
        ErrorClass::Fatal => EngineError::Write(msg),
    })
}

/// Fail on any refused statement or unconfirmed write: for commands whose every statement
/// must succeed (metadata records, deletes).
pub fn require_all(reply: &Document, what: &str) -> Result<(), EngineError> {
    if let Some(e) = write_errors(reply).into_iter().next() {
        return Err(EngineError::Write(format!(
            "{what} failed: {} (code {})",
            e.message, e.code
        )));
    }
    match write_concern_error(reply, what) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn numbers_of_any_width() {
        assert_eq!(num(Some(&Bson::Int32(3))), 3);
        assert_eq!(num(Some(&Bson::Int64(1 << 40))), 1 << 40);
        assert_eq!(num(Some(&Bson::Double(2.0))), 2);
        assert_eq!(num(None), 0);
        assert_eq!(num(Some(&Bson::String("x".into()))), 0);
    }

    #[test]
    fn every_write_error_is_kept() {
        let reply = doc! {"ok": 1, "n": 1, "writeErrors": [
            {"index": 1, "code": 11000, "errmsg": "dup"},
            {"index": 4_i64, "code": 2, "errmsg": "bad"},
        ]};
        let errs = write_errors(&reply);
        assert_eq!(errs.len(), 2);
        assert_eq!((errs[1].index, errs[1].code), (4, 2));
        let e = require_all(&reply, "saving").expect_err("refused");
        assert!(e.to_string().contains("dup"), "{e}");
    }

    #[test]
    fn write_concern_errors_are_classified() {
        let transient = doc! {"ok": 1, "writeConcernError": {"code": 91, "errmsg": "shutdown"}};
        let e = write_concern_error(&transient, "x").expect("wce");
        assert_eq!(e.class(), ErrorClass::Transient);
        let fatal = doc! {"ok": 1, "writeConcernError": {"code": 100, "errmsg": "unsatisfiable"}};
        // 100 (UnsatisfiableWriteConcern) is transient in this engine's table.
        assert!(write_concern_error(&fatal, "x").is_some());
        let fatal = doc! {"ok": 1, "writeConcernError": {"code": 2, "errmsg": "bad"}};
        assert_eq!(
            write_concern_error(&fatal, "x").expect("wce").class(),
            ErrorClass::Fatal
        );
        assert!(require_all(&doc! {"ok": 1, "n": 2}, "x").is_ok());
    }
}
