//! The comparator: proves that a target deployment equals a source one.
//!
//! It compares databases, collections (type and options), indexes and every document. Documents
//! are compared byte-for-byte as BSON: the source is streamed first into a map from the raw bytes
//! of each `_id` to two 64-bit hashes (exact bytes, and keys sorted recursively), then the target
//! is streamed and checked against the map. A document whose bytes differ only by field order is
//! reported as [`DifferenceKind::FieldOrderOnly`], so a test can decide whether to accept it.
//!
//! Memory is O(number of documents of the largest collection), which is fine for tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use futures::TryStreamExt;
use mongodb::bson::raw::{RawBsonRef, RawDocument, RawDocumentBuf};
use mongodb::bson::{doc, Bson, Document};
use mongodb::{Client, Database};

/// Databases never compared (the engine's own state lives in `mongoferry`).
pub const SKIPPED_DATABASES: &[&str] = &["admin", "local", "config", "mongoferry"];

/// `expireAfterSeconds` the engine uses on the target while syncing a TTL index.
pub const RELAXED_TTL_SECONDS: i64 = 2_147_483_647;

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// On the TARGET, an index may be non-unique where the source's is unique, have
    /// `expireAfterSeconds: 2147483647` where the source has any TTL, and be visible where
    /// the source's is hidden (the engine relaxes these during sync).
    pub relaxed_indexes: bool,
    /// Compare only these databases (default: all but [`SKIPPED_DATABASES`]).
    pub databases: Option<Vec<String>>,
    /// Skip these namespaces (`db.coll`) entirely.
    pub skip_namespaces: Vec<String>,
    /// Compare documents (default true); false compares metadata only.
    pub documents: bool,
    /// Compare indexes (default true).
    pub indexes: bool,
    /// Report at most this many document differences per collection (all are counted; the
    /// rest appear in one [`DifferenceKind::MoreDocumentDifferences`] entry). Default 100.
    pub max_listed_per_collection: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            relaxed_indexes: false,
            databases: None,
            skip_namespaces: Vec::new(),
            documents: true,
            indexes: true,
            max_listed_per_collection: 100,
        }
    }
}

impl CompareOptions {
    /// Options for comparing during sync (indexes relaxed).
    pub fn relaxed() -> Self {
        CompareOptions {
            relaxed_indexes: true,
            ..CompareOptions::default()
        }
    }
}

/// One difference between source and target.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// `db` or `db.coll`.
    pub namespace: String,
    pub kind: DifferenceKind,
}

/// The kinds of [`Difference`].
#[derive(Debug, Clone, PartialEq)]
pub enum DifferenceKind {
    MissingDatabase,
    ExtraDatabase,
    MissingCollection,
    ExtraCollection,
    /// `collection` vs `view` vs `timeseries`.
    CollectionType {
        source: String,
        target: String,
    },
    /// An option of `listCollections` (`options.*`, ignoring `uuid`).
    CollectionOption {
        option: String,
        source: Option<Bson>,
        target: Option<Bson>,
    },
    MissingIndex {
        name: String,
        spec: Document,
    },
    ExtraIndex {
        name: String,
        spec: Document,
    },
    IndexField {
        name: String,
        field: String,
        source: Option<Bson>,
        target: Option<Bson>,
    },
    MissingDocument {
        id: Bson,
    },
    ExtraDocument {
        id: Bson,
    },
    DocumentDiffers {
        id: Bson,
        detail: String,
    },
    /// Same fields and values, in a different order (recursively).
    FieldOrderOnly {
        id: Bson,
    },
    /// Differences counted beyond `max_listed_per_collection`.
    MoreDocumentDifferences {
        missing: u64,
        extra: u64,
        different: u64,
        field_order_only: u64,
    },
    /// A collection could not be read completely (error while streaming).
    ReadError {
        side: Side,
        message: String,
    },
}

/// Which deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

impl Difference {
    pub fn is_field_order_only(&self) -> bool {
        matches!(self.kind, DifferenceKind::FieldOrderOnly { .. })
    }

