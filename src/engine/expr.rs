//! jq expressions: compiled once when the config loads, run many times on event payloads.
//! Owns the only contact with the `jaq` crates, so the rest of Ferry sees [`Expr`] and JSON.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Native, Vars, data::JustLut};
use jaq_json::Val;
use serde::Deserialize as _;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::sync::Arc;

type Program = jaq_core::compile::Filter<Native<JustLut<Val>>>;

/// A compiled jq program. Cheap to clone.
#[derive(Clone)]
pub struct Expr {
    code: Arc<str>,
    program: Arc<Program>,
    /// The field names when the program is a plain path such as `.data.type`: such paths are
    /// read straight from the raw JSON, without building the whole value.
    field_path: Option<Arc<[String]>>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.code)
    }
}

/// An input value for expressions, parsed once per event and shared by every expression run on it.
pub type Value = Val;

#[derive(Debug, thiserror::Error)]
pub enum ExprError {
    #[error("jq expression `{code}` does not compile: {message}")]
    Compile { code: String, message: String },
    #[error("jq expression `{code}` failed: {message}")]
    Runtime { code: String, message: String },
}

impl Expr {
    pub fn compile(code: &str) -> Result<Expr, ExprError> {
        let fail = |message: String| ExprError::Compile {
            code: code.to_string(),
            message,
        };
        if code.len() > MAX_EXPRESSION_SIZE {
            return Err(fail(format!(
                "it is {} bytes long; the limit is {MAX_EXPRESSION_SIZE}",
                code.len()
            )));
        }
        if let Some(word) = refused_word(code) {
            let why = if UNBOUNDED.contains(&word) {
                "it can recurse without bound, and a deep recursion would stop the whole process"
            } else {
                "expressions see the event and the run, not the process (its environment, its input, its logs)"
            };
            return Err(fail(format!(
                "`{word}` is not allowed in Ferry expressions: {why}"
            )));
        }
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errs| {
                let mut parts = Vec::new();
                for (_file, err) in errs {
                    match err {
                        jaq_core::load::Error::Io(items) => parts.extend(
                            items
                                .into_iter()
                                .map(|(path, msg)| format!("cannot load `{path}`: {msg}")),
                        ),
                        jaq_core::load::Error::Lex(items) => {
                            parts.extend(items.into_iter().map(|(expect, at)| {
                                format!("expected {} at {}", expect.as_str(), position(code, at))
                            }))
                        }
                        jaq_core::load::Error::Parse(items) => {
                            parts.extend(items.into_iter().map(|(expect, at)| {
                                format!("expected {} at {}", expect.as_str(), position(code, at))
                            }))
                        }
                    }
                }
                fail(parts.join("; "))
            })?;
        let program = Compiler::default()
            .with_funs(funs)
            .with_global_vars(["$event", "$steps"])
            .compile(modules)
            .map_err(|errs| {
                let parts: Vec<String> = errs
                    .into_iter()
                    .flat_map(|(_file, undefined)| undefined)
                    .map(|(name, kind)| {
                        format!(
                            "undefined {} `{name}` at {}",
                            kind.as_str(),
                            position(code, name)
                        )
                    })
                    .collect();
                fail(parts.join("; "))
            })?;
        Ok(Expr {
            code: code.into(),
            program: Arc::new(program),
            field_path: field_path(code),
        })
    }

    /// Like [`Expr::string`], on a lazily parsed payload. A plain field path whose value is a
    /// string, null or absent is read from the raw JSON; anything else (another kind of value,
    /// a non-object on the way) runs the program, so the answer is always jq's.
    pub fn string_of(&self, payload: &mut Payload<'_>) -> Result<Option<String>, ExprError> {
        if let Some(path) = &self.field_path
            && let Ok(Some(found)) = check_json(payload.bytes, Some(path))
        {
            return Ok(found);
        }
        let value = payload.value().map_err(|message| ExprError::Runtime {
            code: self.code.to_string(),
            message,
        })?;
        self.string(value)
    }

    /// Like [`Expr::truthy`], on a lazily parsed payload.
    pub fn truthy_of(&self, payload: &mut Payload<'_>) -> Result<bool, ExprError> {
        let value = payload.value().map_err(|message| ExprError::Runtime {
            code: self.code.to_string(),
            message,
        })?;
        self.truthy(value)
    }

    /// The field names when the program is a plain path such as `.data.type`.
    pub fn field_path(&self) -> Option<&[String]> {
        self.field_path.as_deref()
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    /// The first output of the program, or `None` when it yields nothing; `$event` and
    /// `$steps` are null.
    pub fn first(&self, input: &Value) -> Result<Option<Value>, ExprError> {
        self.first_in(input, &Scope::default())
    }

    /// The first output of the program run with `scope`'s variables.
    pub fn first_in(&self, input: &Value, scope: &Scope) -> Result<Option<Value>, ExprError> {
        let vars = Vars::new([scope.event.clone(), scope.steps.clone()]);
        let ctx = Ctx::<JustLut<Val>>::new(&self.program.lut, vars);
        let mut outputs = self.program.id.run((ctx, input.clone()));
        match outputs.next() {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(exn)) => {
                let message = match exn.get_err() {
                    Ok(err) => err.to_string(),
                    Err(_) => "the program called `halt`, which is not allowed here".to_string(),
                };
                Err(ExprError::Runtime {
                    code: self.code.to_string(),
                    message,
                })
            }
        }
    }

    /// jq truthiness of the first output: anything but `false` and `null` is true; no output is false.
    pub fn truthy(&self, input: &Value) -> Result<bool, ExprError> {
        Ok(matches!(self.first(input)?, Some(v) if !matches!(v, Val::Null | Val::Bool(false))))
    }

    /// The first output as a string: strings are taken as they are, numbers and booleans are
    /// printed; null or no output is `None`.
    pub fn string(&self, input: &Value) -> Result<Option<String>, ExprError> {
        Ok(match self.first(input)? {
            None | Some(Val::Null) => None,
            Some(Val::TStr(s)) | Some(Val::BStr(s)) => {
                Some(String::from_utf8_lossy(&s).into_owned())
            }
            Some(other) => Some(other.to_string()),
        })
    }
}

