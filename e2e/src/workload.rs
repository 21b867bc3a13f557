//! A seeded, deterministic workload generator and a bulk dataset loader.
//!
//! The [`Workload`] drives a realistic mix of writes on a source deployment: inserts of varied
//! BSON types and sizes with mixed `_id` types, nested and array updates (`$set`, `$unset`,
//! `$inc`, `$push`, `$pull`, `$addToSet`, array indexes, pipeline updates), replaces, deletes,
//! multi-document transactions and, optionally, DDL (create, drop, rename, index create/drop,
//! `collMod`). It runs sequentially from one seeded RNG, so the same seed against the same
//! starting state issues the same operations.
//!
//! It never writes to `admin`, `local`, `config` or `mongoferry`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{
    doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document, Regex, Timestamp,
};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{Collation, CollationStrength, IndexOptions};
use mongodb::{Client, IndexModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Databases the workload and the loader refuse to touch.
pub const FORBIDDEN_DATABASES: &[&str] = &["admin", "local", "config", "mongoferry"];

/// 2024-01-01T00:00:00Z in milliseconds: base of generated dates (deterministic content).
const DATE_BASE_MS: i64 = 1_704_067_200_000;
/// TTL used by the workload's TTL indexes: long enough that nothing ever expires.
const WORKLOAD_TTL_SECONDS: i64 = 400_000_000;

const KINDS: &[&str] = &["alpha", "beta", "gamma", "delta", "epsilon"];
const TAGS: &[&str] = &[
    "red", "green", "blue", "cyan", "magenta", "yellow", "black", "white",
];

/// How the workload behaves.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub seed: u64,
    /// Databases written to (never admin/local/config/mongoferry).
    pub databases: Vec<String>,
    /// Collections per database (`c0`, `c1`, ...), created on first use.
    pub collections_per_db: usize,
    /// Rate limit; `None` runs as fast as the server answers.
    pub ops_per_sec: Option<u32>,
    /// Include DDL: create, drop, rename, index create/drop, collMod.
    pub ddl: bool,
    /// Include multi-document transactions (skipped if the server refuses them).
    pub transactions: bool,
    /// Upper bound of a generated document's size.
    pub max_doc_bytes: usize,
    /// How many existing `_id`s per collection to learn at start, so updates and deletes
    /// also hit pre-existing (seeded) documents.
    pub preload_ids: usize,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 1,
            databases: vec!["wl_app".to_string(), "wl_logs".to_string()],
            collections_per_db: 3,
            ops_per_sec: None,
            ddl: false,
            transactions: true,
            max_doc_bytes: 64 * 1024,
            preload_ids: 10_000,
        }
    }
}

/// The kinds of operations, as counted in [`WorkloadStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Insert,
    InsertMany,
    UpdateSet,
    UpdateUnset,
    UpdateInc,
    UpdatePush,
    UpdatePull,
    UpdateAddToSet,
    UpdateArrayIndex,
    UpdatePipeline,
    UpdateMany,
    Replace,
    Delete,
    DeleteMany,
    Transaction,
    CreateCollection,
    DropCollection,
    RenameCollection,
    CreateIndex,
    DropIndex,
    CollMod,
}

impl OpKind {
    pub fn is_ddl(self) -> bool {
        matches!(
            self,
            OpKind::CreateCollection
                | OpKind::DropCollection
                | OpKind::RenameCollection
                | OpKind::CreateIndex
                | OpKind::DropIndex
                | OpKind::CollMod
        )
    }
}

/// What a workload did.
#[derive(Debug, Clone, Default)]
pub struct WorkloadStats {
    /// Successful operations per kind (a transaction counts once, as `Transaction`).
    pub ops: BTreeMap<OpKind, u64>,
    /// Documents written by inserts (including inside transactions).
    pub docs_inserted: u64,
    /// Operations drawn but not applicable (e.g. drop an index when there is none).
    pub skipped: u64,
    /// Unexpected errors (a healthy run has 0).
    pub errors: u64,
    /// Errors a concurrent, randomised workload legitimately meets (duplicate key, write
    /// conflict, namespace not found after a DDL race, ...).
    pub expected_errors: u64,
    /// First messages of unexpected errors (up to 20).
    pub error_samples: Vec<String>,
    /// Operations the server refused as unsupported (feature name -> example message).
    pub unsupported: BTreeMap<String, String>,
    /// `Some(false)` when transactions were attempted and the server does not support them.
    pub transactions_supported: Option<bool>,
    pub elapsed: Duration,
}

impl WorkloadStats {
    /// Successful operations.
    pub fn total_ops(&self) -> u64 {
        self.ops.values().sum()
    }

    /// Every operation drawn: successful, skipped and failed.
    pub fn attempted(&self) -> u64 {
        self.total_ops() + self.skipped + self.errors + self.expected_errors
    }

    pub fn count(&self, kind: OpKind) -> u64 {
        self.ops.get(&kind).copied().unwrap_or(0)
    }
}

/// Types of `_id` generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdType {
    ObjectId,
    Int32,
    Int64,
    Double,
    String,
    Document,
    Uuid,
}

impl IdType {
    pub const ALL: [IdType; 7] = [
        IdType::ObjectId,
        IdType::Int32,
        IdType::Int64,
        IdType::Double,
        IdType::String,
        IdType::Document,
        IdType::Uuid,
    ];
}

/// Generates unique `_id`s of every type from a counter; `space` keeps different generators
/// (the loader, workloads of different seeds) apart.
#[derive(Debug, Clone)]
struct IdGen {
    space: u32,
    counter: i64,
}