    /// Document-level (missing/extra/different/field-order) as opposed to metadata.
    pub fn is_document(&self) -> bool {
        matches!(
            self.kind,
            DifferenceKind::MissingDocument { .. }
                | DifferenceKind::ExtraDocument { .. }
                | DifferenceKind::DocumentDiffers { .. }
                | DifferenceKind::FieldOrderOnly { .. }
                | DifferenceKind::MoreDocumentDifferences { .. }
        )
    }
}

fn show(v: &Option<Bson>) -> String {
    match v {
        Some(b) => b.to_string(),
        None => "(absent)".to_string(),
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = &self.namespace;
        match &self.kind {
            DifferenceKind::MissingDatabase => write!(f, "database {ns}: missing on target"),
            DifferenceKind::ExtraDatabase => write!(f, "database {ns}: extra on target"),
            DifferenceKind::MissingCollection => write!(f, "{ns}: collection missing on target"),
            DifferenceKind::ExtraCollection => write!(f, "{ns}: collection extra on target"),
            DifferenceKind::CollectionType { source, target } => {
                write!(f, "{ns}: type is {source} on source, {target} on target")
            }
            DifferenceKind::CollectionOption {
                option,
                source,
                target,
            } => write!(
                f,
                "{ns}: option {option} is {} on source, {} on target",
                show(source),
                show(target)
            ),
            DifferenceKind::MissingIndex { name, spec } => {
                write!(f, "{ns}: index {name} missing on target (source: {spec})")
            }
            DifferenceKind::ExtraIndex { name, spec } => {
                write!(f, "{ns}: index {name} extra on target ({spec})")
            }
            DifferenceKind::IndexField {
                name,
                field,
                source,
                target,
            } => write!(
                f,
                "{ns}: index {name}: {field} is {} on source, {} on target",
                show(source),
                show(target)
            ),
            DifferenceKind::MissingDocument { id } => {
                write!(f, "{ns}: document _id={id} missing on target")
            }
            DifferenceKind::ExtraDocument { id } => {
                write!(f, "{ns}: document _id={id} extra on target")
            }
            DifferenceKind::DocumentDiffers { id, detail } => {
                write!(f, "{ns}: document _id={id} differs: {detail}")
            }
            DifferenceKind::FieldOrderOnly { id } => {
                write!(f, "{ns}: document _id={id} differs in field order only")
            }
            DifferenceKind::MoreDocumentDifferences {
                missing,
                extra,
                different,
                field_order_only,
            } => write!(
                f,
                "{ns}: {} more document differences not listed ({missing} missing, {extra} \
                 extra, {different} different, {field_order_only} field order only)",
                missing + extra + different + field_order_only
            ),
            DifferenceKind::ReadError { side, message } => {
                write!(f, "{ns}: error reading {side}: {message}")
            }
        }
    }
}

/// Render a list of differences, one per line (for assertion messages).
pub fn render(diffs: &[Difference]) -> String {
    let mut out = String::new();
    for d in diffs {
        out.push_str("  - ");
        out.push_str(&d.to_string());
        out.push('\n');
    }
    out
}

/// Compare `target` against `source`. An empty list means equal.
pub async fn compare(
    source: &Client,
    target: &Client,
    opts: CompareOptions,
) -> mongodb::error::Result<Vec<Difference>> {
    let mut diffs = Vec::new();
    let src_dbs = database_names(source, &opts).await?;
    let dst_dbs = database_names(target, &opts).await?;
    for db in src_dbs.difference(&dst_dbs) {
        // An empty source database is not visible on mongod either; report only if it has
        // collections.
        if !collections(&source.database(db)).await?.is_empty() {
            diffs.push(Difference {
                namespace: db.clone(),
                kind: DifferenceKind::MissingDatabase,
            });
        }
    }
    for db in dst_dbs.difference(&src_dbs) {
        if !collections(&target.database(db)).await?.is_empty() {
            diffs.push(Difference {
                namespace: db.clone(),
                kind: DifferenceKind::ExtraDatabase,
            });
        }
    }
    for db in src_dbs.intersection(&dst_dbs) {
        compare_database(source.database(db), target.database(db), &opts, &mut diffs).await?;
    }
    Ok(diffs)
}