/// The variables an expression sees besides its input: `$event` and `$steps`.
#[derive(Clone, Default)]
pub struct Scope {
    pub event: Value,
    pub steps: Value,
}

/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_SIZE: usize = 16 * 1024;

/// jq words that can recurse without bound. jaq has no step limit, and a stack overflow
/// aborts the process, so these are refused when the config loads.
const UNBOUNDED: [&str; 4] = ["def", "repeat", "while", "until"];

/// jq builtins that reach the process rather than the event: its environment (secrets), its
/// standard input, its exit, its stderr.
const PROCESS: [&str; 7] = [
    "env",
    "input",
    "inputs",
    "halt",
    "halt_error",
    "debug",
    "stderr",
];

/// The first refused word in `code`, outside string literals.
fn refused_word(code: &str) -> Option<&'static str> {
    let bytes = code.as_bytes();
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b.is_ascii_alphabetic() || b == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let preceded = start > 0 && matches!(bytes[start - 1], b'.' | b'$' | b'@');
            let followed_by_colon =
                bytes[i..].iter().find(|c| !c.is_ascii_whitespace()) == Some(&b':');
            let word = &code[start..i];
            if !preceded
                && !followed_by_colon
                && let Some(found) = UNBOUNDED.iter().chain(&PROCESS).find(|w| **w == word)
            {
                return Some(found);
            }
            continue;
        }
        i += 1;
    }
    None
}

/// A request body that is known to be JSON, parsed into an expression input only when an
/// expression first needs the whole value.
pub struct Payload<'a> {
    bytes: &'a [u8],
    parsed: Option<Value>,
}

