//! jq expressions as the server holds them: their code, checked for size, and for a plain
//! field path such as `.data.type` the field names, read straight from the raw JSON without
//! building a value. Compiling and running them is `engine::jq`'s, in an expression worker
//! process (`engine::sandbox`); nothing here runs jq.
//!
//! Also the one-pass JSON checks ingest uses on raw bodies.

use serde::Deserialize as _;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use std::sync::Arc;

/// A jq program's code. Cheap to clone; serialised as its code.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Expr {
    code: Arc<str>,
    /// The field names when the program is a plain path such as `.data.type`: such paths are
    /// read straight from the raw JSON, without building the whole value.
    field_path: Option<Arc<[String]>>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.code)
    }
}

/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_SIZE: usize = 16 * 1024;

impl Expr {
    /// An expression with `code`, refused only when it is over [`MAX_EXPRESSION_SIZE`]: whether
    /// it compiles is asked of an expression worker (`Sandbox::check`).
    pub fn new(code: &str) -> Result<Expr, String> {
        if code.len() > MAX_EXPRESSION_SIZE {
            return Err(format!(
                "jq expression of {} bytes: the limit is {MAX_EXPRESSION_SIZE}",
                code.len()
            ));
        }
        Ok(Expr {
            code: code.into(),
            field_path: field_path(code),
        })
    }

    /// The field names when the program is a plain path such as `.data.type`.
    pub fn field_path(&self) -> Option<&[String]> {
        self.field_path.as_deref()
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn code_arc(&self) -> Arc<str> {
        self.code.clone()
    }
}

impl serde::Serialize for Expr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.code)
    }
}

impl<'de> serde::Deserialize<'de> for Expr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Expr, D::Error> {
        let code = std::borrow::Cow::<str>::deserialize(d)?;
        Expr::new(&code).map_err(serde::de::Error::custom)
    }
}

/// `Some(["a", "b"])` for a program that is exactly `.a.b` (identifier-like names only).
fn field_path(code: &str) -> Option<Arc<[String]>> {
    let code = code.trim();
    if !code.starts_with('.') || code.len() < 2 {
        return None;
    }
    let names: Vec<String> = code[1..].split('.').map(str::to_string).collect();
    let identifier = |n: &String| {
        n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    names.iter().all(identifier).then(|| names.into())
}

/// What a plain field path reads from a raw body without jq: `Some(Some(s))` for a string,
/// `Some(None)` for null or a missing field; `None` when jq must decide (another kind of value,
/// a non-object on the way) or the body is not one JSON value.
pub fn read_plain_path(bytes: &[u8], path: &[String]) -> Option<Option<String>> {
    check_json(bytes, Some(path)).ok().flatten()
}

/// Checks that `bytes` hold exactly one JSON value and, in the same pass, reads what the plain
/// field `path` (see [`Expr::field_path`]) holds: `Some(Some(s))` for a string, `Some(None)` for
/// null or a missing field (jq gives null), `None` when jq must decide (another kind of value,
/// or a non-object on the way, where jq may raise an error) or when there is no path. Nothing
/// but the string found is built; everything else is walked as serde_json walks a value it
/// builds (numbers parsed, strings decoded), so this refuses what `serde_json::from_slice`
/// refuses: a number out of range, a string that is not UTF-8 or holds a lone surrogate, and
/// nesting past serde_json's limit ([`MAX_JSON_DEPTH`]).
pub fn check_json(
    bytes: &[u8],
    path: Option<&[String]>,
) -> Result<Option<Option<String>>, serde_json::Error> {
    // Strict JSON is UTF-8 throughout; skipping a string's contents does not check that.
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(serde::de::Error::custom(format!(
            "invalid UTF-8 at byte {}",
            e.valid_up_to()
        )));
    }
    let mut reader = serde_json::Deserializer::from_slice(bytes);
    let found = match path {
        Some(path) => Seek { path }.deserialize(&mut reader)?,
        None => {
            Valid::deserialize(&mut reader)?;
            Found::Other
        }
    };
    reader.end()?;
    Ok(match found {
        Found::Text(s) => Some(Some(s)),
        Found::Null => Some(None),
        Found::Other => None,
    })
}

/// What a field path leads to in a document.
enum Found {
    Text(String),
    Null,
    Other,
}