impl IdGen {
    fn new(space: u32) -> Self {
        IdGen { space, counter: 0 }
    }

    fn next(&mut self, ty: IdType, rng: &mut StdRng) -> Bson {
        let c = self.counter;
        self.counter += 1;
        let space = i64::from(self.space);
        match ty {
            IdType::ObjectId => Bson::ObjectId(ObjectId::from_bytes(rng.random())),
            // space 0: 0.., other spaces: 1e9 + space * 1e6 ..
            IdType::Int32 => {
                let v = if space == 0 {
                    c
                } else {
                    1_000_000_000 + (space % 1000) * 1_000_000 + c
                };
                Bson::Int32(i32::try_from(v).unwrap_or(i32::MAX - (c % 1000) as i32))
            }
            IdType::Int64 => Bson::Int64((1i64 << 40) + (space << 28) + c),
            IdType::Double => Bson::Double(if space == 0 {
                c as f64 + 0.5
            } else {
                -(space as f64) * 1e7 - c as f64 - 0.25
            }),
            IdType::String => Bson::String(format!("id-{space}-{c:08}")),
            IdType::Document => Bson::Document(doc! {"space": space, "n": c}),
            IdType::Uuid => Bson::Binary(Binary {
                subtype: BinarySubtype::Uuid,
                bytes: rng.random::<[u8; 16]>().to_vec(),
            }),
        }
    }
}

/// Size distribution of generated documents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeDistribution {
    /// About this many bytes each.
    Fixed(usize),
    Uniform {
        min: usize,
        max: usize,
    },
    /// 80% under 512 B, 15% up to 8 KiB, 5% up to `max`.
    Realistic {
        max: usize,
    },
}

impl SizeDistribution {
    fn sample(&self, rng: &mut StdRng) -> usize {
        match *self {
            SizeDistribution::Fixed(n) => n,
            SizeDistribution::Uniform { min, max } => rng.random_range(min..=max.max(min)),
            SizeDistribution::Realistic { max } => {
                let p: f64 = rng.random();
                let hi = if p < 0.80 {
                    512
                } else if p < 0.95 {
                    8 * 1024
                } else {
                    max
                };
                rng.random_range(200..=hi.clamp(200, max.max(200)))
            }
        }
    }
}

/// Generate one document of roughly `target_bytes` with varied BSON types.
pub fn generate_document(rng: &mut StdRng, id: Bson, seq: i64, target_bytes: usize) -> Document {
    let mut d = doc! {
        "_id": id,
        "seq": seq,
        "kind": KINDS[rng.random_range(0..KINDS.len())],
        "n": rng.random_range(-1000..100_000i32),
        "big": rng.random::<i64>() >> rng.random_range(0..40),
        "score": (rng.random::<f64>() - 0.3) * 1000.0,
        "price": format!("{}.{:02}", rng.random_range(0..100_000), rng.random_range(0..100))
            .parse::<Decimal128>()
            .map(Bson::Decimal128)
            .unwrap_or(Bson::Null),
        "created": DateTime::from_millis(DATE_BASE_MS + rng.random_range(0..31_536_000_000i64)),
        "active": rng.random_bool(0.5),
        "ref": ObjectId::from_bytes(rng.random()),
        "counter": 0i32,
    };
    let ntags = rng.random_range(0..6);
    let tags: Vec<Bson> = (0..ntags)
        .map(|_| Bson::String(TAGS[rng.random_range(0..TAGS.len())].to_string()))
        .collect();
    d.insert("tags", tags);
    let list: Vec<Bson> = (0..rng.random_range(0..5))
        .map(|_| Bson::Int32(rng.random_range(0..100)))
        .collect();
    d.insert(
        "nested",
        doc! {
            "a": {"b": rng.random_range(0..1000i32), "c": random_word(rng)},
            "list": list,
            "when": DateTime::from_millis(DATE_BASE_MS + rng.random_range(0..1_000_000_000i64)),
        },
    );
    let items: Vec<Bson> = (0..rng.random_range(0..4))
        .map(|i| {
            Bson::Document(doc! {
                "sku": format!("sku-{}", rng.random_range(0..10_000)),
                "qty": rng.random_range(1..50i32),
                "line": i,
            })
        })
        .collect();
    d.insert("items", items);
    // Occasional rarer types.
    if rng.random_bool(0.3) {
        let len = rng.random_range(0..256);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        d.insert(
            "blob",
            Binary {
                subtype: BinarySubtype::Generic,
                bytes,
            },
        );
    }
    if rng.random_bool(0.1) {
        d.insert(
            "uuid",
            Binary {
                subtype: BinarySubtype::Uuid,
                bytes: rng.random::<[u8; 16]>().to_vec(),
            },
        );
    }
    if rng.random_bool(0.05) {
        d.insert("nothing", Bson::Null);
    }
    if rng.random_bool(0.05) {
        d.insert("text", "héllo wörld ✓ 日本語 🚀");
    }
    if rng.random_bool(0.03) {
        d.insert(
            "pattern",
            Regex {
                pattern: "^ab+c$".into(),
                options: "i".into(),
            },
        );
    }
    if rng.random_bool(0.03) {
        d.insert("bounds", doc! {"lo": Bson::MinKey, "hi": Bson::MaxKey});
    }
    if rng.random_bool(0.02) {
        d.insert(
            "stamp",
            Timestamp {
                time: 1_700_000_000 + rng.random_range(0..1_000_000),
                increment: rng.random_range(1..100),
            },
        );
    }
    if rng.random_bool(0.03) {
        let special = [-0.0f64, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1e-300];
        d.insert("special", special[rng.random_range(0..special.len())]);
    }
    if rng.random_bool(0.03) {
        d.insert(
            "extremes",
            vec![Bson::Int64(i64::MIN), Bson::Int64(i64::MAX)],
        );
    }
    if rng.random_bool(0.02) {
        // Deeply nested document.
        let mut inner = doc! {"leaf": rng.random_range(0..10i32)};
        for level in 0..rng.random_range(2..20) {
            inner = doc! {"level": level, "child": inner};
        }
        d.insert("deep", inner);
    }
    // Pad to the target size.
    let size = mongodb::bson::to_vec(&d).map(|v| v.len()).unwrap_or(0);
    if target_bytes > size + 16 {
        d.insert("payload", random_text(rng, target_bytes - size - 16));
    }
    d
}