/// [`compare`] again every second until nothing differs, for a target still applying the
/// source's last writes (a lag of 0 s has one-second resolution); panics with the last
/// differences once `within` has passed. A lost write never converges.
pub async fn assert_converges(
    source: &Client,
    target: &Client,
    opts: CompareOptions,
    within: std::time::Duration,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let diffs = compare(source, target, opts.clone())
            .await
            .expect("comparator failed to read a deployment");
        if diffs.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "target still differs from source after {within:?} ({} differences):\n{}",
            diffs.len(),
            render(&diffs)
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// [`compare`], panicking with a readable list when anything differs.
pub async fn assert_same(source: &Client, target: &Client, opts: CompareOptions) {
    let diffs = compare(source, target, opts)
        .await
        .expect("comparator failed to read a deployment");
    assert!(
        diffs.is_empty(),
        "target differs from source ({} differences):\n{}",
        diffs.len(),
        render(&diffs)
    );
}

async fn database_names(
    client: &Client,
    opts: &CompareOptions,
) -> mongodb::error::Result<BTreeSet<String>> {
    let names = client.list_database_names().await?;
    Ok(names
        .into_iter()
        .filter(|n| !SKIPPED_DATABASES.contains(&n.as_str()))
        .filter(|n| opts.databases.as_ref().is_none_or(|only| only.contains(n)))
        .collect())
}

/// A `listCollections` entry, reduced to what is compared.
#[derive(Debug, Clone)]
struct CollInfo {
    kind: String,
    options: Document,
}

async fn collections(db: &Database) -> mongodb::error::Result<BTreeMap<String, CollInfo>> {
    let mut cursor = db
        .run_cursor_command(doc! {"listCollections": 1, "nameOnly": false})
        .await?;
    let mut out = BTreeMap::new();
    while let Some(entry) = cursor.try_next().await? {
        let Ok(name) = entry.get_str("name") else {
            continue;
        };
        if name.starts_with("system.") {
            continue;
        }
        let kind = entry.get_str("type").unwrap_or("collection").to_string();
        let mut options = entry.get_document("options").cloned().unwrap_or_default();
        options.remove("uuid");
        out.insert(name.to_string(), CollInfo { kind, options });
    }
    Ok(out)
}

async fn compare_database(
    source: Database,
    target: Database,
    opts: &CompareOptions,
    diffs: &mut Vec<Difference>,
) -> mongodb::error::Result<()> {
    let db = source.name().to_string();
    let src = collections(&source).await?;
    let dst = collections(&target).await?;
    for (name, info) in &src {
        let ns = format!("{db}.{name}");
        if opts.skip_namespaces.contains(&ns) {
            continue;
        }
        let Some(tinfo) = dst.get(name) else {
            diffs.push(Difference {
                namespace: ns,
                kind: DifferenceKind::MissingCollection,
            });
            continue;
        };
        if info.kind != tinfo.kind {
            diffs.push(Difference {
                namespace: ns.clone(),
                kind: DifferenceKind::CollectionType {
                    source: info.kind.clone(),
                    target: tinfo.kind.clone(),
                },
            });
            continue;
        }
        compare_options(&ns, &info.options, &tinfo.options, diffs);
        if info.kind == "view" {
            continue;
        }
        if opts.indexes {
            let si = indexes(&source, name).await;
            let ti = indexes(&target, name).await;
            match (si, ti) {
                (Ok(si), Ok(ti)) => compare_indexes(&ns, &si, &ti, opts.relaxed_indexes, diffs),
                (Err(e), _) => diffs.push(read_error(&ns, Side::Source, e)),
                (_, Err(e)) => diffs.push(read_error(&ns, Side::Target, e)),
            }
        }
        if opts.documents {
            compare_documents(&source, &target, name, opts, diffs).await;
        }
    }
    for name in dst.keys() {
        let ns = format!("{db}.{name}");
        if !src.contains_key(name) && !opts.skip_namespaces.contains(&ns) {
            diffs.push(Difference {
                namespace: ns,
                kind: DifferenceKind::ExtraCollection,
            });
        }
    }
    Ok(())
}

fn read_error(ns: &str, side: Side, e: mongodb::error::Error) -> Difference {
    Difference {
        namespace: ns.to_string(),
        kind: DifferenceKind::ReadError {
            side,
            message: e.to_string(),
        },
    }
}

fn compare_options(ns: &str, src: &Document, dst: &Document, diffs: &mut Vec<Difference>) {
    let keys: BTreeSet<&String> = src.keys().chain(dst.keys()).collect();
    for key in keys {
        let s = src.get(key);
        let t = dst.get(key);
        if !option_values_equal(s, t) {
            diffs.push(Difference {
                namespace: ns.to_string(),
                kind: DifferenceKind::CollectionOption {
                    option: key.clone(),
                    source: s.cloned(),
                    target: t.cloned(),
                },
            });
        }
    }
}

/// Metadata equality: numbers equal by value whatever their type, documents in order, a
/// `false` equal to an absent flag.
fn option_values_equal(a: Option<&Bson>, b: Option<&Bson>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(Bson::Boolean(false)), None) | (None, Some(Bson::Boolean(false))) => true,
        (Some(a), Some(b)) => bson_meta_eq(a, b),
        _ => false,
    }
}

