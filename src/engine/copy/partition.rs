//! Copy partitions: `_id` ranges that respect BSON type bracketing.
//!
//! A range predicate on `_id` only matches values of its bound's type bracket, so a plan
//! made of plain ranges silently skips every `_id` of another type. The planner therefore
//! first counts documents per bracket, then cuts each bracket into ranges whose bounds are of
//! that bracket; the numeric bracket gets an extra partition for NaN, which no range matches.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

use super::super::error::{MongoContext, Result, Side};
use super::super::store::PartitionEntry;

/// The BSON comparison brackets `_id` values can fall into, in BSON sort order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bracket {
    MinKey,
    Null,
    Number,
    String,
    Object,
    BinData,
    ObjectId,
    Bool,
    Date,
    Timestamp,
    Regex,
    Code,
    CodeWithScope,
    MaxKey,
    /// Anything else (dbPointer, …): copied by an exact-type filter.
    Other,
}

impl Bracket {
    /// From a `$type` aggregation name.
    pub fn of_type_name(t: &str) -> Bracket {
        match t {
            "minKey" => Bracket::MinKey,
            "null" | "undefined" => Bracket::Null,
            "int" | "long" | "double" | "decimal" => Bracket::Number,
            "string" | "symbol" => Bracket::String,
            "object" => Bracket::Object,
            "binData" => Bracket::BinData,
            "objectId" => Bracket::ObjectId,
            "bool" => Bracket::Bool,
            "date" => Bracket::Date,
            "timestamp" => Bracket::Timestamp,
            "regex" => Bracket::Regex,
            "javascript" => Bracket::Code,
            "javascriptWithScope" => Bracket::CodeWithScope,
            "maxKey" => Bracket::MaxKey,
            _ => Bracket::Other,
        }
    }

    /// The `$type` names of the bracket.
    pub fn type_names(self) -> &'static [&'static str] {
        match self {
            Bracket::MinKey => &["minKey"],
            Bracket::Null => &["null", "undefined"],
            Bracket::Number => &["int", "long", "double", "decimal"],
            Bracket::String => &["string", "symbol"],
            Bracket::Object => &["object"],
            Bracket::BinData => &["binData"],
            Bracket::ObjectId => &["objectId"],
            Bracket::Bool => &["bool"],
            Bracket::Date => &["date"],
            Bracket::Timestamp => &["timestamp"],
            Bracket::Regex => &["regex"],
            Bracket::Code => &["javascript"],
            Bracket::CodeWithScope => &["javascriptWithScope"],
            Bracket::MaxKey => &["maxKey"],
            Bracket::Other => &[],
        }
    }

    /// Whether range predicates order values of this bracket (so it can be split).
    fn splittable(self) -> bool {
        matches!(
            self,
            Bracket::Number
                | Bracket::String
                | Bracket::Object
                | Bracket::BinData
                | Bracket::ObjectId
                | Bracket::Date
                | Bracket::Timestamp
        )
    }
}

/// Whether `_id` value `v` is a NaN (double or decimal).
pub fn is_nan(v: &Bson) -> bool {
    match v {
        Bson::Double(d) => d.is_nan(),
        Bson::Decimal128(d) => d.to_string().to_ascii_lowercase().contains("nan"),
        _ => false,
    }
}

/// Document counts per bracket, with the exact `$type` names seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeCensus {
    pub brackets: BTreeMap<Bracket, (i64, Vec<String>)>,
}

impl TypeCensus {
    pub fn from_rows(rows: &[(String, i64)]) -> Self {
        let mut c = TypeCensus::default();
        for (t, n) in rows {
            let e = c
                .brackets
                .entry(Bracket::of_type_name(t))
                .or_insert((0, vec![]));
            e.0 += n;
            e.1.push(t.clone());
        }
        c
    }
}

