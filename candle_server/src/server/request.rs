//! `POST /rank` body: decoding and validation in one pass over the JSON.
//!
//! serde's derived structs would reject `1.0` or `"1"` too, but with messages that do not name
//! the field ("invalid type: floating point ... at line 1 column 14"). The visitors below accept
//! any JSON value for the three known fields, remember what kind it was, and leave the message to
//! [`RankRequest::from_json`]. Unknown fields are skipped without being built, but through
//! `deserialize_any` so that serde_json's nesting limit (128) still applies to them (its
//! `Skip` fast path has none); for a repeated key the last value wins, as in Python's
//! `json`/`orjson`.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::error::ApiError;
use super::{DEFAULT_TOP_K, MAX_ITEMS, MAX_TOP_K};

/// A validated ranking request; `item_ids` is sorted and free of duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankRequest {
    pub user_id: i64,
    pub item_ids: Vec<i64>,
    pub top_k: usize,
}

impl RankRequest {
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        // The whole body must be UTF-8, ignored fields included (serde_json skips an ignored
        // string without validating it; Python's JSON decoders reject it).
        let text = std::str::from_utf8(body).map_err(|e| {
            ApiError::BadRequest(format!("malformed JSON: body is not UTF-8 ({e})"))
        })?;
        let raw: RawBody = serde_json::from_str(text)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
        let (user_id, item_ids, top_k) = match raw {
            RawBody::Object { user_id, item_ids, top_k } => (user_id, item_ids, top_k),
            RawBody::NotObject(kind) => {
                return Err(bad(format!(
                    "body must be a JSON object with user_id, item_ids and top_k, got {kind}"
                )))
            }
        };

        let user_id = match user_id {
            None => return Err(bad("user_id is required".into())),
            Some(value) => integer("user_id", value)?,
        };

        let mut item_ids = match item_ids {
            None => return Err(bad("item_ids is required".into())),
            Some(IdList::NotArray(kind)) => {
                return Err(bad(format!("item_ids must be a list of 64-bit integers, got {kind}")))
            }
            Some(IdList::Array { ids, len, first_problem }) => {
                if len == 0 || len > MAX_ITEMS {
                    return Err(bad(format!(
                        "item_ids must have 1 to {MAX_ITEMS} entries, got {len}"
                    )));
                }
                if let Some((index, value)) = first_problem {
                    integer(&format!("item_ids[{index}]"), value)?;
                }
                ids
            }
        };
        item_ids.sort_unstable();
        item_ids.dedup();

        let top_k = match top_k {
            None => DEFAULT_TOP_K,
            Some(value) => integer("top_k", value)?,
        };
        if !(1..=MAX_TOP_K).contains(&top_k) {
            return Err(bad(format!("top_k must be between 1 and {MAX_TOP_K}, got {top_k}")));
        }

        // top_k is within 1..=1000 here, so the conversion cannot truncate.
        Ok(RankRequest { user_id, item_ids, top_k: top_k as usize })
    }
}

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

/// `top_k` is only "an integer" (its range check follows); ids are "a 64-bit integer".
fn integer(field: &str, value: JsonInt) -> Result<i64, ApiError> {
    let what = if field == "top_k" { "an integer" } else { "a 64-bit integer" };
    match value {
        JsonInt::Int(v) => Ok(v),
        JsonInt::OutOfRange => {
            Err(bad(format!("{field} must be {what}, got an integer out of range")))
        }
        JsonInt::NotInt(kind) => Err(bad(format!("{field} must be {what}, got {kind}"))),
    }
}

/// Whatever JSON value stood where an integer was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonInt {
    Int(i64),
    OutOfRange,
    NotInt(&'static str),
}

