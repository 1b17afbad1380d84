//! Console sessions: signing in with an API token opens one, kept in this process's memory and
//! named by a random id in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` when the request
//! came over HTTPS). A session keeps the token's digest, not the token, and its scope is asked
//! again on every request, so revoking a token closes its sessions. Each session has a CSRF
//! token that every form that changes something must send back.

use crate::api::Scope;
use axum::http::HeaderMap;
use std::collections::HashMap;
use std::sync::Mutex;

/// The session cookie's name.
pub const COOKIE: &str = "ferry_session";

/// How long a session lasts from its sign-in.
pub const LIFETIME_MS: i64 = 12 * 3600 * 1000;

/// Most sessions kept at once; past it the oldest is closed.
const MAX_SESSIONS: usize = 10_000;

/// Most sessions one token opens; past it that token's oldest is closed, so that no token
/// holder can push the others' sessions out.
const MAX_SESSIONS_PER_TOKEN: usize = 20;

/// One signed-in browser.
#[derive(Clone)]
pub struct Session {
    /// SHA-256 of the token it was opened with.
    pub token_digest: [u8; 32],
    /// The token's scope when the session was opened (asked again on each request).
    pub scope: Scope,
    /// What each state-changing form must send as `csrf`.
    pub csrf: String,
    pub expires_at: i64,
}

/// The open sessions, by id.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a session; its id is for the cookie.
    pub fn open(
        &self,
        token_digest: [u8; 32],
        scope: Scope,
        now: i64,
    ) -> std::io::Result<(String, Session)> {
        let id = crate::ids::random_token("")?;
        let session = Session {
            token_digest,
            scope,
            csrf: crate::ids::random_token("")?,
            expires_at: now + LIFETIME_MS,
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| s.expires_at > now);
        let oldest = |open: &HashMap<String, Session>, same_token: bool| {
            open.iter()
                .filter(|(_, s)| !same_token || s.token_digest == token_digest)
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(id, _)| id.clone())
        };
        let of_token = open
            .values()
            .filter(|s| s.token_digest == token_digest)
            .count();
        let full = if of_token >= MAX_SESSIONS_PER_TOKEN {
            oldest(&open, true)
        } else if open.len() >= MAX_SESSIONS {
            oldest(&open, false)
        } else {
            None
        };
        if let Some(id) = full {
            open.remove(&id);
        }
        open.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The session named by the request's cookie, while it lasts (any of the cookies of that
    /// name: another site on the same host may have set one too).
    pub fn find(&self, headers: &HeaderMap, now: i64) -> Option<(String, Session)> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        cookies(headers, COOKIE).find_map(|id| {
            let session = open.get(id).filter(|s| s.expires_at > now)?;
            Some((id.to_string(), session.clone()))
        })
    }

    /// The session with this id, while it lasts.
    pub fn get(&self, id: &str, now: i64) -> Option<Session> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(id).filter(|s| s.expires_at > now).cloned()
    }

    pub fn close(&self, id: &str) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(id);
    }
}

/// The values of the cookies named `name` in the request's `Cookie` headers.
fn cookies<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request came over HTTPS: directly, or through a proxy that says so.
pub fn over_https(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    uri.scheme_str() == Some("https")
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that gives the browser session `id` (or, with `None`, takes it back).
pub fn set_cookie(id: Option<&str>, https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            LIFETIME_MS / 1000
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// Whether `given` is the session's CSRF token (constant time).
pub fn csrf_matches(session: &Session, given: &str) -> bool {
    csrf_is(&session.csrf, given)
}

/// Whether `given` is the CSRF token `expected` (constant time).
pub fn csrf_is(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_are_found_by_cookie_and_end() {
        let sessions = Sessions::default();
        let (id, session) = sessions.open([7; 32], Scope::Read, 1_000).unwrap();
        let mut headers = HeaderMap::new();
        let value = format!("theme=dark; {COOKIE}={id}; other=1");
        headers.insert(axum::http::header::COOKIE, value.parse().unwrap());
        let (found, s) = sessions.find(&headers, 2_000).unwrap();
        assert_eq!((found.as_str(), s.scope), (id.as_str(), Scope::Read));
        assert!(csrf_matches(&s, &session.csrf));
        assert!(!csrf_matches(&s, ""));
        assert!(
            sessions.find(&headers, 1_000 + LIFETIME_MS).is_none(),
            "expired"
        );
        sessions.close(&id);
        assert!(sessions.find(&headers, 2_000).is_none(), "closed");
        let cookie = set_cookie(Some("abc"), true);
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(cookie.contains(part), "{cookie}");
        }
        assert!(!set_cookie(Some("abc"), false).contains("Secure"));
    }

    #[test]
    fn one_token_cannot_push_the_others_sessions_out_and_any_cookie_of_the_name_counts() {
        let sessions = Sessions::default();
        let (admin, _) = sessions.open([1; 32], Scope::Admin, 0).unwrap();
        for _ in 0..100 {
            sessions.open([2; 32], Scope::Read, 0).unwrap();
        }
        let open = sessions.open.lock().unwrap();
        assert_eq!(open.len(), 1 + MAX_SESSIONS_PER_TOKEN);
        assert!(open.contains_key(&admin));
        drop(open);
        let mut headers = HeaderMap::new();
        let value = format!("{COOKIE}=planted; {COOKIE}={admin}");
        headers.insert(axum::http::header::COOKIE, value.parse().unwrap());
        assert_eq!(sessions.find(&headers, 1).map(|(id, _)| id), Some(admin));
    }
}
