//! Strict JSON: what Ferry accepts as JSON from outside (webhook bodies, API request bodies).
//! UTF-8 throughout, no string holding a lone surrogate, no number out of range, nesting no
//! deeper than serde_json's limit ([`MAX_JSON_DEPTH`]), exactly one value, and no object with
//! the same key twice (receivers disagree on which of two keys counts; Ferry refuses to guess).
//!
//! [`check_json`] checks a raw body in one pass that builds nothing, and on the way reads the
//! string a plain field path leads to (ingest's event type); [`parse`] checks, then parses.

use serde::de::{DeserializeOwned, DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;

/// The deepest nesting of arrays and objects accepted: serde_json's own limit (it refuses a
/// 128th level), so that what ingest accepts, the schema check and the API can parse.
pub const MAX_JSON_DEPTH: usize = 127;

/// Checks `bytes` as [`check_json`] does, then parses them.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    if let Err(e) = check_depth(bytes) {
        return Err(serde_json::Error::custom(e));
    }
    check_json(bytes, None)?;
    serde_json::from_slice(bytes)
}

/// What a plain field path reads from a raw body without jq: `Some(Some(s))` for a string,
/// `Some(None)` for null or a missing field; `None` when jq must decide (another kind of value,
/// a non-object on the way) or the body is not strict JSON.
pub fn read_plain_path(bytes: &[u8], path: &[String]) -> Option<Option<String>> {
    check_json(bytes, Some(path)).ok().flatten()
}

/// Checks that `bytes` hold exactly one strict JSON value and, in the same pass, reads what the
/// plain field `path` holds: `Some(Some(s))` for a string, `Some(None)` for null or a missing
/// field (jq gives null), `None` when jq must decide (another kind of value, or a non-object on
/// the way, where jq may raise an error) or when there is no path. Nothing but the string found
/// and the keys of the objects being read is kept; everything else is walked as serde_json
/// walks a value it builds (numbers parsed, strings decoded), so this refuses what
/// `serde_json::from_slice` refuses, and a key repeated in one object.
pub fn check_json(
    bytes: &[u8],
    path: Option<&[String]>,
) -> Result<Option<Option<String>>, serde_json::Error> {
    // Strict JSON is UTF-8 throughout; skipping a string's contents does not check that.
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(serde_json::Error::custom(format!(
            "invalid UTF-8 at byte {}",
            e.valid_up_to()
        )));
    }
    let walk = Walk::default();
    let mut reader = serde_json::Deserializer::from_slice(bytes);
    let found = match path {
        Some(path) => Seek {
            path,
            walk: &walk,
            place: Place::Root,
        }
        .deserialize(&mut reader)?,
        None => {
            Valid {
                walk: &walk,
                place: Place::Root,
            }
            .deserialize(&mut reader)?;
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

/// The keys of the objects being read, innermost last: each object checks its new key against
/// its own part, then drops that part when it ends. One buffer for the whole document.
#[derive(Default)]
struct Walk<'de> {
    keys: RefCell<Vec<Cow<'de, str>>>,
}

/// Past this many keys an object's keys move to a hash set (a linear scan costs less below).
const LINEAR_KEYS: usize = 16;

impl<'de> Walk<'de> {
    /// Reads every entry of an object, refusing a repeated key; `value` reads each value.
    fn entries<A, F>(&self, place: &Place<'_>, map: &mut A, mut value: F) -> Result<(), A::Error>
    where
        A: MapAccess<'de>,
        F: FnMut(&mut A, Place<'_>, &str) -> Result<(), A::Error>,
    {
        let start = self.keys.borrow().len();
        let mut many: Option<HashSet<Cow<'de, str>>> = None;
        let mut read = || -> Result<(), A::Error> {
            while let Some(key) = map.next_key_seed(Key)? {
                let repeated = match &mut many {
                    Some(set) => !set.insert(key.clone()),
                    None => self.keys.borrow()[start..].contains(&key),
                };
                if repeated {
                    return Err(A::Error::custom(format!(
                        "the key `{}` appears twice in {}",
                        shorten(&key),
                        place.describe()
                    )));
                }
                value(map, Place::Key(place, &key), &key)?;
                if many.is_none() {
                    let mut keys = self.keys.borrow_mut();
                    keys.push(key);
                    if keys.len() - start > LINEAR_KEYS {
                        many = Some(keys.drain(start..).collect());
                    }
                }
            }
            Ok(())
        };
        let result = read();
        self.keys.borrow_mut().truncate(start);
        result
    }
}

/// Where a value is in a document; written out (as a JSON Pointer) only when an error names it.
#[derive(Clone, Copy)]
enum Place<'a> {
    Root,
    Key(&'a Place<'a>, &'a str),
    Index(&'a Place<'a>, usize),
}

/// Longest key or pointer an error message quotes.
const QUOTED: usize = 120;

impl Place<'_> {
    fn describe(&self) -> String {
        match self {
            Place::Root => "the top-level object".to_string(),
            _ => format!("the object at `{}`", keep_end(&self.pointer())),
        }
    }

    fn pointer(&self) -> String {
        let mut parts = Vec::new();
        let mut at = self;
        loop {
            match at {
                Place::Root => break,
                Place::Key(parent, key) => {
                    parts.push(key.replace('~', "~0").replace('/', "~1"));
                    at = parent;
                }
                Place::Index(parent, i) => {
                    parts.push(i.to_string());
                    at = parent;
                }
            }
        }
        parts.iter().rev().fold(String::new(), |mut out, part| {
            out.push('/');
            out.push_str(part);
            out
        })
    }
}

/// `text`, cut to [`QUOTED`] bytes (on a character boundary) with `…` when longer.
fn shorten(text: &str) -> Cow<'_, str> {
    if text.len() <= QUOTED {
        return Cow::Borrowed(text);
    }
    let mut end = QUOTED;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// `pointer`, its start cut off to keep the last [`QUOTED`] bytes (the innermost places) when
/// longer.
fn keep_end(pointer: &str) -> Cow<'_, str> {
    if pointer.len() <= QUOTED {
        return Cow::Borrowed(pointer);
    }
    let mut start = pointer.len() - QUOTED;
    while !pointer.is_char_boundary(start) {
        start += 1;
    }
    Cow::Owned(format!("…{}", &pointer[start..]))
}

/// What a field path leads to in a document.
enum Found {
    Text(String),
    Null,
    Other,
}

/// Walks a document, following `path` and checking everything else without keeping it.
struct Seek<'p, 'w, 'de> {
    path: &'p [String],
    walk: &'w Walk<'de>,
    place: Place<'p>,
}