fn random_word(rng: &mut StdRng) -> String {
    let len = rng.random_range(3..12);
    (0..len)
        .map(|_| (b'a' + rng.random_range(0..26u8)) as char)
        .collect()
}

fn random_text(rng: &mut StdRng, len: usize) -> String {
    // Cheap, compressible-but-not-trivial text.
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        s.push_str(TAGS[rng.random_range(0..TAGS.len())]);
        s.push(' ');
        s.push_str(&rng.random_range(0..1_000_000u32).to_string());
        s.push(' ');
    }
    s.truncate(len);
    s
}

fn code_of(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(im) => im
            .write_errors
            .as_ref()
            .and_then(|w| w.first().map(|w| w.code))
            .or_else(|| im.write_concern_error.as_ref().map(|w| w.code)),
        ErrorKind::BulkWrite(_) => None,
        _ => None,
    }
}

/// Codes a randomised workload meets legitimately.
const EXPECTED_CODES: &[i32] = &[
    11000, // DuplicateKey
    26,    // NamespaceNotFound (DDL race with the model)
    48,    // NamespaceExists
    27,    // IndexNotFound
    85,    // IndexOptionsConflict
    86,    // IndexKeySpecsConflict
    112,   // WriteConflict
    251,   // NoSuchTransaction
    14,    // TypeMismatch ($inc on a field a replace changed)
    28,    // PathNotViable (items.<i>.qty on a null array element)
    121,   // DocumentValidationFailure
    10334, // BSONObjectTooLarge after many $push
    17419, // document too large after update
];

/// Codes meaning "the server does not support this".
const UNSUPPORTED_CODES: &[i32] = &[
    59,    // CommandNotFound
    115,   // CommandNotSupported
    238,   // NotImplemented
    2,     // BadValue (unknown option)
    9,     // FailedToParse
    40415, // unknown field (IDL)
    72,    // InvalidOptions
];

#[derive(Debug, Clone)]
struct CollState {
    db: String,
    name: String,
    ids: Vec<Bson>,
    /// User indexes the workload created: name -> is TTL.
    indexes: BTreeMap<String, bool>,
}

/// The workload generator. See the module docs.
pub struct Workload {
    cfg: WorkloadConfig,
    rng: StdRng,
    ids: IdGen,
    seq: i64,
    colls: Vec<CollState>,
    stats: WorkloadStats,
    ddl_counter: u64,
    transactions_ok: Option<bool>,
    prepared: bool,
}

/// A workload running in a background task.
pub struct WorkloadHandle {
    stop: Arc<AtomicBool>,
    join: tokio::task::JoinHandle<WorkloadStats>,
}

impl WorkloadHandle {
    /// Ask the workload to stop after its current operation and return its statistics.
    pub async fn stop(self) -> WorkloadStats {
        self.stop.store(true, Ordering::SeqCst);
        self.join.await.expect("workload task panicked")
    }

    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

fn check_db_name(db: &str) {
    assert!(
        !FORBIDDEN_DATABASES.contains(&db),
        "the workload must never write to database {db:?}"
    );
}

impl Workload {
    /// Panics when a configured database is one of [`FORBIDDEN_DATABASES`] or none is given.
    pub fn new(cfg: WorkloadConfig) -> Self {
        assert!(
            !cfg.databases.is_empty(),
            "workload needs at least one database"
        );
        assert!(
            cfg.collections_per_db > 0,
            "workload needs collections_per_db > 0"
        );
        for db in &cfg.databases {
            check_db_name(db);
        }
        let colls = cfg
            .databases
            .iter()
            .flat_map(|db| {
                (0..cfg.collections_per_db).map(move |i| CollState {
                    db: db.clone(),
                    name: format!("c{i}"),
                    ids: Vec::new(),
                    indexes: BTreeMap::new(),
                })
            })
            .collect();
        let space = 1 + (cfg.seed % 4000) as u32;
        Workload {
            rng: StdRng::seed_from_u64(cfg.seed),
            ids: IdGen::new(space),
            seq: 1_000_000_000_000 + i64::from(space) * 1_000_000_000,
            colls,
            stats: WorkloadStats::default(),
            ddl_counter: 0,
            transactions_ok: None,
            prepared: false,
            cfg,
        }
    }

    pub fn config(&self) -> &WorkloadConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &WorkloadStats {
        &self.stats
    }

    /// Run for `duration` and return the statistics of this run.
    pub async fn run_for(&mut self, client: &Client, duration: Duration) -> WorkloadStats {
        let stop = AtomicBool::new(false);
        self.run_until(client, Some(Instant::now() + duration), None, &stop)
            .await
    }

    /// Run exactly `n` operations (deterministic for a given seed and starting state).
    pub async fn run_ops(&mut self, client: &Client, n: u64) -> WorkloadStats {
        let stop = AtomicBool::new(false);
        self.run_until(client, None, Some(n), &stop).await
    }

