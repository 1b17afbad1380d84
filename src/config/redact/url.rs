//! The secret parts of a URL, read from its text (a URL template with `{{ jq }}` placeholders
//! included, which `url::Url` would not parse): the values of secret query parameters and the
//! password of the user info. Masking them, and putting them back from an older text.

use super::fields::{MASK, is_secret_query_param};
use std::borrow::Cow;

/// A URL's text in the pieces masking needs. `&` and `?` inside `{{ }}` do not count.
struct Parts<'a> {
    /// Up to the user info's password (`https://user:`), or the whole authority and path.
    head: &'a str,
    /// The user info's password, when there is one.
    password: Option<&'a str>,
    /// From the `@` after the password to the `?` (the host and the path).
    middle: &'a str,
    /// The query without its `?`, split at `&`.
    params: Vec<&'a str>,
    /// `#...`, or empty.
    fragment: &'a str,
}

/// Byte offsets of `wanted` in `text` outside `{{ }}` placeholders.
fn outside_braces(text: &str, wanted: &[u8]) -> Vec<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut i, mut found) = (0usize, 0usize, Vec::new());
    while i < bytes.len() {
        if bytes[i..].starts_with(b"{{") {
            depth += 1;
            i += 2;
            continue;
        }
        if depth > 0 && bytes[i..].starts_with(b"}}") {
            depth -= 1;
            i += 2;
            continue;
        }
        if depth == 0 && wanted.contains(&bytes[i]) {
            found.push(i);
        }
        i += 1;
    }
    found
}

fn parts(text: &str) -> Parts<'_> {
    let cuts = outside_braces(text, b"?#");
    let query_at = cuts.iter().copied().find(|&i| text.as_bytes()[i] == b'?');
    let fragment_at = cuts
        .iter()
        .copied()
        .find(|&i| text.as_bytes()[i] == b'#' && query_at.is_none_or(|q| i > q));
    let end_of_path = query_at.or(fragment_at).unwrap_or(text.len());
    let fragment = fragment_at.map_or("", |f| &text[f..]);
    let query = query_at.map(|q| &text[q + 1..fragment_at.unwrap_or(text.len())]);
    let params = match query {
        Some(q) => {
            let mut out = Vec::new();
            let mut start = 0;
            for amp in outside_braces(q, b"&") {
                out.push(&q[start..amp]);
                start = amp + 1;
            }
            out.push(&q[start..]);
            out
        }
        None => Vec::new(),
    };
    let before = &text[..end_of_path];
    // The user info is between `://` and the last `@` before the first `/` of the path.
    let (head, password, middle) = match before.find("://") {
        Some(s) => {
            let authority_start = s + 3;
            let authority_end = before[authority_start..]
                .find('/')
                .map_or(before.len(), |p| authority_start + p);
            let authority = &before[authority_start..authority_end];
            match authority.rfind('@') {
                Some(at) => match authority[..at].find(':') {
                    Some(colon) => {
                        let pw_start = authority_start + colon + 1;
                        let pw_end = authority_start + at;
                        (
                            &before[..pw_start],
                            Some(&before[pw_start..pw_end]),
                            &before[pw_end..],
                        )
                    }
                    None => (before, None, ""),
                },
                None => (before, None, ""),
            }
        }
        None => (before, None, ""),
    };
    Parts {
        head,
        password,
        middle,
        params,
        fragment,
    }
}

/// A query parameter's name, percent-decoded (`+` is a space).
fn param_name(param: &str) -> Cow<'_, str> {
    let raw = param.split('=').next().unwrap_or_default();
    if !raw.contains(['%', '+']) {
        return Cow::Borrowed(raw);
    }
    let spaced = raw.replace('+', " ");
    Cow::Owned(
        ::url::form_urlencoded::parse(format!("{spaced}=").as_bytes())
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or(spaced),
    )
}

fn secret_param(param: &str, listed: &[String]) -> bool {
    if !param.contains('=') {
        return false;
    }
    let name = param_name(param);
    is_secret_query_param(&name) || listed.iter().any(|l| name.eq_ignore_ascii_case(l))
}

/// Whether the URL has a secret part: a secret query parameter with a value, or a password.
pub fn has_secret(text: &str, listed: &[String]) -> bool {
    let p = parts(text);
    p.password.is_some() || p.params.iter().any(|q| secret_param(q, listed))
}