impl<'de> DeserializeSeed<'de> for Seek<'_, '_, 'de> {
    type Value = Found;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_, '_, 'de> {
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
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Found, A::Error> {
        Valid {
            walk: self.walk,
            place: self.place,
        }
        .visit_seq(seq)?;
        Ok(Found::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let walk = self.walk;
        let Some((name, rest)) = self.path.split_first() else {
            walk.entries(&self.place, &mut map, |map, place, _| {
                map.next_value_seed(Valid { walk, place }).map(drop)
            })?;
            return Ok(Found::Other);
        };
        // A missing field is null.
        let mut found = Found::Null;
        walk.entries(&self.place, &mut map, |map, place, key| {
            if key == name {
                found = map.next_value_seed(Seek {
                    path: rest,
                    walk,
                    place,
                })?;
            } else {
                map.next_value_seed(Valid { walk, place })?;
            }
            Ok(())
        })?;
        Ok(found)
    }
}

/// A JSON value checked and dropped as it is read. serde_json skips an `IgnoredAny` with less
/// care than it builds a value (no number range, no UTF-8 or surrogate check in strings, no
/// depth limit): this is read as a value is, with `deserialize_any`.
struct Valid<'p, 'w, 'de> {
    walk: &'w Walk<'de>,
    place: Place<'p>,
}

impl<'de> DeserializeSeed<'de> for Valid<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Valid<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while seq
            .next_element_seed(Valid {
                walk: self.walk,
                place: Place::Index(&self.place, index),
            })?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let walk = self.walk;
        walk.entries(&self.place, &mut map, |map, place, _| {
            map.next_value_seed(Valid { walk, place })
        })
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_repeated_key_is_refused_with_its_name_and_place() {
        let path: Vec<String> = vec!["type".into()];
        let refused = |body: &[u8]| {
            let with_path = check_json(body, Some(&path)).unwrap_err().to_string();
            let without = check_json(body, None).unwrap_err().to_string();
            assert_eq!(with_path, without, "{}", String::from_utf8_lossy(body));
            with_path
        };
        let e = refused(br#"{"type":"strict","a":1,"type":"other"}"#);
        assert!(
            e.contains("the key `type` appears twice in the top-level object"),
            "{e}"
        );
        let e = refused(br#"{"type":"t","data":{"items":[{"id":1},{"id":2,"id":3}]}}"#);
        assert!(
            e.contains("the key `id` appears twice in the object at `/data/items/1`"),
            "{e}"
        );
        // The same key written two ways is the same key.
        let e = refused(br#"{"a":{"k":1,"\u006b":2},"type":"t"}"#);
        assert!(e.contains("`k` appears twice in the object at `/a`"), "{e}");
        // Pointer escapes, and long keys and pointers cut short.
        let e = refused(br#"{"a/b~c":{"x":1,"x":2}}"#);
        assert!(e.contains("`/a~1b~0c`"), "{e}");
        let long = "k".repeat(10_000);
        let e = refused(format!(r#"{{"{long}":{{"{long}":1,"{long}":2}}}}"#).as_bytes());
        assert!(e.len() < 600, "{} bytes", e.len());
        // Past the linear scan, a hash set finds the repeat.
        let mut many: Vec<String> = (0..5000).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let ok = format!("{{{}}}", many.join(","));
        assert!(check_json(ok.as_bytes(), Some(&path)).is_ok());
        many.push(r#""k4321":0"#.into());
        let e = refused(format!("{{{}}}", many.join(",")).as_bytes());
        assert!(e.contains("`k4321` appears twice"), "{e}");
        // Equal keys in different objects, or an object after a nested one, are not repeats.
        for fine in [
            &br#"{"a":{"x":1},"b":{"x":1},"x":[{"x":1},{"x":2}]}"#[..],
            br#"{"a":{"b":1,"c":{"b":2}},"c":1}"#,
            br#"[{"a":1},{"a":1}]"#,
        ] {
            assert!(
                check_json(fine, Some(&path)).is_ok(),
                "{}",
                String::from_utf8_lossy(fine)
            );
        }
        assert!(parse::<serde_json::Value>(br#"{"a":1,"a":1}"#).is_err());
        assert_eq!(
            parse::<serde_json::Value>(br#"{"a":[1,{"b":2}]}"#).unwrap(),
            serde_json::json!({"a": [1, {"b": 2}]})
        );
    }
}