/// The filter selecting a whole bracket (`{}` when it is the collection's only bracket).
pub fn bracket_filter(b: Bracket, seen: &[String], only: bool) -> Document {
    if only {
        return doc! {};
    }
    let names: Vec<Bson> = if b == Bracket::Other {
        seen.iter().map(|s| Bson::String(s.clone())).collect()
    } else {
        b.type_names()
            .iter()
            .map(|s| Bson::String((*s).into()))
            .collect()
    };
    doc! {"_id": {"$type": names}}
}

/// Range filters for a bracket cut at `splits` (ascending, all of the bracket, no NaN). Pure.
pub fn range_filters(b: Bracket, splits: &[Bson]) -> Vec<Document> {
    let mut out = Vec::with_capacity(splits.len() + 2);
    if splits.is_empty() {
        return out;
    }
    out.push(doc! {"_id": {"$lt": splits[0].clone()}});
    for w in splits.windows(2) {
        out.push(doc! {"_id": {"$gte": w[0].clone(), "$lt": w[1].clone()}});
    }
    out.push(doc! {"_id": {"$gte": splits[splits.len() - 1].clone()}});
    if b == Bracket::Number {
        // No range matches NaN; copy NaN `_id`s on their own.
        out.push(doc! {"_id": f64::NAN});
    }
    out
}

/// Plan the partitions of a collection. Pure given the census and split points.
pub fn plan(
    ns: &str,
    census: Option<&TypeCensus>,
    splits: &BTreeMap<Bracket, Vec<Bson>>,
    capped: bool,
) -> Vec<PartitionEntry> {
    let mut filters: Vec<(Document, bool)> = Vec::new();
    match census {
        _ if capped => filters.push((doc! {}, true)),
        None => filters.push((doc! {}, false)),
        Some(c) if c.brackets.is_empty() => filters.push((doc! {}, false)),
        Some(c) => {
            let only = c.brackets.len() == 1;
            for (b, (_, seen)) in &c.brackets {
                match splits.get(b) {
                    Some(s) if !s.is_empty() && b.splittable() => {
                        filters.extend(range_filters(*b, s).into_iter().map(|f| (f, false)))
                    }
                    _ => filters.push((bracket_filter(*b, seen, only), false)),
                }
            }
        }
    }
    filters
        .into_iter()
        .enumerate()
        .map(|(i, (filter, natural))| PartitionEntry {
            id: format!("{ns}#{i}"),
            ns: ns.to_string(),
            index: i as i32,
            filter,
            natural,
            ..Default::default()
        })
        .collect()
}

/// Count documents per `_id` type. `None` when the server cannot say (one partition then).
pub async fn census(source: &Client, db: &str, coll: &str) -> Option<TypeCensus> {
    let c = source.database(db).collection::<Document>(coll);
    let cur = c
        .aggregate(vec![
            doc! {"$group": {"_id": {"$type": "$_id"}, "n": {"$sum": 1}}},
        ])
        .await
        .ok()?;
    let rows: Vec<Document> = cur.try_collect().await.ok()?;
    let rows: Vec<(String, i64)> = rows
        .iter()
        .filter_map(|r| {
            Some((
                r.get_str("_id").ok()?.to_string(),
                super::super::reply::num(r.get("n")),
            ))
        })
        .collect();
    Some(TypeCensus::from_rows(&rows))
}

