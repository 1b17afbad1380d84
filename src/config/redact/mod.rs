//! What is secret and how it is shown: the fields of config objects that hold secrets
//! (`fields`, the one list that sealing, masking and the OpenAPI document read), the secret
//! parts of URLs (`url`), masked wherever a URL is shown, and serde messages without the values
//! they quote. Pure rules: the config applies them when it checks and shows objects, and
//! `crate::secrets` when it seals.

pub mod fields;
pub mod url;

pub use fields::{MASK, is_secret_header, is_secret_query_param};

/// A message from serde (a YAML or JSON shape error) without the string values it quotes
/// (`invalid type: string "whsec_..."` becomes `invalid type: a string`): such a value may be
/// a secret written in the wrong place.
pub fn without_quoted_values(message: &str) -> String {
    const QUOTED: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(QUOTED) {
        out.push_str(&rest[..at]);
        out.push_str("a string");
        let mut chars = rest[at + QUOTED.len()..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = Some(at + QUOTED.len() + i + 1);
                    break;
                }
                _ => {}
            }
        }
        match end {
            Some(e) => rest = &rest[e..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn serde_messages_lose_their_quoted_values() {
        assert_eq!(
            super::without_quoted_values(
                r#"invalid type: string "whsec_a\"b", expected struct RawSigning at line 3"#
            ),
            "invalid type: a string, expected struct RawSigning at line 3"
        );
        assert_eq!(
            super::without_quoted_values("unknown field `x`"),
            "unknown field `x`"
        );
        assert_eq!(super::without_quoted_values(r#"string "open"#), "a string");
    }
}
