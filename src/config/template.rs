//! `{{ jq }}` placeholders in strings that take values from the run (an `http` step's URL and
//! headers), as the config holds them: the text split into text and expressions, which a
//! worker checks with the rest of the config. Rendering them is the engine's
//! (`engine::template`).

use super::expr::Expr;

/// A piece of a template.
#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    Expr(Expr),
}

/// A string with `{{ jq }}` placeholders.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
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

    /// The text and placeholders, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }
}