    /// Run in a background task until [`WorkloadHandle::stop`].
    pub fn spawn(client: Client, cfg: WorkloadConfig) -> WorkloadHandle {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let join = tokio::spawn(async move {
            let mut w = Workload::new(cfg);
            w.run_until(&client, None, None, &flag).await
        });
        WorkloadHandle { stop, join }
    }

    async fn run_until(
        &mut self,
        client: &Client,
        deadline: Option<Instant>,
        max_ops: Option<u64>,
        stop: &AtomicBool,
    ) -> WorkloadStats {
        self.stats = WorkloadStats::default();
        let start = Instant::now();
        if !self.prepared {
            self.prepare(client).await;
            self.prepared = true;
        }
        let mut i: u64 = 0;
        loop {
            if stop.load(Ordering::SeqCst)
                || deadline.is_some_and(|d| Instant::now() >= d)
                || max_ops.is_some_and(|m| i >= m)
            {
                break;
            }
            if let Some(rate) = self.cfg.ops_per_sec.filter(|r| *r > 0) {
                let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
                let now = Instant::now();
                if due > now {
                    tokio::time::sleep(due - now).await;
                }
            }
            self.step(client).await;
            i += 1;
        }
        self.stats.elapsed = start.elapsed();
        self.stats.transactions_supported = self.transactions_ok;
        self.stats.clone()
    }

    /// Learn existing `_id`s so updates and deletes also hit pre-existing documents.
    async fn prepare(&mut self, client: &Client) {
        if self.cfg.preload_ids == 0 {
            return;
        }
        for i in 0..self.colls.len() {
            let (db, name) = (self.colls[i].db.clone(), self.colls[i].name.clone());
            let coll = client.database(&db).collection::<Document>(&name);
            let found = async {
                let mut cursor = coll
                    .find(doc! {})
                    .projection(doc! {"_id": 1})
                    .sort(doc! {"_id": 1})
                    .limit(self.cfg.preload_ids as i64)
                    .await?;
                let mut ids = Vec::new();
                while let Some(d) = cursor.try_next().await? {
                    if let Some(id) = d.get("_id") {
                        ids.push(id.clone());
                    }
                }
                Ok::<_, MongoError>(ids)
            }
            .await;
            match found {
                Ok(ids) => self.colls[i].ids = ids,
                Err(e) => self.record_error("preload", &e),
            }
        }
    }

    fn record_ok(&mut self, kind: OpKind) {
        *self.stats.ops.entry(kind).or_insert(0) += 1;
    }

    fn record_error(&mut self, what: &str, e: &MongoError) {
        let code = code_of(e);
        let transient = e.contains_label("TransientTransactionError");
        if transient || code.is_some_and(|c| EXPECTED_CODES.contains(&c)) {
            self.stats.expected_errors += 1;
        } else if code.is_some_and(|c| UNSUPPORTED_CODES.contains(&c)) {
            self.stats.expected_errors += 1;
            self.stats
                .unsupported
                .entry(what.to_string())
                .or_insert_with(|| e.to_string());
        } else {
            self.stats.errors += 1;
            if self.stats.error_samples.len() < 20 {
                let mut msg = format!("{what}: code {code:?}: {e}");
                if let Some(cut) = msg.find(", server response:") {
                    msg.truncate(cut);
                }
                msg.truncate(600);
                self.stats.error_samples.push(msg);
            }
        }
    }

    fn pick_coll(&mut self) -> usize {
        self.rng.random_range(0..self.colls.len())
    }

    fn next_id(&mut self) -> Bson {
        let ty = IdType::ALL[self.rng.random_range(0..IdType::ALL.len())];
        self.ids.next(ty, &mut self.rng)
    }

    fn next_doc(&mut self) -> Document {
        let id = self.next_id();
        self.seq += 1;
        let size = SizeDistribution::Realistic {
            max: self.cfg.max_doc_bytes,
        }
        .sample(&mut self.rng);
        generate_document(&mut self.rng, id, self.seq, size)
    }

    fn pick_id(&mut self, c: usize) -> Option<Bson> {
        let ids = &self.colls[c].ids;
        if ids.is_empty() {
            None
        } else {
            Some(ids[self.rng.random_range(0..ids.len())].clone())
        }
    }

    /// One operation, chosen by weight.
    async fn step(&mut self, client: &Client) {
        let tx = self.cfg.transactions && self.transactions_ok != Some(false);
        let ddl = self.cfg.ddl;
        // Weights: insert 25, insert_many 4, updates 33, replace 8, delete 8, delete_many 2,
        // transaction 5, ddl 4.
        let total = 80 + if tx { 5 } else { 0 } + if ddl { 4 } else { 0 };
        let mut r = self.rng.random_range(0..total);
        let c = self.pick_coll();
        if r < 25 {
            return self.insert(client, c).await;
        }
        r -= 25;
        if r < 4 {
            return self.insert_many(client, c).await;
        }
        r -= 4;
        if r < 33 {
            return self.update(client, c).await;
        }
        r -= 33;
        if r < 8 {
            return self.replace(client, c).await;
        }
        r -= 8;
        if r < 8 {
            return self.delete(client, c).await;
        }
        r -= 8;
        if r < 2 {
            return self.delete_many(client, c).await;
        }
        r -= 2;
        if tx && r < 5 {
            return self.transaction(client).await;
        }
        self.ddl(client, c).await
    }