/// Whether the URL shows a secret part as the mask (as a read shows it).
pub fn has_mask(text: &str, listed: &[String]) -> bool {
    let p = parts(text);
    p.password == Some(MASK)
        || p.params
            .iter()
            .any(|q| secret_param(q, listed) && q.split_once('=').is_some_and(|(_, v)| v == MASK))
}

/// The URL with its secret parts shown as the mask.
pub fn masked(text: &str, listed: &[String]) -> String {
    rebuild(text, listed, |_, _| Some(MASK.to_string())).unwrap_or_else(|| MASK.to_string())
}

/// The URL with its masked parts put back from `old` (the same parameter name, its same
/// occurrence; the password); `None` when `old` has nothing for one of them.
pub fn unmasked(text: &str, old: &str, listed: &[String]) -> Option<String> {
    let before = parts(old);
    rebuild(text, listed, |what, shown| {
        if shown != MASK {
            return Some(shown.to_string());
        }
        match what {
            Secret::Password => before.password.map(str::to_string),
            Secret::Param(name, nth) => before
                .params
                .iter()
                .filter(|q| param_name(q) == name)
                .nth(nth)
                .and_then(|q| q.split_once('='))
                .map(|(_, v)| v.to_string()),
        }
    })
}

/// A secret part of a URL: its password, or the `nth` occurrence of a parameter.
enum Secret<'a> {
    Password,
    Param(Cow<'a, str>, usize),
}

/// The URL with each secret part's value replaced by what `value(part, shown)` answers.
fn rebuild(
    text: &str,
    listed: &[String],
    mut value: impl FnMut(Secret<'_>, &str) -> Option<String>,
) -> Option<String> {
    let p = parts(text);
    let mut out = String::with_capacity(text.len());
    out.push_str(p.head);
    if let Some(password) = p.password {
        out.push_str(&value(Secret::Password, password)?);
    }
    out.push_str(p.middle);
    let mut seen: Vec<Cow<'_, str>> = Vec::new();
    for (i, param) in p.params.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        if secret_param(param, listed) {
            let name = param_name(param);
            let nth = seen.iter().filter(|n| **n == name).count();
            seen.push(name.clone());
            let (raw_name, shown) = param.split_once('=').unwrap_or((param, ""));
            out.push_str(raw_name);
            out.push('=');
            out.push_str(&value(Secret::Param(name, nth), shown)?);
        } else {
            out.push_str(param);
        }
    }
    out.push_str(p.fragment);
    Some(out)
}

/// A URL as errors, logs and reads may show it: its secret parts masked (`listed`: more
/// secret query parameter names, lower case).
pub fn shown(text: &str, listed: &[String]) -> String {
    if has_secret(text, listed) {
        masked(text, listed)
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_query_secrets_and_passwords_and_nothing_else() {
        let cases = [
            (
                "https://a.example/p?key=abc&page=2",
                "https://a.example/p?key=********&page=2",
            ),
            ("https://u:pw@a.example/p", "https://u:********@a.example/p"),
            ("https://u@a.example/p?x=1", "https://u@a.example/p?x=1"),
            (
                "https://a.example/{{ .a }}?api%5Fkey=s#frag",
                "https://a.example/{{ .a }}?api%5Fkey=********#frag",
            ),
            (
                "https://a.example/?q={{ .a + \"&token=x\" }}&sig=1",
                "https://a.example/?q={{ .a + \"&token=x\" }}&sig=********",
            ),
            ("https://a.example/?token", "https://a.example/?token"),
        ];
        for (text, want) in cases {
            assert_eq!(masked(text, &[]), want, "{text}");
        }
        assert_eq!(
            masked("https://a.example/?mine=1&b=2", &["mine".into()]),
            "https://a.example/?mine=********&b=2"
        );
        assert!(!has_secret("https://a.example/?page=1", &[]));
    }

    #[test]
    fn masked_parts_come_back_from_the_old_text() {
        let old = "https://u:pw@a.example/p?key=k1&key=k2&page=1";
        let sent = "https://u:********@a.example/q?key=********&key=new&page=3";
        assert_eq!(
            unmasked(sent, old, &[]).as_deref(),
            Some("https://u:pw@a.example/q?key=k1&key=new&page=3")
        );
        assert_eq!(
            unmasked(
                "https://a.example/?token=********",
                "https://a.example/",
                &[]
            ),
            None
        );
    }
}
