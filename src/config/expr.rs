//! jq expressions as the server holds them: their code, checked for size, and for a plain
//! field path such as `.data.type` the field names, read straight from the raw JSON without
//! building a value. Compiling and running them is `engine::jq`'s, in an expression worker
//! process (`engine::sandbox`); nothing here runs jq. The raw read of a plain path is
//! `crate::json`'s.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::jq::{Programs, parse_value};
    use crate::json::MAX_JSON_DEPTH;

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
            let body = br#"{"type":"user.created","data":{"kind":"k","x":1},"n":7,"arr":[1],"s":"str","nul":null,"a":{"b":{"c":"deep"}},"esc":"a\"b\u00e9","more":"x"}"#;
            let jq = Programs::default().string(&e, &parse_value(body).unwrap());
            // Where the raw read answers, it agrees with jq; where it does not, jq decides.
            if let Some(fast) = crate::json::read_plain_path(body, e.field_path().unwrap()) {
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