    fn coll(&self, client: &Client, c: usize) -> mongodb::Collection<Document> {
        let s = &self.colls[c];
        client.database(&s.db).collection(&s.name)
    }

    async fn insert(&mut self, client: &Client, c: usize) {
        let d = self.next_doc();
        let id = d.get("_id").cloned().unwrap_or(Bson::Null);
        match self.coll(client, c).insert_one(d).await {
            Ok(_) => {
                self.colls[c].ids.push(id);
                self.stats.docs_inserted += 1;
                self.record_ok(OpKind::Insert);
            }
            Err(e) => self.record_error("insert", &e),
        }
    }

    async fn insert_many(&mut self, client: &Client, c: usize) {
        let n = self.rng.random_range(2..20);
        let docs: Vec<Document> = (0..n).map(|_| self.next_doc()).collect();
        let ids: Vec<Bson> = docs.iter().filter_map(|d| d.get("_id").cloned()).collect();
        match self.coll(client, c).insert_many(docs).await {
            Ok(_) => {
                self.colls[c].ids.extend(ids);
                self.stats.docs_inserted += n as u64;
                self.record_ok(OpKind::InsertMany);
            }
            Err(e) => self.record_error("insert_many", &e),
        }
    }

    fn update_spec(&mut self) -> (OpKind, mongodb::options::UpdateModifications) {
        use mongodb::options::UpdateModifications as U;
        let tag = TAGS[self.rng.random_range(0..TAGS.len())];
        match self.rng.random_range(0..9) {
            0 => (
                OpKind::UpdateSet,
                U::Document(doc! {"$set": {
                    "nested.a.b": self.rng.random_range(0..1000i32),
                    "kind": KINDS[self.rng.random_range(0..KINDS.len())],
                    "updated": DateTime::from_millis(DATE_BASE_MS + self.rng.random_range(0..1_000_000_000i64)),
                }}),
            ),
            1 => {
                let field =
                    ["tags", "blob", "nested.list", "score", "items"][self.rng.random_range(0..5)];
                (
                    OpKind::UpdateUnset,
                    U::Document(doc! {"$unset": {field: ""}}),
                )
            }
            2 => (
                OpKind::UpdateInc,
                U::Document(
                    doc! {"$inc": {"counter": 1, "nested.a.b": self.rng.random_range(-5..5i32)}},
                ),
            ),
            3 => {
                if self.rng.random_bool(0.5) {
                    (
                        OpKind::UpdatePush,
                        U::Document(doc! {"$push": {"tags": {"$each": [tag, TAGS[0]]}}}),
                    )
                } else {
                    (
                        OpKind::UpdatePush,
                        U::Document(doc! {"$push": {"items": {
                            "$each": [{"sku": format!("sku-{}", self.rng.random_range(0..100)), "qty": 1}],
                            "$slice": -5,
                        }}}),
                    )
                }
            }
            4 => (
                OpKind::UpdatePull,
                U::Document(doc! {"$pull": {"tags": tag}}),
            ),
            5 => (
                OpKind::UpdateAddToSet,
                U::Document(doc! {"$addToSet": {"tags": tag}}),
            ),
            6 => {
                let i = self.rng.random_range(0..4);
                let v = self.rng.random_range(0..100i32);
                (
                    OpKind::UpdateArrayIndex,
                    U::Document(doc! {"$set": {format!("items.{i}.qty"): v, "nested.list.3": v}}),
                )
            }
            7 => (
                OpKind::UpdatePipeline,
                U::Pipeline(vec![doc! {"$set": {
                    "total": {"$add": [{"$ifNull": ["$counter", 0]}, 1]},
                    "nested.flag": {"$not": ["$active"]},
                }}]),
            ),
            _ => (
                OpKind::UpdatePipeline,
                U::Pipeline(vec![
                    doc! {"$set": {"score": {"$multiply": [{"$ifNull": ["$score", 1]}, 2]}}},
                    doc! {"$unset": ["big"]},
                ]),
            ),
        }
    }

    async fn update(&mut self, client: &Client, c: usize) {
        let Some(id) = self.pick_id(c) else {
            return self.insert(client, c).await;
        };
        let (kind, update) = self.update_spec();
        match self
            .coll(client, c)
            .update_one(doc! {"_id": id}, update)
            .await
        {
            Ok(_) => self.record_ok(kind),
            Err(e) => self.record_error(&format!("{kind:?}"), &e),
        }
    }

    async fn replace(&mut self, client: &Client, c: usize) {
        let Some(id) = self.pick_id(c) else {
            return self.insert(client, c).await;
        };
        let mut d = self.next_doc();
        d.insert("_id", id.clone());
        match self.coll(client, c).replace_one(doc! {"_id": id}, d).await {
            Ok(_) => self.record_ok(OpKind::Replace),
            Err(e) => self.record_error("replace", &e),
        }
    }

    async fn delete(&mut self, client: &Client, c: usize) {
        let ids = &self.colls[c].ids;
        if ids.is_empty() {
            return self.insert(client, c).await;
        }
        let i = self.rng.random_range(0..ids.len());
        let id = ids[i].clone();
        match self.coll(client, c).delete_one(doc! {"_id": id}).await {
            Ok(_) => {
                self.colls[c].ids.swap_remove(i);
                self.record_ok(OpKind::Delete);
            }
            Err(e) => self.record_error("delete", &e),
        }
    }