fn as_number(b: &Bson) -> Option<f64> {
    match b {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        Bson::Decimal128(d) => d.to_string().parse().ok(),
        _ => None,
    }
}

/// Order-sensitive structural equality with numbers compared by value.
pub fn bson_meta_eq(a: &Bson, b: &Bson) -> bool {
    if let (Some(x), Some(y)) = (as_number(a), as_number(b)) {
        return x == y || (x.is_nan() && y.is_nan());
    }
    match (a, b) {
        (Bson::Document(x), Bson::Document(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|((kx, vx), (ky, vy))| kx == ky && bson_meta_eq(vx, vy))
        }
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| bson_meta_eq(p, q))
        }
        _ => a == b,
    }
}

async fn indexes(db: &Database, coll: &str) -> mongodb::error::Result<BTreeMap<String, Document>> {
    let mut out = BTreeMap::new();
    // listIndexes through the generic command so every field of the spec is kept.
    let mut cursor = db.run_cursor_command(doc! {"listIndexes": coll}).await?;
    while let Some(mut spec) = cursor.try_next().await? {
        spec.remove("v");
        spec.remove("ns");
        let name = spec.get_str("name").unwrap_or("").to_string();
        out.insert(name, spec);
    }
    Ok(out)
}

fn compare_indexes(
    ns: &str,
    src: &BTreeMap<String, Document>,
    dst: &BTreeMap<String, Document>,
    relaxed: bool,
    diffs: &mut Vec<Difference>,
) {
    for (name, s) in src {
        let Some(t) = dst.get(name) else {
            diffs.push(Difference {
                namespace: ns.to_string(),
                kind: DifferenceKind::MissingIndex {
                    name: name.clone(),
                    spec: s.clone(),
                },
            });
            continue;
        };
        let fields: BTreeSet<&String> = s.keys().chain(t.keys()).collect();
        for field in fields {
            let sv = s.get(field);
            let tv = t.get(field);
            if option_values_equal(sv, tv) {
                continue;
            }
            if relaxed && relaxed_ok(field, sv, tv) {
                continue;
            }
            diffs.push(Difference {
                namespace: ns.to_string(),
                kind: DifferenceKind::IndexField {
                    name: name.clone(),
                    field: field.clone(),
                    source: sv.cloned(),
                    target: tv.cloned(),
                },
            });
        }
    }
    for (name, t) in dst {
        if !src.contains_key(name) {
            diffs.push(Difference {
                namespace: ns.to_string(),
                kind: DifferenceKind::ExtraIndex {
                    name: name.clone(),
                    spec: t.clone(),
                },
            });
        }
    }
}

fn truthy(v: Option<&Bson>) -> bool {
    matches!(v, Some(Bson::Boolean(true))) || v.and_then(as_number).is_some_and(|n| n != 0.0)
}

/// The relaxations the engine applies to target indexes while syncing.
fn relaxed_ok(field: &str, source: Option<&Bson>, target: Option<&Bson>) -> bool {
    match field {
        "unique" | "hidden" => truthy(source) && !truthy(target),
        "expireAfterSeconds" => {
            source.is_some()
                && target
                    .and_then(as_number)
                    .is_some_and(|n| n == RELAXED_TTL_SECONDS as f64)
        }
        _ => false,
    }
}

