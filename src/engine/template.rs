//! `{{ jq }}` placeholders in strings that take values from the run (an `http` step's URL and
//! headers). The server splits a template into text and expressions (and has the expressions
//! checked by a worker with the rest of the config); rendering runs them, in an expression
//! worker, on the current payload with `$event` and `$steps` in scope.

use super::expr::Expr;
use super::jq::{Programs, Scope, Value};

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Expr(Expr),
}

/// A string with `{{ jq }}` placeholders.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// How a placeholder's value is written into the string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As it is (header values).
    None,
    /// Percent-encoded as one URL component, so a value from an event cannot add a path
    /// segment, a query parameter or another host.
    UrlComponent,
}

impl serde::Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> serde::Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Template, D::Error> {
        let text = <std::borrow::Cow<str> as serde::Deserialize>::deserialize(d)?;
        Template::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Template {
    /// Splits `text` into text and placeholders. Errors name the placeholder.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                return Err(format!(
                    "a `{{{{` at character {} is never closed with `}}}}`",
                    text.len() - rest.len() + open + 1
                ));
            };
            let code = after[..close].trim();
            if code.is_empty() {
                return Err("an empty `{{ }}` placeholder".to_string());
            }
            let expr = Expr::new(code)?;
            parts.push(Part::Expr(expr));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template {
            source: text.to_string(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The placeholders' expressions.
    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e),
            Part::Text(_) => None,
        })
    }

    /// The text before the first placeholder.
    pub fn literal_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Text(t)) => t,
            _ => "",
        }
    }

    /// Fills every placeholder with its first output: strings as they are, null or no output
    /// as the empty string, anything else as JSON.
    pub fn render(
        &self,
        programs: &mut Programs,
        input: &Value,
        scope: &Scope,
        escape: Escape,
    ) -> Result<String, String> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(e) => {
                    let text = match programs.first(e, input, scope)? {
                        None | Some(Value::Null) => String::new(),
                        Some(Value::TStr(s)) | Some(Value::BStr(s)) => {
                            String::from_utf8_lossy(&s).into_owned()
                        }
                        Some(other) => other.to_string(),
                    };
                    match escape {
                        Escape::None => out.push_str(&text),
                        Escape::UrlComponent => {
                            out.extend(url::form_urlencoded::byte_serialize(text.as_bytes()))
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::jq::parse_value;

    #[test]
    fn renders_placeholders_with_escaping() {
        let t = Template::parse("https://crm.example/users?email={{ .email }}&n={{.n}}").unwrap();
        assert_eq!(t.literal_prefix(), "https://crm.example/users?email=");
        let input = parse_value(br#"{"email":"a+b@x.io","n":3}"#).unwrap();
        let mut p = Programs::default();
        assert_eq!(
            t.render(&mut p, &input, &Scope::default(), Escape::UrlComponent)
                .unwrap(),
            "https://crm.example/users?email=a%2Bb%40x.io&n=3"
        );
        let h = Template::parse("Bearer {{ $steps.auth.body.token }}").unwrap();
        let scope = Scope {
            event: Value::Null,
            steps: parse_value(br#"{"auth":{"body":{"token":"t/1"}}}"#).unwrap(),
        };
        assert_eq!(
            h.render(&mut p, &input, &scope, Escape::None).unwrap(),
            "Bearer t/1"
        );
        assert!(
            Template::parse("x {{ .a ")
                .unwrap_err()
                .contains("never closed")
        );
        let broken = Template::parse("x {{ .a + }}").unwrap();
        let err = broken
            .render(&mut p, &input, &scope, Escape::None)
            .unwrap_err();
        assert!(err.contains("does not compile"), "{err}");
        assert_eq!(Template::parse("plain").unwrap().literal_prefix(), "plain");
    }
}