    async fn update_many(&mut self, client: &Client, c: usize) {
        let kind = KINDS[self.rng.random_range(0..KINDS.len())];
        let n = self.rng.random_range(0..1000i32);
        match self
            .coll(client, c)
            .update_many(
                doc! {"kind": kind, "n": {"$lt": n}},
                doc! {"$inc": {"counter": 1}, "$set": {"touched": true}},
            )
            .await
        {
            Ok(_) => self.record_ok(OpKind::UpdateMany),
            Err(e) => self.record_error("update_many", &e),
        }
    }

    async fn delete_many(&mut self, client: &Client, c: usize) {
        if self.rng.random_bool(0.5) {
            return self.update_many(client, c).await;
        }
        let kind = KINDS[self.rng.random_range(0..KINDS.len())];
        let n = self.rng.random_range(-1000..-900i32);
        let filter = doc! {"kind": kind, "n": {"$lt": n}};
        let coll = self.coll(client, c);
        // Learn which ids go away, to keep the model accurate.
        let doomed: Result<Vec<Bson>, MongoError> = async {
            let mut cur = coll
                .find(filter.clone())
                .projection(doc! {"_id": 1})
                .await?;
            let mut v = Vec::new();
            while let Some(d) = cur.try_next().await? {
                v.extend(d.get("_id").cloned());
            }
            Ok(v)
        }
        .await;
        match coll.delete_many(filter).await {
            Ok(_) => {
                if let Ok(doomed) = doomed {
                    self.colls[c].ids.retain(|id| !doomed.contains(id));
                }
                self.record_ok(OpKind::DeleteMany);
            }
            Err(e) => self.record_error("delete_many", &e),
        }
    }

    async fn transaction(&mut self, client: &Client) {
        // Two to four operations over the collections of one database.
        let db_idx = self.rng.random_range(0..self.cfg.databases.len());
        let db = self.cfg.databases[db_idx].clone();
        let in_db: Vec<usize> = (0..self.colls.len())
            .filter(|&i| self.colls[i].db == db)
            .collect();
        if in_db.is_empty() {
            self.stats.skipped += 1;
            return;
        }
        let nops = self.rng.random_range(2..5);
        let mut plan = Vec::new();
        for _ in 0..nops {
            let c = in_db[self.rng.random_range(0..in_db.len())];
            let what = self.rng.random_range(0..3);
            plan.push((c, what));
        }
        let mut session = match client.start_session().await {
            Ok(s) => s,
            Err(e) => return self.record_error("start_session", &e),
        };
        if let Err(e) = session.start_transaction().await {
            self.stats.skipped += 1;
            self.transactions_ok = Some(false);
            self.stats
                .unsupported
                .insert("transactions".into(), e.to_string());
            return;
        }
        let mut inserted: Vec<(usize, Bson)> = Vec::new();
        let mut deleted: Vec<(usize, Bson)> = Vec::new();
        let mut failure = None;
        for (c, what) in plan {
            let coll = self.coll(client, c);
            let res = match (what, self.pick_id(c)) {
                (1, Some(id)) => coll
                    .update_one(
                        doc! {"_id": id},
                        doc! {"$inc": {"counter": 1}, "$set": {"tx": true}},
                    )
                    .session(&mut session)
                    .await
                    .map(|_| ()),
                (2, Some(id)) => {
                    let r = coll
                        .delete_one(doc! {"_id": id.clone()})
                        .session(&mut session)
                        .await
                        .map(|_| ());
                    deleted.push((c, id));
                    r
                }
                _ => {
                    let d = self.next_doc();
                    let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                    inserted.push((c, id));
                    coll.insert_one(d).session(&mut session).await.map(|_| ())
                }
            };
            if let Err(e) = res {
                failure = Some(e);
                break;
            }
        }
        if failure.is_none() {
            if let Err(e) = session.commit_transaction().await {
                failure = Some(e);
            }
        } else {
            let _ = session.abort_transaction().await;
        }
        match failure {
            None => {
                self.transactions_ok = Some(true);
                for (c, id) in &deleted {
                    self.colls[*c].ids.retain(|x| x != id);
                }
                self.stats.docs_inserted += inserted.len() as u64;
                for (c, id) in inserted {
                    self.colls[c].ids.push(id);
                }
                self.record_ok(OpKind::Transaction);
            }
            Some(e) => {
                let code = code_of(&e);
                let msg = e.to_string();
                if self.transactions_ok.is_none()
                    && (code == Some(20)
                        || code == Some(263)
                        || msg.contains("Transaction numbers are only allowed"))
                {
                    self.transactions_ok = Some(false);
                    self.stats.skipped += 1;
                    self.stats.unsupported.insert("transactions".into(), msg);
                } else {
                    self.record_error("transaction", &e);
                }
            }
        }
    }

    async fn ddl(&mut self, client: &Client, c: usize) {
        self.ddl_counter += 1;
        let n = self.ddl_counter;
        match self.rng.random_range(0..10) {
            0 | 1 => self.ddl_create(client, c, n).await,
            2 => self.ddl_drop(client, c).await,
            3 => self.ddl_rename(client, c, n).await,
            4..=6 => self.ddl_create_index(client, c, n).await,
            7 => self.ddl_drop_index(client, c).await,
            _ => self.ddl_coll_mod(client, c).await,
        }
    }