/// Split points for a bracket holding `count` documents: one every `per_partition` `_id`s in
/// sort order (read from the `_id` index only).
pub async fn split_points(
    source: &Client,
    db: &str,
    coll: &str,
    filter: Document,
    count: i64,
    per_partition: i64,
) -> Result<Vec<Bson>> {
    let mut out = Vec::new();
    if per_partition <= 0 || count <= per_partition {
        return Ok(out);
    }
    let mut cur = source
        .database(db)
        .collection::<Document>(coll)
        .find(filter)
        .sort(doc! {"_id": 1})
        .projection(doc! {"_id": 1})
        .batch_size(10_000)
        .await
        .on(Side::Source, "planning copy partitions")?;
    let mut i: i64 = 0;
    loop {
        let d = match cur.try_next().await {
            Ok(Some(d)) => d,
            Ok(None) => break,
            // Dropped meanwhile: the split points found so far still cut the data that remains.
            Err(e)
                if super::super::error::mongo_code(&e)
                    .is_some_and(|c| super::super::error::COLLECTION_GONE_CODES.contains(&c)) =>
            {
                break
            }
            Err(e) => {
                return Err(super::super::error::EngineError::mongo(
                    Side::Source,
                    "planning copy partitions",
                    e,
                ))
            }
        };
        let Some(id) = d.get("_id") else { continue };
        if is_nan(id) {
            continue;
        }
        if i > 0 && i % per_partition == 0 {
            out.push(id.clone());
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    #[test]
    fn single_bracket_unsplit_is_whole_collection() {
        let c = TypeCensus::from_rows(&[("objectId".into(), 10)]);
        let p = plan("d.c", Some(&c), &BTreeMap::new(), false);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].filter, doc! {});
        assert_eq!(p[0].id, "d.c#0");
    }

    #[test]
    fn mixed_types_get_a_partition_per_bracket() {
        let c = TypeCensus::from_rows(&[
            ("int".into(), 3),
            ("double".into(), 2),
            ("string".into(), 5),
            ("object".into(), 1),
        ]);
        let p = plan("d.c", Some(&c), &BTreeMap::new(), false);
        let f: Vec<_> = p.iter().map(|p| p.filter.clone()).collect();
        assert_eq!(
            f,
            vec![
                doc! {"_id": {"$type": ["int", "long", "double", "decimal"]}},
                doc! {"_id": {"$type": ["string", "symbol"]}},
                doc! {"_id": {"$type": ["object"]}},
            ]
        );
    }

    #[test]
    fn numeric_splits_cover_nan() {
        let c = TypeCensus::from_rows(&[("int".into(), 300), ("double".into(), 1)]);
        let mut s = BTreeMap::new();
        s.insert(Bracket::Number, vec![Bson::Int32(100), Bson::Int32(200)]);
        let p = plan("d.c", Some(&c), &s, false);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].filter, doc! {"_id": {"$lt": 100}});
        assert_eq!(p[1].filter, doc! {"_id": {"$gte": 100, "$lt": 200}});
        assert_eq!(p[2].filter, doc! {"_id": {"$gte": 200}});
        assert!(p[3].filter.get_document("_id").is_err());
        assert!(is_nan(p[3].filter.get("_id").expect("nan filter")));
    }

    #[test]
    fn split_string_and_unsplit_objectid() {
        let c = TypeCensus::from_rows(&[("string".into(), 10), ("objectId".into(), 2)]);
        let mut s = BTreeMap::new();
        s.insert(Bracket::String, vec![Bson::String("m".into())]);
        let p = plan("d.c", Some(&c), &s, false);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].filter, doc! {"_id": {"$lt": "m"}});
        assert_eq!(p[1].filter, doc! {"_id": {"$gte": "m"}});
        assert_eq!(p[2].filter, doc! {"_id": {"$type": ["objectId"]}});
        let _ = ObjectId::new();
    }

    #[test]
    fn capped_is_one_natural_partition() {
        let c = TypeCensus::from_rows(&[("int".into(), 10)]);
        let p = plan("d.c", Some(&c), &BTreeMap::new(), true);
        assert_eq!(p.len(), 1);
        assert!(p[0].natural);
    }

    #[test]
    fn unknown_census_is_one_partition() {
        let p = plan("d.c", None, &BTreeMap::new(), false);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].filter, doc! {});
    }

    #[test]
    fn nan_detection() {
        assert!(is_nan(&Bson::Double(f64::NAN)));
        assert!(!is_nan(&Bson::Double(1.0)));
        assert!(is_nan(&Bson::Decimal128(
            "NaN".parse().expect("decimal nan")
        )));
    }
}
