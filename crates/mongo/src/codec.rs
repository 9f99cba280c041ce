//! Between the adapters' serde types and stored BSON documents.
//!
//! Stored documents have the JSON shape of the port types (the same shape the embedded adapters and the
//! wire use): ids as hyphenated UUID strings, times as RFC 3339 strings (exact to the nanosecond),
//! integers as BSON ints, non-integral numbers as doubles. The conversion goes through
//! `serde_json::Value` on purpose: BSON's own serde mapping would store UUIDs as binary, and its JSON
//! conversion reads `$`-prefixed keys as extended JSON. Bookkeeping fields (`_id`, positions, dates for
//! humans) are added next to the shape and stripped before decoding.

use anyhow::{Context, anyhow, bail};
use mongodb::bson::{Bson, Document};
use ridehail_ports::{StoreError, StoreResult};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};

/// Server error code of a unique-index violation.
const DUPLICATE_KEY: i32 = 11000;

/// The document form of a value whose JSON form is an object.
pub(crate) fn to_document<T: Serialize>(value: &T) -> anyhow::Result<Document> {
    match serde_json::to_value(value).context("serialising for MongoDB")? {
        Value::Object(map) => map_to_document(map),
        other => bail!("expected a JSON object to store, got {other}"),
    }
}

pub(crate) fn json_to_bson(value: Value) -> anyhow::Result<Bson> {
    Ok(match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(b),
        Value::Number(n) => number_to_bson(&n)?,
        Value::String(s) => Bson::String(s),
        Value::Array(items) => Bson::Array(items.into_iter().map(json_to_bson).collect::<anyhow::Result<_>>()?),
        Value::Object(map) => Bson::Document(map_to_document(map)?),
    })
}

fn map_to_document(map: Map<String, Value>) -> anyhow::Result<Document> {
    map.into_iter().map(|(k, v)| Ok((k, json_to_bson(v)?))).collect()
}

fn number_to_bson(n: &Number) -> anyhow::Result<Bson> {
    if let Some(i) = n.as_i64() {
        return Ok(i32::try_from(i).map_or(Bson::Int64(i), Bson::Int32));
    }
    if n.is_u64() {
        // BSON has no unsigned 64-bit integer; a double would silently lose precision.
        bail!("integer {n} does not fit in a signed 64-bit BSON integer");
    }
    n.as_f64().map(Bson::Double).ok_or_else(|| anyhow!("number {n} has no BSON form"))
}

pub(crate) fn bson_to_json(value: Bson) -> anyhow::Result<Value> {
    Ok(match value {
        Bson::Null => Value::Null,
        Bson::Boolean(b) => Value::Bool(b),
        Bson::Int32(i) => Value::from(i),
        Bson::Int64(i) => Value::from(i),
        Bson::Double(f) => Value::Number(Number::from_f64(f).ok_or_else(|| anyhow!("non-finite number {f}"))?),
        Bson::String(s) => Value::String(s),
        Bson::Array(items) => Value::Array(items.into_iter().map(bson_to_json).collect::<anyhow::Result<_>>()?),
        Bson::Document(doc) => Value::Object(document_to_map(doc)?),
        other => bail!("unexpected BSON {:?} value", other.element_type()),
    })
}

fn document_to_map(doc: Document) -> anyhow::Result<Map<String, Value>> {
    doc.into_iter().map(|(k, v)| Ok((k.clone(), bson_to_json(v).with_context(|| format!("field {k:?}"))?))).collect()
}

/// Decodes a stored document into `T`, ignoring `bookkeeping` fields (and `_id`). The error names the
/// collection and the document's key so a corrupt document can be found and fixed.
pub(crate) fn from_document<T: DeserializeOwned>(
    mut doc: Document,
    bookkeeping: &[&str],
    collection: &str,
    key: &str,
) -> StoreResult<T> {
    doc.remove("_id");
    for field in bookkeeping {
        doc.remove(*field);
    }
    let decoded = document_to_map(doc).and_then(|map| Ok(serde_json::from_value(Value::Object(map))?));
    decoded.map_err(|e| StoreError::Corrupt(format!("{collection} document {key} does not decode: {e:#}")))
}

/// A description of `doc` for error messages: the value of `key_field`, else its `_id`.
pub(crate) fn describe(doc: &Document, key_field: &str) -> String {
    match (doc.get(key_field), doc.get("_id")) {
        (Some(Bson::String(s)), _) => format!("{key_field}={s}"),
        (Some(other), _) => format!("{key_field}={other}"),
        (None, Some(id)) => format!("_id={id}"),
        (None, None) => "(without key)".to_owned(),
    }
}

/// A non-negative integer field, stored as a BSON int32 or int64.
pub(crate) fn get_u64(doc: &Document, field: &str) -> anyhow::Result<u64> {
    let value = match doc.get(field) {
        Some(Bson::Int32(i)) => i64::from(*i),
        Some(Bson::Int64(i)) => *i,
        Some(other) => bail!("field {field:?} is {other}, expected an integer"),
        None => bail!("field {field:?} is missing"),
    };
    u64::try_from(value).map_err(|_| anyhow!("field {field:?} is negative: {value}"))
}

/// `u64` values the ports use (versions, sequences, positions) as BSON int64.
pub(crate) fn to_i64(value: u64, what: &str) -> anyhow::Result<i64> {
    i64::try_from(value).map_err(|_| anyhow!("{what} {value} does not fit in a BSON int64"))
}

/// Whether the server refused a write because of a unique index (error code 11000), in any of the
/// shapes the driver reports it: a single write, an `insertMany`, a bulk write or a command.
pub(crate) fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    duplicate_key_index(error).is_some()
}

/// For a duplicate-key failure, the index in the batch of the write that failed (0 for single writes).
pub(crate) fn duplicate_key_index(error: &mongodb::error::Error) -> Option<usize> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) if e.code == DUPLICATE_KEY => Some(0),
        ErrorKind::InsertMany(e) => {
            e.write_errors.as_ref()?.iter().filter(|w| w.code == DUPLICATE_KEY).map(|w| w.index).min()
        }
        ErrorKind::Command(e) if e.code == DUPLICATE_KEY => Some(0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_bson_unchanged() {
        let value = json!({
            "id": "0190c6d8-5f7e-7c3a-9b1e-1a2b3c4d5e6f",
            "small": 7, "negative": -3, "big": 9_000_000_000_i64, "float": 0.1, "whole_float": 2.0,
            "nested": {"list": [1, "two", null, true], "$weird": {"$numberLong": "1"}},
        });
        let bson = json_to_bson(value.clone()).unwrap();
        assert_eq!(bson_to_json(bson).unwrap(), value);
    }

    #[test]
    fn integers_beyond_i64_are_refused_rather_than_rounded() {
        assert!(json_to_bson(json!(u64::MAX)).is_err());
    }

    #[test]
    fn decoding_errors_name_the_collection_and_key() {
        let doc = mongodb::bson::doc! {"_id": 1, "n": "not a number"};
        #[derive(Debug, serde::Deserialize)]
        struct N {
            #[allow(dead_code)]
            n: u64,
        }
        let err = from_document::<N>(doc, &[], "things", "n=1").unwrap_err();
        assert!(format!("{err:#}").contains("things document n=1 does not decode"), "{err:#}");
    }
}