    async fn ddl_create(&mut self, client: &Client, c: usize, n: u64) {
        let db = self.colls[c].db.clone();
        let name = format!("ddl{n}");
        let database = client.database(&db);
        let variant = self.rng.random_range(0..5);
        let res = match variant {
            0 => {
                database
                    .create_collection(&name)
                    .collation(
                        Collation::builder()
                            .locale("en")
                            .strength(CollationStrength::Secondary)
                            .build(),
                    )
                    .await
            }
            1 => {
                database
                    .create_collection(&name)
                    .validator(doc! {"$jsonSchema": {"bsonType": "object", "required": ["seq"]}})
                    .validation_level(mongodb::options::ValidationLevel::Moderate)
                    .validation_action(mongodb::options::ValidationAction::Warn)
                    .await
            }
            2 => database
                .run_command(
                    doc! {"create": &name, "clusteredIndex": {"key": {"_id": 1}, "unique": true}},
                )
                .await
                .map(|_| ()),
            _ => database.create_collection(&name).await,
        };
        match res {
            Ok(()) => {
                self.colls.push(CollState {
                    db,
                    name,
                    ids: Vec::new(),
                    indexes: BTreeMap::new(),
                });
                self.record_ok(OpKind::CreateCollection);
            }
            Err(e) => self.record_error(&format!("create collection variant {variant}"), &e),
        }
    }

    async fn ddl_drop(&mut self, client: &Client, c: usize) {
        let db = self.colls[c].db.clone();
        // Keep at least one collection per database.
        if self.colls.iter().filter(|s| s.db == db).count() < 2 {
            self.stats.skipped += 1;
            return;
        }
        match self.coll(client, c).drop().await {
            Ok(()) => {
                self.colls.remove(c);
                self.record_ok(OpKind::DropCollection);
            }
            Err(e) => self.record_error("drop collection", &e),
        }
    }

    async fn ddl_rename(&mut self, client: &Client, c: usize, n: u64) {
        let s = self.colls[c].clone();
        let base = s.name.split("_r").next().unwrap_or("c").to_string();
        let to = format!("{base}_r{n}");
        let res = client
            .database("admin")
            .run_command(doc! {
                "renameCollection": format!("{}.{}", s.db, s.name),
                "to": format!("{}.{}", s.db, to),
            })
            .await;
        match res {
            Ok(_) => {
                self.colls[c].name = to;
                self.record_ok(OpKind::RenameCollection);
            }
            Err(e) => self.record_error("rename collection", &e),
        }
    }

    async fn ddl_create_index(&mut self, client: &Client, c: usize, n: u64) {
        let variant = self.rng.random_range(0..7);
        let (keys, opts, ttl) = match variant {
            0 => (doc! {"kind": 1}, IndexOptions::builder().build(), false),
            1 => (
                doc! {"kind": 1, "n": -1},
                IndexOptions::builder().sparse(true).build(),
                false,
            ),
            2 => (
                doc! {"nested.a.b": 1},
                IndexOptions::builder()
                    .partial_filter_expression(doc! {"n": {"$gt": 0}})
                    .build(),
                false,
            ),
            3 => (
                doc! {"created": 1},
                IndexOptions::builder()
                    .expire_after(Duration::from_secs(WORKLOAD_TTL_SECONDS as u64))
                    .build(),
                true,
            ),
            4 => (
                doc! {"seq": 1},
                IndexOptions::builder().unique(true).build(),
                false,
            ),
            5 => (
                doc! {"tags": 1},
                IndexOptions::builder().hidden(true).build(),
                false,
            ),
            _ => (
                doc! {"nested.a.c": 1},
                IndexOptions::builder()
                    .collation(Collation::builder().locale("fr").build())
                    .build(),
                false,
            ),
        };
        // mongod refuses a second index on the same key pattern (unless collations or
        // partial filters differ); some test servers accept it. Stay within what mongod takes.
        if let Ok(mut cur) = self.coll(client, c).list_indexes().await {
            while let Ok(Some(ix)) = cur.try_next().await {
                if ix.keys == keys {
                    self.stats.skipped += 1;
                    return;
                }
            }
        }
        let name = format!("ix{n}");
        let mut opts = opts;
        opts.name = Some(name.clone());
        let model = IndexModel::builder().keys(keys).options(opts).build();
        match self.coll(client, c).create_index(model).await {
            Ok(_) => {
                self.colls[c].indexes.insert(name, ttl);
                self.record_ok(OpKind::CreateIndex);
            }
            Err(e) => self.record_error(&format!("create index variant {variant}"), &e),
        }
    }

    async fn ddl_drop_index(&mut self, client: &Client, c: usize) {
        let names: Vec<String> = self.colls[c].indexes.keys().cloned().collect();
        if names.is_empty() {
            self.stats.skipped += 1;
            return;
        }
        let name = names[self.rng.random_range(0..names.len())].clone();
        match self.coll(client, c).drop_index(name.clone()).await {
            Ok(()) => {
                self.colls[c].indexes.remove(&name);
                self.record_ok(OpKind::DropIndex);
            }
            Err(e) => self.record_error("drop index", &e),
        }
    }