#[derive(Debug)]
enum IdList {
    NotArray(&'static str),
    /// `ids` holds the integer entries (at most MAX_ITEMS are kept), `len` counts all entries.
    Array {
        ids: Vec<i64>,
        len: usize,
        first_problem: Option<(usize, JsonInt)>,
    },
}

#[derive(Debug)]
enum RawBody {
    NotObject(&'static str),
    Object { user_id: Option<JsonInt>, item_ids: Option<IdList>, top_k: Option<JsonInt> },
}

/// Shared by the visitors that take any JSON value and report what kind stood where they wanted
/// one: `expecting`, and "anything but what we wanted" (drain the value, report its kind).
macro_rules! other_kinds {
    ($result:expr) => {
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($result("a boolean"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($result("a float"))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($result("a string"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($result("null"))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<Skip, Skip>()?.is_some() {}
            Ok($result("an object"))
        }
    };
}

/// Any JSON value, read and dropped. Nested arrays and objects recurse through
/// `deserialize_any`, which counts against serde_json's recursion limit.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SkipVisitor;
        impl<'de> Visitor<'de> for SkipVisitor {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct JsonIntVisitor;

impl<'de> Visitor<'de> for JsonIntVisitor {
    type Value = JsonInt;

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonInt, E> {
        Ok(JsonInt::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonInt, E> {
        Ok(i64::try_from(v).map(JsonInt::Int).unwrap_or(JsonInt::OutOfRange))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonInt, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(JsonInt::NotInt("an array"))
    }

    other_kinds!(JsonInt::NotInt);
}

impl<'de> Deserialize<'de> for JsonInt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonIntVisitor)
    }
}

struct IdListVisitor;

impl<'de> Visitor<'de> for IdListVisitor {
    type Value = IdList;

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IdList, A::Error> {
        let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(16).min(MAX_ITEMS));
        let mut len = 0usize;
        let mut first_problem = None;
        while let Some(value) = seq.next_element::<JsonInt>()? {
            match value {
                JsonInt::Int(id) if ids.len() < MAX_ITEMS => ids.push(id),
                JsonInt::Int(_) => {}
                other => {
                    first_problem.get_or_insert((len, other));
                }
            }
            len += 1;
        }
        Ok(IdList::Array { ids, len, first_problem })
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<IdList, E> {
        Ok(IdList::NotArray("an integer"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<IdList, E> {
        Ok(IdList::NotArray("an integer"))
    }

    other_kinds!(IdList::NotArray);
}

impl<'de> Deserialize<'de> for IdList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IdListVisitor)
    }
}

enum Key {
    UserId,
    ItemIds,
    TopK,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "user_id" => Key::UserId,
                    "item_ids" => Key::ItemIds,
                    "top_k" => Key::TopK,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = RawBody;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawBody, A::Error> {
        let (mut user_id, mut item_ids, mut top_k) = (None, None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::UserId => user_id = Some(map.next_value::<JsonInt>()?),
                Key::ItemIds => item_ids = Some(map.next_value::<IdList>()?),
                Key::TopK => top_k = Some(map.next_value::<JsonInt>()?),
                Key::Other => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(RawBody::Object { user_id, item_ids, top_k })
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawBody, E> {
        Ok(RawBody::NotObject("an integer"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawBody, E> {
        Ok(RawBody::NotObject("an integer"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawBody, E> {
        Ok(RawBody::NotObject("a boolean"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawBody, E> {
        Ok(RawBody::NotObject("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawBody, E> {
        Ok(RawBody::NotObject("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawBody, E> {
        Ok(RawBody::NotObject("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawBody, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(RawBody::NotObject("an array"))
    }
}

impl<'de> Deserialize<'de> for RawBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BodyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<RankRequest, String> {
        RankRequest::from_json(body.as_bytes()).map_err(|e| e.message())
    }

    #[test]
    fn valid_request_with_defaults_dedup_and_unknown_fields() {
        let request =
            parse(r#"{"user_id": 7, "item_ids": [5, 3, 5, 9, 3], "extra": {"a": [1, "x"]}}"#)
                .expect("valid");
        assert_eq!(request, RankRequest { user_id: 7, item_ids: vec![3, 5, 9], top_k: 10 });
        let request = parse(r#"{"top_k": 1000, "item_ids": [-1], "user_id": -5}"#).expect("valid");
        assert_eq!(request, RankRequest { user_id: -5, item_ids: vec![-1], top_k: 1000 });
    }

    #[test]
    fn int64_bounds_are_accepted() {
        let request = parse(&format!(
            r#"{{"user_id": {}, "item_ids": [{}, {}]}}"#,
            i64::MAX,
            i64::MIN,
            i64::MAX
        ))
        .expect("bounds");
        assert_eq!(request.user_id, i64::MAX);
        assert_eq!(request.item_ids, vec![i64::MIN, i64::MAX]);
    }

    #[test]
    fn last_duplicate_key_wins() {
        let request = parse(r#"{"user_id": "x", "user_id": 3, "item_ids": [1]}"#).expect("valid");
        assert_eq!(request.user_id, 3);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("", "malformed JSON"),
            ("{", "malformed JSON"),
            ("{\"user_id\": 1, \"item_ids\": [1], \"x\": \"\u{0}\"}", "malformed JSON"),
            (r#"{"user_id": 1, "item_ids": [1]} x"#, "malformed JSON"),
            ("[1, 2]", "body must be a JSON object with user_id, item_ids and top_k, got an array"),
            ("null", "body must be a JSON object with user_id, item_ids and top_k, got null"),
            (r#"{"item_ids": [1]}"#, "user_id is required"),
            (
                r#"{"user_id": true, "item_ids": [1]}"#,
                "user_id must be a 64-bit integer, got a boolean",
            ),
            (
                r#"{"user_id": 1.0, "item_ids": [1]}"#,
                "user_id must be a 64-bit integer, got a float",
            ),
            (
                r#"{"user_id": 1e3, "item_ids": [1]}"#,
                "user_id must be a 64-bit integer, got a float",
            ),
            (
                r#"{"user_id": "1", "item_ids": [1]}"#,
                "user_id must be a 64-bit integer, got a string",
            ),
            (r#"{"user_id": null, "item_ids": [1]}"#, "user_id must be a 64-bit integer, got null"),
            (
                r#"{"user_id": [1], "item_ids": [1]}"#,
                "user_id must be a 64-bit integer, got an array",
            ),
            (
                r#"{"user_id": 9223372036854775808, "item_ids": [1]}"#,
                "user_id must be a 64-bit integer, got an integer out of range",
            ),
            (r#"{"user_id": 1}"#, "item_ids is required"),
            (
                r#"{"user_id": 1, "item_ids": 5}"#,
                "item_ids must be a list of 64-bit integers, got an integer",
            ),
            (
                r#"{"user_id": 1, "item_ids": {"a": 1}}"#,
                "item_ids must be a list of 64-bit integers, got an object",
            ),
            (r#"{"user_id": 1, "item_ids": []}"#, "item_ids must have 1 to 1000 entries, got 0"),
            (
                r#"{"user_id": 1, "item_ids": [1, 2, "3"]}"#,
                "item_ids[2] must be a 64-bit integer, got a string",
            ),
            (
                r#"{"user_id": 1, "item_ids": [1, true, 2.5]}"#,
                "item_ids[1] must be a 64-bit integer, got a boolean",
            ),
            (
                r#"{"user_id": 1, "item_ids": [18446744073709551615]}"#,
                "item_ids[0] must be a 64-bit integer, got an integer out of range",
            ),
            (
                r#"{"user_id": 1, "item_ids": [1], "top_k": 0}"#,
                "top_k must be between 1 and 1000, got 0",
            ),
            (
                r#"{"user_id": 1, "item_ids": [1], "top_k": 1001}"#,
                "top_k must be between 1 and 1000, got 1001",
            ),
            (
                r#"{"user_id": 1, "item_ids": [1], "top_k": -3}"#,
                "top_k must be between 1 and 1000, got -3",
            ),
            (
                r#"{"user_id": 1, "item_ids": [1], "top_k": 5.0}"#,
                "top_k must be an integer, got a float",
            ),
            (
                r#"{"user_id": 1, "item_ids": [1], "top_k": null}"#,
                "top_k must be an integer, got null",
            ),
        ];
        for (body, expected) in cases {
            let message = parse(body).expect_err(body);
            assert!(
                message.starts_with(expected),
                "body {body:?}: got {message:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_anywhere_is_malformed() {
        let body = b"{\"user_id\": 7, \"item_ids\": [12], \"x\": \"\xff\xfe\"}";
        let err = RankRequest::from_json(body).expect_err("invalid utf-8").message();
        assert!(err.starts_with("malformed JSON: body is not UTF-8"), "{err}");
    }

    #[test]
    fn nesting_is_limited_in_ignored_fields_too() {
        let deep = |n: usize| {
            format!(
                r#"{{"user_id": 7, "item_ids": [12], "x": {}1{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(parse(&deep(100)).is_ok());
        let err = parse(&deep(10_000)).expect_err("too deep");
        assert!(err.starts_with("malformed JSON: recursion limit exceeded"), "{err}");
        let objects = format!(
            r#"{{"user_id": 7, "item_ids": [12], "x": {}1{}}}"#,
            r#"{"a":"#.repeat(10_000),
            "}".repeat(10_000)
        );
        assert!(parse(&objects).expect_err("deep objects").starts_with("malformed JSON"));
    }

    #[test]
    fn item_count_limits() {
        let ids = |n: usize| (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let ok = parse(&format!(r#"{{"user_id": 1, "item_ids": [{}]}}"#, ids(1000))).expect("1000");
        assert_eq!(ok.item_ids.len(), 1000);
        let err =
            parse(&format!(r#"{{"user_id": 1, "item_ids": [{}]}}"#, ids(1001))).expect_err("1001");
        assert_eq!(err, "item_ids must have 1 to 1000 entries, got 1001");
        // Duplicates count as entries of the request but are scored once.
        let dupes = vec!["4"; 1000].join(",");
        let ok = parse(&format!(r#"{{"user_id": 1, "item_ids": [{dupes}]}}"#)).expect("dupes");
        assert_eq!(ok.item_ids, vec![4]);
    }
}
