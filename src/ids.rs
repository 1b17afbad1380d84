//! Identifiers: prefixed, time-sortable strings (`evt_01J...`), so ids read well in logs and
//! sort by creation time, which keeps cursor pagination simple.

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new())
}

pub fn event_id() -> String {
    new_id("evt")
}

pub fn run_id() -> String {
    new_id("run")
}

pub fn delivery_id() -> String {
    new_id("dlv")
}

/// A random secret token of 32 bytes, base64url without padding.
pub fn random_token(prefix: &str) -> std::io::Result<String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// `id` with everything but unreserved characters percent-encoded: one segment of a URL path
/// (a console link, a redirect).
pub fn in_path(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