    async fn ddl_coll_mod(&mut self, client: &Client, c: usize) {
        let s = self.colls[c].clone();
        let variant = self.rng.random_range(0..3);
        let cmd = match variant {
            0 => doc! {
                "collMod": &s.name,
                "validator": {"n": {"$type": "number"}},
                "validationLevel": if self.rng.random_bool(0.5) { "moderate" } else { "off" },
                "validationAction": "warn",
            },
            1 => {
                let Some((name, _)) = s.indexes.iter().find(|(_, ttl)| !**ttl) else {
                    self.stats.skipped += 1;
                    return;
                };
                doc! {"collMod": &s.name, "index": {"name": name, "hidden": self.rng.random_bool(0.5)}}
            }
            _ => {
                let Some((name, _)) = s.indexes.iter().find(|(_, ttl)| **ttl) else {
                    self.stats.skipped += 1;
                    return;
                };
                doc! {"collMod": &s.name, "index": {
                    "name": name,
                    "expireAfterSeconds": WORKLOAD_TTL_SECONDS + self.rng.random_range(0..1000),
                }}
            }
        };
        match client.database(&s.db).run_command(cmd).await {
            Ok(_) => self.record_ok(OpKind::CollMod),
            Err(e) => self.record_error(&format!("collMod variant {variant}"), &e),
        }
    }
}

/// Documents per `insert_many` of [`seed_dataset`] unless a [`SeedSpec`] says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// The change-stream DDL event types (`showExpandedEvents`) a migration replicates: what
/// DDL on the source produces, and the `operation` labels of the worker's
/// `mongoferry_ddl_applied_total`.
pub const DDL_EVENTS: &[&str] = &[
    "create",
    "createIndexes",
    "dropIndexes",
    "modify",
    "rename",
    "drop",
    "dropDatabase",
];

/// A dataset to bulk-load with [`seed_dataset`].
#[derive(Debug, Clone)]
pub struct SeedSpec {
    pub seed: u64,
    pub database: String,
    pub collection: String,
    pub count: u64,
    pub sizes: SizeDistribution,
    /// `_id` types used in turn (round robin).
    pub id_types: Vec<IdType>,
    /// Also insert one document with `_id: NaN` (and one with `_id: null`).
    pub special_ids: bool,
    pub batch_size: usize,
}

impl SeedSpec {
    /// `count` documents of realistic sizes with every `_id` type, NaN and null included.
    pub fn new(database: &str, collection: &str, count: u64) -> Self {
        SeedSpec {
            seed: 42,
            database: database.to_string(),
            collection: collection.to_string(),
            count,
            sizes: SizeDistribution::Realistic { max: 32 * 1024 },
            id_types: IdType::ALL.to_vec(),
            special_ids: true,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

/// What [`seed_dataset`] inserted.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    pub inserted: u64,
    /// Total BSON bytes inserted.
    pub bytes: u64,
    pub by_id_type: BTreeMap<String, u64>,
}

/// Bulk-load `spec.count` documents (`insert_many` in batches).
///
/// Document `i` has `seq: i` and, unless it is one of the special ones (with
/// `special_ids`, document 0 has `_id: NaN` and document 1 `_id: null`), an `_id` of type
/// `id_types[i % id_types.len()]` derived from `i`: Int32 `i`, Int64 `2^40 + i`, Double
/// `i + 0.5`, String `"id-0-{i:08}"`, Document `{space: 0, n: i}`; ObjectId and UUID are
/// random from the seed.
pub async fn seed_dataset(client: &Client, spec: &SeedSpec) -> mongodb::error::Result<SeedReport> {
    check_db_name(&spec.database);
    let coll = client
        .database(&spec.database)
        .collection::<Document>(&spec.collection);
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut ids = IdGen::new(0);
    let types = if spec.id_types.is_empty() {
        vec![IdType::ObjectId]
    } else {
        spec.id_types.clone()
    };
    let mut report = SeedReport::default();
    let mut batch = Vec::with_capacity(spec.batch_size.max(1));
    let specials = if spec.special_ids {
        vec![("nan", Bson::Double(f64::NAN)), ("null", Bson::Null)]
    } else {
        Vec::new()
    };
    let total = spec.count;
    for i in 0..total {
        let (label, id) = match specials.get(i as usize) {
            Some((label, id)) => (label.to_string(), id.clone()),
            None => {
                let ty = types[(i as usize) % types.len()];
                ids.counter = i as i64;
                (format!("{ty:?}"), ids.next(ty, &mut rng))
            }
        };
        let size = spec.sizes.sample(&mut rng);
        let d = generate_document(&mut rng, id, i as i64, size);
        report.bytes += mongodb::bson::to_vec(&d)
            .map(|v| v.len() as u64)
            .unwrap_or(0);
        *report.by_id_type.entry(label).or_insert(0) += 1;
        batch.push(d);
        if batch.len() >= spec.batch_size.max(1) {
            report.inserted += batch.len() as u64;
            coll.insert_many(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        report.inserted += batch.len() as u64;
        coll.insert_many(batch).await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_deterministic() {
        let mut a = StdRng::seed_from_u64(7);
        let mut b = StdRng::seed_from_u64(7);
        for i in 0..50 {
            let da = generate_document(&mut a, Bson::Int32(i), i64::from(i), 1000);
            let db = generate_document(&mut b, Bson::Int32(i), i64::from(i), 1000);
            assert_eq!(
                mongodb::bson::to_vec(&da).expect("encode"),
                mongodb::bson::to_vec(&db).expect("encode")
            );
        }
    }

    #[test]
    fn sizes_follow_target() {
        let mut rng = StdRng::seed_from_u64(1);
        let d = generate_document(&mut rng, Bson::Int32(1), 1, 10_000);
        let len = mongodb::bson::to_vec(&d).expect("encode").len();
        assert!((9_900..=10_100).contains(&len), "size {len}");
    }

    #[test]
    fn id_spaces_do_not_collide() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut a = IdGen::new(0);
        let mut b = IdGen::new(5);
        for ty in IdType::ALL {
            if matches!(ty, IdType::ObjectId | IdType::Uuid) {
                continue;
            }
            assert_ne!(a.next(ty, &mut rng), b.next(ty, &mut rng), "{ty:?}");
        }
    }

    #[test]
    #[should_panic(expected = "must never write")]
    fn refuses_system_databases() {
        let _ = Workload::new(WorkloadConfig {
            databases: vec!["config".into()],
            ..WorkloadConfig::default()
        });
    }
}