/// Per-document fingerprint of the source side.
struct Fingerprint {
    exact: u64,
    sorted: u64,
}

#[derive(Default)]
struct DocCounts {
    missing: u64,
    extra: u64,
    different: u64,
    field_order_only: u64,
    listed: usize,
}

/// The `_id` element of a raw document as `type byte + value bytes` (plus the value for
/// display).
pub fn id_key(doc: &RawDocument) -> mongodb::bson::raw::Result<(Vec<u8>, Bson)> {
    let id = doc.get("_id")?;
    let value: RawBsonRef<'_> = id.unwrap_or(RawBsonRef::Null);
    let mut buf = RawDocumentBuf::new();
    buf.append_ref("", value);
    let bytes = buf.into_bytes();
    // {len:4}{type:1}{"":1}{value...}{0:1} -> type + value
    let mut key = Vec::with_capacity(bytes.len().saturating_sub(6));
    if bytes.len() >= 7 {
        key.push(bytes[4]);
        key.extend_from_slice(&bytes[6..bytes.len() - 1]);
    }
    let shown = Bson::try_from(value.to_raw_bson()).unwrap_or(Bson::Null);
    Ok((key, shown))
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Hash of a document with keys sorted recursively (arrays keep their order).
pub fn sorted_hash(doc: &RawDocument) -> u64 {
    let mut h = DefaultHasher::new();
    hash_sorted_doc(doc, &mut h);
    h.finish()
}

fn hash_sorted_doc(doc: &RawDocument, h: &mut DefaultHasher) {
    let mut entries: Vec<(&str, RawBsonRef<'_>)> = doc.iter().filter_map(|e| e.ok()).collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    0x03u8.hash(h);
    entries.len().hash(h);
    for (k, v) in entries {
        k.hash(h);
        hash_value(v, h);
    }
}

fn hash_value(v: RawBsonRef<'_>, h: &mut DefaultHasher) {
    // The element type first, then the value's contents (no allocation for common types).
    (v.element_type() as u8).hash(h);
    match v {
        RawBsonRef::Document(d) => hash_sorted_doc(d, h),
        RawBsonRef::Array(a) => {
            for item in a.into_iter().filter_map(|e| e.ok()) {
                hash_value(item, h);
            }
            0xffu8.hash(h);
        }
        RawBsonRef::Double(d) => d.to_bits().hash(h),
        RawBsonRef::String(s) | RawBsonRef::JavaScriptCode(s) | RawBsonRef::Symbol(s) => s.hash(h),
        RawBsonRef::Boolean(b) => b.hash(h),
        RawBsonRef::Null | RawBsonRef::Undefined | RawBsonRef::MaxKey | RawBsonRef::MinKey => {}
        RawBsonRef::RegularExpression(r) => {
            r.pattern.hash(h);
            r.options.hash(h);
        }
        RawBsonRef::JavaScriptCodeWithScope(c) => {
            c.code.hash(h);
            hash_sorted_doc(c.scope, h);
        }
        RawBsonRef::Int32(i) => i.hash(h),
        RawBsonRef::Int64(i) => i.hash(h),
        RawBsonRef::Timestamp(t) => {
            t.time.hash(h);
            t.increment.hash(h);
        }
        RawBsonRef::Binary(b) => {
            u8::from(b.subtype).hash(h);
            b.bytes.hash(h);
        }
        RawBsonRef::ObjectId(o) => o.bytes().hash(h),
        RawBsonRef::DateTime(d) => d.timestamp_millis().hash(h),
        RawBsonRef::Decimal128(d) => d.bytes().hash(h),
        other @ RawBsonRef::DbPointer(_) => {
            let mut buf = RawDocumentBuf::new();
            buf.append_ref("", other);
            buf.as_bytes().hash(h);
        }
    }
}

fn bson_of(doc: &RawDocument) -> Document {
    Document::try_from(doc).unwrap_or_default()
}

/// Names of the top-level fields whose values differ (or that exist on one side only).
fn describe_difference(src: &Document, dst: &Document) -> String {
    let mut parts = Vec::new();
    for (k, v) in src {
        match dst.get(k) {
            None => parts.push(format!("{k} missing on target")),
            Some(t) if exact_bytes(t) != exact_bytes(v) => {
                let mut s = v.to_string();
                let mut ts = t.to_string();
                s.truncate(120);
                ts.truncate(120);
                parts.push(format!("{k}: {s} vs {ts}"));
            }
            _ => {}
        }
    }
    for k in dst.keys() {
        if !src.contains_key(k) {
            parts.push(format!("{k} extra on target"));
        }
    }
    if parts.is_empty() {
        "field order or value types differ".to_string()
    } else {
        parts.join("; ")
    }
}

fn exact_bytes(v: &Bson) -> Vec<u8> {
    let d = doc! {"": v.clone()};
    let raw = RawDocumentBuf::from_document(&d).unwrap_or_default();
    raw.into_bytes()
}

async fn compare_documents(
    source: &Database,
    target: &Database,
    name: &str,
    opts: &CompareOptions,
    diffs: &mut Vec<Difference>,
) {
    let ns = format!("{}.{name}", source.name());
    let src = source.collection::<RawDocumentBuf>(name);
    let dst = target.collection::<RawDocumentBuf>(name);

    // Source: id bytes -> fingerprint (and the id for display).
    let mut seen: HashMap<Vec<u8>, (Fingerprint, Bson, bool)> = HashMap::new();
    let read = async {
        let mut cursor = src.find(doc! {}).await?;
        while let Some(d) = cursor.try_next().await? {
            let (key, id) = id_key(&d)?;
            let fp = Fingerprint {
                exact: hash_bytes(d.as_bytes()),
                sorted: sorted_hash(&d),
            };
            seen.insert(key, (fp, id, false));
        }
        Ok::<(), mongodb::error::Error>(())
    };
    if let Err(e) = read.await {
        diffs.push(read_error(&ns, Side::Source, e));
        return;
    }

    let mut counts = DocCounts::default();
    let cap = opts.max_listed_per_collection;
    let scan = async {
        let mut cursor = dst.find(doc! {}).await?;
        while let Some(d) = cursor.try_next().await? {
            let (key, id) = id_key(&d)?;
            match seen.get_mut(&key) {
                None => {
                    counts.extra += 1;
                    if counts.listed < cap {
                        counts.listed += 1;
                        diffs.push(Difference {
                            namespace: ns.clone(),
                            kind: DifferenceKind::ExtraDocument { id },
                        });
                    }
                }
                Some((fp, _, matched)) => {
                    *matched = true;
                    if fp.exact == hash_bytes(d.as_bytes()) {
                        continue;
                    }
                    let order_only = fp.sorted == sorted_hash(&d);
                    if order_only {
                        counts.field_order_only += 1;
                    } else {
                        counts.different += 1;
                    }
                    if counts.listed < cap {
                        counts.listed += 1;
                        if order_only {
                            diffs.push(Difference {
                                namespace: ns.clone(),
                                kind: DifferenceKind::FieldOrderOnly { id },
                            });
                        } else {
                            let detail = describe_against_source(&src, &d).await;
                            diffs.push(Difference {
                                namespace: ns.clone(),
                                kind: DifferenceKind::DocumentDiffers { id, detail },
                            });
                        }
                    }
                }
            }
        }
        Ok::<(), mongodb::error::Error>(())
    };
    if let Err(e) = scan.await {
        diffs.push(read_error(&ns, Side::Target, e));
        return;
    }
    let mut missing: Vec<&Bson> = seen
        .values()
        .filter(|(_, _, matched)| !matched)
        .map(|(_, id, _)| id)
        .collect();
    counts.missing = missing.len() as u64;
    missing.sort_by_key(|id| id.to_string());
    for id in missing {
        if counts.listed >= cap {
            break;
        }
        counts.listed += 1;
        diffs.push(Difference {
            namespace: ns.clone(),
            kind: DifferenceKind::MissingDocument { id: id.clone() },
        });
    }
    let total = counts.missing + counts.extra + counts.different + counts.field_order_only;
    if total as usize > counts.listed {
        // Approximate split of the unlisted ones: report totals minus what was listed.
        let listed_missing = diffs
            .iter()
            .filter(|d| {
                d.namespace == ns && matches!(d.kind, DifferenceKind::MissingDocument { .. })
            })
            .count() as u64;
        let listed_extra = diffs
            .iter()
            .filter(|d| d.namespace == ns && matches!(d.kind, DifferenceKind::ExtraDocument { .. }))
            .count() as u64;
        let listed_diff = diffs
            .iter()
            .filter(|d| {
                d.namespace == ns && matches!(d.kind, DifferenceKind::DocumentDiffers { .. })
            })
            .count() as u64;
        let listed_order = diffs
            .iter()
            .filter(|d| d.namespace == ns && d.is_field_order_only())
            .count() as u64;
        diffs.push(Difference {
            namespace: ns.clone(),
            kind: DifferenceKind::MoreDocumentDifferences {
                missing: counts.missing - listed_missing,
                extra: counts.extra - listed_extra,
                different: counts.different - listed_diff,
                field_order_only: counts.field_order_only - listed_order,
            },
        });
    }
}

/// Fetch the source document with the same `_id` and name the differing fields
/// (best effort: the lookup uses `_id` equality).
async fn describe_against_source(
    src: &mongodb::Collection<RawDocumentBuf>,
    target_doc: &RawDocument,
) -> String {
    let tdoc = bson_of(target_doc);
    let Some(id) = tdoc.get("_id").cloned() else {
        return "target document has no _id".to_string();
    };
    match src.find_one(doc! {"_id": id}).await {
        Ok(Some(s)) => describe_difference(&bson_of(&s), &tdoc),
        Ok(None) => "(source document not found again by _id)".to_string(),
        Err(e) => format!("(could not re-read source document: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::rawdoc;

    #[test]
    fn id_keys_distinguish_types() {
        let a = id_key(&rawdoc! {"_id": 1i32}).expect("key").0;
        let b = id_key(&rawdoc! {"_id": 1i64}).expect("key").0;
        let c = id_key(&rawdoc! {"_id": 1i32, "x": 2}).expect("key").0;
        assert_ne!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, vec![0x10, 1, 0, 0, 0]);
    }

    #[test]
    fn sorted_hash_ignores_order_only() {
        let a = rawdoc! {"_id": 1, "a": 1, "b": {"x": 1, "y": [1, {"p": 1, "q": 2}]}};
        let b = rawdoc! {"b": {"y": [1, {"q": 2, "p": 1}], "x": 1}, "a": 1, "_id": 1};
        let c = rawdoc! {"_id": 1, "a": 1, "b": {"x": 1, "y": [{"p": 1, "q": 2}, 1]}};
        let d = rawdoc! {"_id": 1, "a": 1i64, "b": {"x": 1, "y": [1, {"p": 1, "q": 2}]}};
        assert_eq!(sorted_hash(&a), sorted_hash(&b));
        assert_ne!(sorted_hash(&a), sorted_hash(&c));
        assert_ne!(sorted_hash(&a), sorted_hash(&d));
    }

    #[test]
    fn relaxed_rules() {
        let t = Bson::Boolean(true);
        assert!(relaxed_ok("unique", Some(&t), None));
        assert!(!relaxed_ok("unique", None, Some(&t)));
        assert!(relaxed_ok("hidden", Some(&t), Some(&Bson::Boolean(false))));
        assert!(relaxed_ok(
            "expireAfterSeconds",
            Some(&Bson::Int32(60)),
            Some(&Bson::Int32(i32::MAX))
        ));
        assert!(!relaxed_ok(
            "expireAfterSeconds",
            None,
            Some(&Bson::Int32(i32::MAX))
        ));
        assert!(!relaxed_ok("sparse", Some(&t), None));
    }

    #[test]
    fn meta_equality_is_ordered_and_numeric() {
        let a = Bson::Document(doc! {"a": 1, "b": 1});
        let b = Bson::Document(doc! {"b": 1, "a": 1});
        let c = Bson::Document(doc! {"a": 1.0, "b": 1i64});
        assert!(!bson_meta_eq(&a, &b));
        assert!(bson_meta_eq(&a, &c));
    }
}