/// Walks a document, following `path` and checking everything else without keeping it.
struct Seek<'p> {
    path: &'p [String],
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = Found;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = Found;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, s: &str) -> Result<Found, E> {
        Ok(if self.path.is_empty() {
            Found::Text(s.to_owned())
        } else {
            Found::Other
        })
    }
    /// `null`, at the end of the path or on the way (`null.a` is null in jq).
    fn visit_unit<E>(self) -> Result<Found, E> {
        Ok(Found::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Found, E> {
        Ok(Found::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Found, E> {
        Ok(Found::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Found, E> {
        Ok(Found::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Found, E> {
        Ok(Found::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(Found::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let Some((name, rest)) = self.path.split_first() else {
            while map.next_entry::<Valid, Valid>()?.is_some() {}
            return Ok(Found::Other);
        };
        // A missing field is null; of a repeated name the last one counts, as in jq.
        let mut found = Found::Null;
        while let Some(matched) = map.next_key_seed(KeyIs(name))? {
            if matched {
                found = map.next_value_seed(Seek { path: rest })?;
            } else {
                map.next_value::<Valid>()?;
            }
        }
        Ok(found)
    }
}

/// A JSON value checked and dropped as it is read. serde_json skips an `IgnoredAny` with less
/// care than it builds a value (no number range, no UTF-8 or surrogate check in strings, no
/// depth limit): this is read as a value is, with `deserialize_any`.
struct Valid;

impl<'de> serde::Deserialize<'de> for Valid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Valid, D::Error> {
        d.deserialize_any(Valid)
    }
}

impl<'de> Visitor<'de> for Valid {
    type Value = Valid;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_str<E>(self, _: &str) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(Valid)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
        while map.next_entry::<Valid, Valid>()?.is_some() {}
        Ok(Valid)
    }
}

/// Reads an object key and tells whether it is the wanted name, without keeping it.
struct KeyIs<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, s: &str) -> Result<bool, E> {
        Ok(s == self.0)
    }
}

/// The deepest nesting of arrays and objects accepted: serde_json's own limit (it refuses a
/// 128th level), so that what ingest accepts, the schema check and the API can parse.
pub const MAX_JSON_DEPTH: usize = 127;

/// Refuses JSON nested deeper than [`MAX_JSON_DEPTH`] (one pass over the bytes).
pub fn check_depth(bytes: &[u8]) -> Result<(), String> {
    match too_deep(bytes, MAX_JSON_DEPTH) {
        Some(at) => Err(format!(
            "byte offset {at}: nested deeper than {MAX_JSON_DEPTH} levels"
        )),
        None => Ok(()),
    }
}

/// The offset where nesting first exceeds `max`, skipping the insides of strings (with
/// `memchr`: most of a JSON body is string contents).
fn too_deep(bytes: &[u8], max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Jump to the closing quote, stepping over escaped characters.
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', bytes.get(i..)?) {
                        Some(at) if bytes[i + at] == b'\\' => i += at + 2,
                        Some(at) => {
                            i += at;
                            break;
                        }
                        None => return None,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::jq::{Programs, parse_value};

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        let nested = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert_eq!(too_deep(nested(3).as_bytes(), 3), None);
        assert_eq!(too_deep(nested(4).as_bytes(), 3), Some(3));
        // Brackets, quotes and escapes inside strings do not count.
        let tricky =
            serde_json::json!({"a": "[[[[{{{{", "b": "\"[[[[\\", "c": [["x\"]]]]"]]}).to_string();
        assert_eq!(too_deep(tricky.as_bytes(), 3), None);
        let inner = tricky.find("[[\"x").unwrap() + 1;
        assert_eq!(too_deep(tricky.as_bytes(), 2), Some(inner), "{tricky}");
        // A string cut off, or an escape at the very end, is not a panic.
        for cut in [r#"{"a":"abc"#, r#"{"a":"abc\"#, "\"\\"] {
            assert_eq!(too_deep(cut.as_bytes(), 1), None);
        }
        assert!(check_depth(nested(MAX_JSON_DEPTH).as_bytes()).is_ok());
        assert!(check_depth(nested(MAX_JSON_DEPTH + 1).as_bytes()).is_err());
        // The limit is serde_json's: what passes here, it parses.
        let parse = |n| serde_json::from_str::<serde_json::Value>(&nested(n));
        assert!(parse(MAX_JSON_DEPTH).is_ok());
        assert!(parse(MAX_JSON_DEPTH + 1).is_err());
    }

    #[test]
    fn plain_paths_read_from_raw_json_agree_with_jq() {
        for code in [
            ".type",
            ".data.kind",
            ".a.b.c",
            ".missing",
            ".n",
            ".arr",
            ".s.x",
            ".nul.x",
            ".esc",
        ] {
            let e = Expr::new(code).unwrap();
            let body = br#"{"type":"user.created","data":{"kind":"k","x":1},"n":7,"arr":[1],"s":"str","nul":null,"a":{"b":{"c":"deep"}},"esc":"a\"b\u00e9","type":"last wins"}"#;
            let jq = Programs::default().string(&e, &parse_value(body).unwrap());
            // Where the raw read answers, it agrees with jq; where it does not, jq decides.
            if let Some(fast) = read_plain_path(body, e.field_path().unwrap()) {
                assert_eq!(Ok(fast), jq, "{code}");
            }
        }
        assert!(field_path(".a.b").is_some());
        assert!(field_path(".a[0]").is_none());
        assert!(field_path(".a | .b").is_none());
        assert!(field_path(".\"a b\"").is_none());
        assert!(field_path(".").is_none());
    }

    #[test]
    fn the_one_pass_check_refuses_what_the_parser_refuses() {
        let path: Vec<String> = vec!["type".into()];
        for bad in [
            &br#"{"type":"a"} x"#[..],
            br#"{"type":"a","b":[1,]}"#,
            br#"{"b":{"c":tru},"type":"a"}"#,
            br#"{"type":"a""#,
            b"",
            // In values skipped on the way: not UTF-8, a lone surrogate, a number out of range.
            b"{\"type\":\"a\",\"b\":\"\xc0\"}",
            br#"{"b":["\ud800"],"type":"a"}"#,
            br#"{"type":"a","b":{"c":1e400}}"#,
        ] {
            let ours = check_json(bad, Some(&path));
            let parser = serde_json::from_slice::<serde_json::Value>(bad);
            assert!(
                ours.is_err() && parser.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let body = br#"{"b":{"type":"inner"},"type":"outer","c":[{"type":1}]}"#;
        assert_eq!(
            check_json(body, Some(&path)).unwrap(),
            Some(Some("outer".into()))
        );
        assert_eq!(check_json(body, None).unwrap(), None);
        assert_eq!(
            check_json(b"[1,2]", Some(&path)).unwrap(),
            None,
            "jq decides"
        );
        assert_eq!(check_json(b"null", Some(&path)).unwrap(), Some(None));
        let escaped_key = br#"{"typ\u0065":"escaped key"}"#;
        assert_eq!(
            check_json(escaped_key, Some(&path)).unwrap(),
            Some(Some("escaped key".into()))
        );
        let jq = Expr::new(".type").unwrap();
        assert_eq!(
            Programs::default()
                .string(&jq, &parse_value(escaped_key).unwrap())
                .unwrap(),
            Some("escaped key".into())
        );
        // A surrogate pair is one character.
        let pair = br#"{"e":"\ud83d\ude00","type":"\u00e9"}"#;
        assert_eq!(
            check_json(pair, Some(&path)).unwrap(),
            Some(Some("é".into()))
        );
        // Nesting stops where serde_json stops (`check_depth` says so first, in fewer steps).
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let deep = |n| format!(r#"{{"a":{},"type":"t"}}"#, nest(n));
        assert!(check_json(deep(MAX_JSON_DEPTH - 1).as_bytes(), Some(&path)).is_ok());
        assert!(check_json(deep(MAX_JSON_DEPTH).as_bytes(), Some(&path)).is_err());
        assert!(check_json(nest(10 * MAX_JSON_DEPTH).as_bytes(), None).is_err());
        assert!(check_depth(deep(MAX_JSON_DEPTH).as_bytes()).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = "[".repeat(200_000);
        assert!(
            parse_value(deep.as_bytes())
                .unwrap_err()
                .contains(&format!("nested deeper than {MAX_JSON_DEPTH}"))
        );
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        assert!(parse_value(ok.as_bytes()).is_ok());
        let in_string = format!(r#"{{"a":"{}"}}"#, "[".repeat(1000));
        assert!(
            parse_value(in_string.as_bytes()).is_ok(),
            "brackets inside strings do not count"
        );
        let escaped = r#"{"a":"\\"}"#;
        assert!(
            parse_value(escaped.as_bytes()).is_ok(),
            "{:?}",
            parse_value(escaped.as_bytes()).err()
        );
    }
}