impl<'a> Payload<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Payload {
            bytes,
            parsed: None,
        }
    }

    pub fn value(&mut self) -> Result<&Value, String> {
        let value = match self.parsed.take() {
            Some(v) => v,
            None => parse_value(self.bytes)?,
        };
        Ok(self.parsed.insert(value))
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

/// Checks that `bytes` hold exactly one JSON value and, in the same pass, reads what the plain
/// field `path` (see [`Expr::field_path`]) holds: `Some(Some(s))` for a string, `Some(None)` for
/// null or a missing field (jq gives null), `None` when jq must decide (another kind of value,
/// or a non-object on the way, where jq may raise an error) or when there is no path. Nothing
/// but the string found is built.
pub fn check_json(
    bytes: &[u8],
    path: Option<&[String]>,
) -> Result<Option<Option<String>>, serde_json::Error> {
    let mut reader = serde_json::Deserializer::from_slice(bytes);
    let found = match path {
        Some(path) => Seek { path }.deserialize(&mut reader)?,
        None => {
            IgnoredAny::deserialize(&mut reader)?;
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

/// Walks a document, following `path` and skipping everything else (skipping still checks it).
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
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Found::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let Some((name, rest)) = self.path.split_first() else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(Found::Other);
        };
        // A missing field is null; of a repeated name the last one counts, as in jq.
        let mut found = Found::Null;
        while let Some(matched) = map.next_key_seed(KeyIs(name))? {
            if matched {
                found = map.next_value_seed(Seek { path: rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
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

/// The deepest nesting of arrays and objects accepted (serde_json's own limit).
pub const MAX_JSON_DEPTH: usize = 128;

/// Parses JSON bytes into an expression input. Input nested deeper than [`MAX_JSON_DEPTH`] is
/// refused before parsing: the parser recurses, and a stack overflow would abort the process.
pub fn parse_value(bytes: &[u8]) -> Result<Value, String> {
    check_depth(bytes)?;
    jaq_json::read::parse_single(bytes).map_err(|e| e.to_string())
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

/// Converts an expression output back to `serde_json`.
pub fn to_json(v: &Value) -> Result<serde_json::Value, String> {
    serde_json::from_str(&v.to_string()).map_err(|e| format!("output is not JSON: {e}"))
}

fn position(code: &str, at: &str) -> String {
    let start = code.as_ptr() as usize;
    let here = at.as_ptr() as usize;
    if here >= start && here <= start + code.len() {
        let offset = here - start;
        if offset >= code.len() {
            "the end".to_string()
        } else {
            format!("character {}", offset + 1)
        }
    } else {
        "an unknown position".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Value {
        parse_value(s.as_bytes()).unwrap()
    }

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
    }

    #[test]
    fn filters_and_paths() {
        let e = Expr::compile(r#".data.plan != "free""#).unwrap();
        assert!(e.truthy(&v(r#"{"data":{"plan":"pro"}}"#)).unwrap());
        assert!(!e.truthy(&v(r#"{"data":{"plan":"free"}}"#)).unwrap());
        let p = Expr::compile(".event").unwrap();
        assert_eq!(
            p.string(&v(r#"{"event":"user.created"}"#))
                .unwrap()
                .as_deref(),
            Some("user.created")
        );
        assert_eq!(
            p.string(&v(r#"{"event":7}"#)).unwrap().as_deref(),
            Some("7")
        );
        assert_eq!(p.string(&v(r#"{}"#)).unwrap(), None);
        assert!(Expr::compile("map(select(.a > 1)) | length").is_ok());
    }

    #[test]
    fn compile_errors_say_where() {
        let err = Expr::compile(".a | ").unwrap_err().to_string();
        assert!(err.contains("does not compile"), "{err}");
        let err = Expr::compile("nosuchfn(1)").unwrap_err().to_string();
        assert!(err.contains("undefined filter `nosuchfn`"), "{err}");
        assert!(err.contains("character 1"), "{err}");
        for (code, word) in [
            ("def f: f; f", "def"),
            ("[repeat(.)]", "repeat"),
            ("env.HOME", "env"),
            (".x | debug", "debug"),
        ] {
            let err = Expr::compile(code).unwrap_err().to_string();
            assert!(err.contains(&format!("`{word}` is not allowed")), "{err}");
        }
        // Words inside strings, object keys and field names are fine.
        for code in [
            r#""def \"until\" env""#,
            "{until: .env, debug: 1}",
            ".repeat.while",
        ] {
            Expr::compile(code).unwrap_or_else(|e| panic!("{code}: {e}"));
        }
    }

    #[test]
    fn runtime_errors_are_values_not_panics() {
        let e = Expr::compile(".a + 1").unwrap();
        let err = e.first(&v(r#"{"a":"x"}"#)).unwrap_err().to_string();
        assert!(err.contains("failed"), "{err}");
        let error = Expr::compile("error(\"boom\")").unwrap();
        assert!(
            error
                .first(&v("1"))
                .unwrap_err()
                .to_string()
                .contains("boom")
        );
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
            let e = Expr::compile(code).unwrap();
            let body = br#"{"type":"user.created","data":{"kind":"k","x":1},"n":7,"arr":[1],"s":"str","nul":null,"a":{"b":{"c":"deep"}},"esc":"a\"b\u00e9","type":"last wins"}"#;
            let fast = e
                .string_of(&mut Payload::new(body))
                .map_err(|e| e.to_string());
            let slow = e
                .string(&parse_value(body).unwrap())
                .map_err(|e| e.to_string());
            assert_eq!(fast.is_ok(), slow.is_ok(), "{code}: {fast:?} vs {slow:?}");
            if let (Ok(f), Ok(s)) = (&fast, &slow) {
                assert_eq!(f, s, "{code}");
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
        let jq = Expr::compile(".type").unwrap();
        assert_eq!(
            jq.string(&parse_value(escaped_key).unwrap()).unwrap(),
            Some("escaped key".into())
        );
        // Skipping values does not recurse: depth is `check_depth`'s to refuse, not this pass's.
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let deep = format!(r#"{{"a":{},"type":"t"}}"#, nest(10 * MAX_JSON_DEPTH));
        assert_eq!(
            check_json(deep.as_bytes(), Some(&path)).unwrap(),
            Some(Some("t".into()))
        );
        assert!(check_depth(deep.as_bytes()).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = "[".repeat(200_000);
        assert!(
            parse_value(deep.as_bytes())
                .unwrap_err()
                .contains("nested deeper than 128")
        );
        let ok = format!("{}{}", "[".repeat(128), "]".repeat(128));
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

    #[test]
    fn round_trips_to_serde_json() {
        let out = Expr::compile("{a: .x, b: [1, 2.5, null, true]}")
            .unwrap()
            .first(&v(r#"{"x":"é"}"#))
            .unwrap()
            .unwrap();
        assert_eq!(
            to_json(&out).unwrap(),
            serde_json::json!({"a": "é", "b": [1, 2.5, null, true]})
        );
    }
}
