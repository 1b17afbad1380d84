//! Rendering `{{ jq }}` placeholders (`config::template`): each placeholder's expression runs,
//! in an expression worker, on the current payload with `$event` and `$steps` in scope, and its
//! value is written into the string.

use super::jq::{Programs, Scope, Value};
use crate::config::template::{Part, Template};

/// How a placeholder's value is written into the string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As it is (header values).
    None,
    /// Percent-encoded as one URL component, so a value from an event cannot add a path
    /// segment, a query parameter or another host.
    UrlComponent,
}

/// Fills every placeholder with its first output: strings as they are, null or no output
/// as the empty string, anything else as JSON.
pub fn render(
    template: &Template,
    programs: &mut Programs,
    input: &Value,
    scope: &Scope,
    escape: Escape,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.source().len());
    for part in template.parts() {
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
            render(&t, &mut p, &input, &Scope::default(), Escape::UrlComponent).unwrap(),
            "https://crm.example/users?email=a%2Bb%40x.io&n=3"
        );
        let h = Template::parse("Bearer {{ $steps.auth.body.token }}").unwrap();
        let scope = Scope {
            event: Value::Null,
            steps: parse_value(br#"{"auth":{"body":{"token":"t/1"}}}"#).unwrap(),
        };
        assert_eq!(
            render(&h, &mut p, &input, &scope, Escape::None).unwrap(),
            "Bearer t/1"
        );
        assert!(
            Template::parse("x {{ .a ")
                .unwrap_err()
                .contains("never closed")
        );
        let broken = Template::parse("x {{ .a + }}").unwrap();
        let err = render(&broken, &mut p, &input, &scope, Escape::None).unwrap_err();
        assert!(err.contains("does not compile"), "{err}");
        assert_eq!(Template::parse("plain").unwrap().literal_prefix(), "plain");
    }
}
