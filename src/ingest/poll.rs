//! Polling sources: each `kind: poll` source's request is sent on its interval or cron
//! pattern, its pages followed, and each new item made an event that takes a webhook's path
//! from its body on (`ingest::emit`): the item's id is the idempotency key, so an item seen
//! before is a duplicate and starts nothing. What a source keeps between polls (its
//! high-water mark, the last `ETag` and `Last-Modified`, its failures) is in the store, so a
//! restart goes on from there. A failed poll is tried again after a backoff (or the upstream's
//! `Retry-After`), and counted where people look: a metric, and the store for the
//! `source_failing` alert. In cluster mode the polls run on one node at a time (the holder of
//! the `polls` lead).

use crate::clock::Millis;
use crate::config::Source;
use crate::config::poll::{Pagination, Poll, PollState, PollWhen};
use crate::deliver::http_step::{TokenCache, perform};
use crate::egress::EgressClient;
use crate::engine::HttpRequest;
use crate::state::{AppState, WeakAppState};
use crate::store::postgres::{Singleton, Turn};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// The lead whose holder runs the polls (cluster mode).
const POLLS_SINGLETON: &str = "polls";

/// How often the loop looks again at the config and the lead without a poll due.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// The longest wait after failed polls.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The first wait after a failed poll of a source on a cron pattern.
const CRON_BACKOFF: Duration = Duration::from_secs(60);

/// The parts the polls use besides the state.
struct Polling {
    client: EgressClient,
    tokens: TokenCache,
}

/// Starts the polls of every polling source, today's and those the API adds.
pub fn start(app: &AppState, client: EgressClient) {
    let alive = app.alive.subscribe();
    let clock = app.clock.clone();
    let polling = Arc::new(Polling {
        client,
        tokens: TokenCache::default(),
    });
    tokio::spawn(run(app.downgrade(), clock, polling, alive));
}

/// A polling source as the loop follows it.
struct Followed {
    source: Arc<Source>,
    /// When it polls next; `None` while a poll runs.
    next: Option<Millis>,
}

/// The outcome of one poll: when the next is due.
struct Polled {
    source_id: String,
    next: Millis,
}

async fn run(
    weak: WeakAppState,
    clock: crate::clock::SharedClock,
    polling: Arc<Polling>,
    mut alive: tokio::sync::watch::Receiver<()>,
) {
    let mut followed: HashMap<String, Followed> = HashMap::new();
    let mut running: JoinSet<Polled> = JoinSet::new();
    let mut lead = Singleton::new(POLLS_SINGLETON);
    loop {
        let Some(app) = weak.upgrade() else {
            return;
        };
        let turn = lead.turn(&app.store).await;
        if turn == Turn::Others {
            followed.clear();
        } else {
            follow(&app, &mut followed).await;
            let now = app.clock.now_ms();
            for (id, f) in followed.iter_mut() {
                if f.next.is_some_and(|at| at <= now) {
                    f.next = None;
                    let (app, polling, source) = (app.clone(), polling.clone(), f.source.clone());
                    let id = id.clone();
                    running.spawn(async move {
                        let next = poll_once(&app, &polling, &source).await;
                        Polled {
                            source_id: id,
                            next,
                        }
                    });
                }
            }
        }
        drop(app);
        let due = followed.values().filter_map(|f| f.next).min();
        tokio::select! {
            _ = clock.sleep_until(due.unwrap_or(Millis::MAX)) => {}
            _ = tokio::time::sleep(LOOK_AGAIN) => {}
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(polled) = done
                    && let Some(f) = followed.get_mut(&polled.source_id)
                {
                    f.next = Some(polled.next);
                }
            }
            _ = alive.changed() => return,
        }
    }
}

/// Follows the config's polling sources: a new one polls at once on an interval, or at its
/// next tick; a changed one keeps its time; one that left the config is dropped.
async fn follow(app: &AppState, followed: &mut HashMap<String, Followed>) {
    let config = app.config.get();
    followed.retain(|id, _| config.sources.get(id).is_some_and(|s| s.poll.is_some()));
    let now = app.clock.now_ms();
    for source in config.sources.values() {
        let Some(poll) = source.poll.as_deref() else {
            continue;
        };
        match followed.get_mut(&source.id) {
            Some(f) => f.source = source.clone(),
            None => {
                let next = match &poll.when {
                    PollWhen::Every(_) => Some(now),
                    PollWhen::Cron(ticks) => ticks.next_after(now),
                };
                followed.insert(
                    source.id.clone(),
                    Followed {
                        source: source.clone(),
                        next,
                    },
                );
            }
        }
    }
}

/// Why a poll stopped before its end.
struct Failed {
    error: String,
    retry_after: Option<Duration>,
}

/// One poll of `source`, its pages followed; answers when the next is due.
async fn poll_once(app: &AppState, polling: &Polling, source: &Source) -> Millis {
    let Some(poll) = source.poll.as_deref() else {
        return Millis::MAX;
    };
    let started = app.clock.now_ms();
    let saved = match app.store.source_state(&source.id).await {
        Ok(Some(text)) => Some(serde_json::from_str::<PollState>(&text).unwrap_or_default()),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(source = %source.id, error = %e, "cannot read the polling source's state; trying again shortly");
            return started + 5_000;
        }
    };
    let mut state = saved.unwrap_or_default();
    let first_poll = state.worked_at.is_none();
    let outcome = pages(app, polling, source, poll, &mut state, first_poll).await;
    let now = app.clock.now_ms();
    state.polled_at = now;
    let next = match outcome {
        Ok(()) => {
            state.failures = 0;
            state.last_error = None;
            state.worked_at = Some(now);
            match &poll.when {
                PollWhen::Every(every) => started.saturating_add(millis(*every)),
                PollWhen::Cron(ticks) => ticks.next_after(now).unwrap_or(Millis::MAX),
            }
        }
        Err(failed) => {
            state.failures = state.failures.saturating_add(1);
            tracing::warn!(source = %source.id, failures = state.failures, error = %failed.error, "a poll failed");
            app.metrics
                .poll_failures
                .get_or_create(&vec![("source", source.id.clone())])
                .inc();
            let base = match &poll.when {
                PollWhen::Every(every) => *every,
                PollWhen::Cron(_) => CRON_BACKOFF,
            };
            let doubled = base
                .checked_mul(1u32 << state.failures.min(20))
                .unwrap_or(MAX_BACKOFF)
                .min(MAX_BACKOFF);
            let wait = doubled.max(failed.retry_after.unwrap_or_default().min(MAX_BACKOFF));
            state.last_error = Some(failed.error);
            now.saturating_add(millis(wait))
        }
    };
    app.metrics
        .source_failing
        .get_or_create(&vec![("source", source.id.clone())])
        .set(i64::from(state.failures));
    let text = serde_json::to_string(&state).unwrap_or_default();
    if let Err(e) = app.store.save_source_state(&source.id, text, now).await {
        tracing::warn!(source = %source.id, error = %e, "cannot keep the polling source's state; the next poll may take items again (they are duplicates)");
    }
    next
}

fn millis(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

/// The pages of one poll, each item of them taken. Keeps the new high-water mark and the first
/// page's validators in `state` only when every page was read.
async fn pages(
    app: &AppState,
    polling: &Polling,
    source: &Source,
    poll: &Poll,
    state: &mut PollState,
    first_poll: bool,
) -> Result<(), Failed> {
    let mut url = poll.url.clone();
    if let (Some(cursor), Some(value)) = (&poll.cursor, &state.cursor) {
        set_param(&mut url, &cursor.param, value);
    }
    let first_url = url.clone();
    let mut page_number = match &poll.pagination {
        Some(Pagination::Page { param, start }) => {
            set_param(&mut url, param, &start.to_string());
            *start
        }
        _ => 0,
    };
    let mut mark = Mark {
        high: state.cursor.clone(),
        untaken_at_high: state.untaken_at_cursor.clone(),
    };
    let mut validators = (None, None);
    for page in 1..=poll.max_pages {
        let mut headers = literal_headers(poll);
        if page == 1 {
            for (name, value) in [
                (reqwest::header::IF_NONE_MATCH, &state.etag),
                (reqwest::header::IF_MODIFIED_SINCE, &state.last_modified),
            ] {
                if let Some(v) = value
                    && let Ok(v) = reqwest::header::HeaderValue::from_str(v)
                {
                    headers.push((name, v));
                }
            }
        }
        let now = app.clock.now_ms();
        let request = HttpRequest {
            method: poll.request.method.clone(),
            url: url.clone(),
            headers,
            body: None,
            idempotency_key: format!("poll-{}-{now}-{page}", source.id),
        };
        let response = perform(
            &polling.client,
            &polling.tokens,
            &poll.request,
            &request,
            now,
        )
        .await;
        let status = response.status_code;
        if page == 1 && status == Some(304) {
            return Ok(());
        }
        // A 2xx whose body could not be read whole carries an error too.
        if !status.is_some_and(|s| (200..300).contains(&s)) || response.error.is_some() {
            return Err(Failed {
                error: format!(
                    "page {page} ({}): {}",
                    crate::config::redact::url::shown(
                        url.as_str(),
                        &poll.request.secret_query_params
                    ),
                    response.error.unwrap_or_else(|| "no answer".into())
                ),
                retry_after: response.retry_after,
            });
        }
        let header = |name: &str| {
            response
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        if page == 1 {
            validators = (header("etag"), header("last-modified"));
        }
        let failed = |error: String| Failed {
            error: format!("page {page}: {error}"),
            retry_after: None,
        };
        crate::json::check_depth(&response.body)
            .map_err(|e| failed(format!("the body is not strict JSON: {e}")))?;
        crate::json::check_json(&response.body, None)
            .map_err(|e| failed(format!("the body is not strict JSON: {e}")))?;
        let items = match app.sandbox.items(&poll.items, &response.body).await {
            Ok(Ok(items)) => items,
            Ok(Err(e)) => return Err(failed(format!("`items`: {e}"))),
            Err(e) => return Err(failed(format!("`items`: {e}"))),
        };
        let took = items.len();
        for item in items {
            take_item(app, source, poll, state, &mut mark, item, first_poll).await;
        }
        let next = match &poll.pagination {
            None => None,
            Some(Pagination::Link) => header("link")
                .and_then(|link| next_link(&link))
                .and_then(|next| url.join(&next).ok()),
            Some(Pagination::NextUrl(path)) => match app.sandbox.read(path, &response.body).await {
                Ok(Ok(Some(next))) if !next.is_empty() => Some(url.join(&next).map_err(|e| {
                    failed(format!("`pagination.path` gave `{next}`, not a URL ({e})"))
                })?),
                Ok(Ok(_)) => None,
                Ok(Err(e)) => return Err(failed(format!("`pagination.path`: {e}"))),
                Err(e) => return Err(failed(format!("`pagination.path`: {e}"))),
            },
            Some(Pagination::Cursor { path, param }) => {
                match app.sandbox.read(path, &response.body).await {
                    Ok(Ok(Some(value))) if !value.is_empty() => {
                        let mut next = first_url.clone();
                        set_param(&mut next, param, &value);
                        Some(next)
                    }
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => return Err(failed(format!("`pagination.path`: {e}"))),
                    Err(e) => return Err(failed(format!("`pagination.path`: {e}"))),
                }
            }
            Some(Pagination::Page { param, .. }) => (took > 0).then(|| {
                page_number = page_number.saturating_add(1);
                let mut next = url.clone();
                set_param(&mut next, param, &page_number.to_string());
                next
            }),
        };
        match next {
            Some(next) if next != url => url = next,
            _ => break,
        }
    }
    state.cursor = mark.high;
    state.untaken_at_cursor = mark.untaken_at_high;
    (state.etag, state.last_modified) = validators;
    Ok(())
}

/// The high-water mark a poll moves up, and the ids of the items at it that were not taken
/// (a first poll without backfill): an API whose `since` is inclusive sends them again.
struct Mark {
    high: Option<String>,
    untaken_at_high: Vec<String>,
}

/// The most ids of untaken items at the mark kept.
const MAX_UNTAKEN: usize = 1000;

/// One item: skipped when its cursor value is below the high-water mark kept (or it is one
/// the first poll left out at the mark), taken as an event otherwise (unless this is the
/// first poll of a source that does not backfill); the mark moves up to its value.
async fn take_item(
    app: &AppState,
    source: &Source,
    poll: &Poll,
    state: &PollState,
    mark: &mut Mark,
    item: String,
    first_poll: bool,
) {
    let read = |expr, what: &'static str| {
        let item = item.as_bytes();
        async move {
            match app.sandbox.read(expr, item).await {
                Ok(Ok(v)) => Ok(v.filter(|v| !v.is_empty())),
                Ok(Err(e)) => Err(Some(format!("`{what}` on an item: {e}"))),
                Err(e) => {
                    tracing::warn!(source = %source.id, error = %e, "an item's `{what}` could not be read");
                    Err(None)
                }
            }
        }
    };
    let refuse = |why: Option<String>| async move {
        if let Some(why) = why {
            super::record_failure(app, &source.id, "invalid_item", why).await;
        }
    };
    // An item without an id would be taken again at every poll: refused instead.
    let id = match read(&poll.item_id, "item_id").await {
        Ok(Some(id)) => id,
        Ok(None) => {
            return refuse(Some(format!(
                "an item without an id at `{}`; it was not taken",
                poll.item_id.code()
            )))
            .await;
        }
        Err(why) => return refuse(why).await,
    };
    let take = !first_poll || poll.backfill;
    if let Some(cursor) = &poll.cursor {
        let value = match read(&cursor.path, "cursor.path").await {
            Ok(v) => v,
            Err(why) => return refuse(why).await,
        };
        if let Some(value) = value {
            if let Some(kept) = state.cursor.as_deref() {
                let order = compare(&value, kept);
                if order.is_lt() || (order.is_eq() && state.untaken_at_cursor.contains(&id)) {
                    return;
                }
            }
            match mark.high.as_deref().map(|h| compare(&value, h)) {
                None | Some(std::cmp::Ordering::Greater) => {
                    mark.high = Some(value);
                    mark.untaken_at_high.clear();
                    if !take {
                        mark.untaken_at_high.push(id.clone());
                    }
                }
                Some(std::cmp::Ordering::Equal)
                    if !take && mark.untaken_at_high.len() < MAX_UNTAKEN =>
                {
                    mark.untaken_at_high.push(id.clone());
                }
                _ => {}
            }
        }
    }
    if !take {
        return;
    }
    if let Err(why) = super::emit(app, &source.id, item.into(), None).await {
        tracing::info!(source = %source.id, "an item was not taken: {why}");
    }
}

/// Cursor values: as numbers when both are numbers, as text otherwise.
fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) if x.is_finite() && y.is_finite() => x.total_cmp(&y),
        _ => a.cmp(b),
    }
}

/// The request's headers, which a poll's config writes without placeholders.
fn literal_headers(
    poll: &Poll,
) -> Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)> {
    poll.request
        .headers
        .iter()
        .filter_map(|(name, template)| {
            let value = reqwest::header::HeaderValue::from_str(template.source()).ok()?;
            Some((name.clone(), value))
        })
        .collect()
}

/// Sets the query parameter `name` to `value`, replacing what the URL had for it.
fn set_param(url: &mut url::Url, name: &str, value: &str) {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut pairs = url.query_pairs_mut();
    pairs.clear();
    for (k, v) in &kept {
        pairs.append_pair(k, v);
    }
    pairs.append_pair(name, value);
}

/// The `rel="next"` target of a `Link` header (RFC 8288): `<url>; rel="next", <url>; rel=...`.
fn next_link(header: &str) -> Option<String> {
    for link in header.split(',') {
        let mut parts = link.split(';');
        let target = parts.next()?.trim();
        let target = target.strip_prefix('<')?.strip_suffix('>')?;
        let is_next = parts.any(|p| {
            let p = p.trim();
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            })
        });
        if is_next {
            return Some(target.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(
                r#"<https://api.example/t?page=2>; rel="next", <https://api.example/t?page=9>; rel="last""#
            ),
            Some("https://api.example/t?page=2".into())
        );
        assert_eq!(
            next_link(r#"<https://api.example/t?page=1>; rel="prev first""#),
            None
        );
        assert_eq!(
            next_link(r#"</t?page=3>; rel=next"#),
            Some("/t?page=3".into())
        );
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn cursors_compare_as_numbers_or_text() {
        assert!(compare("10", "9").is_gt());
        assert!(compare("2026-12-06T10:00:00Z", "2026-12-05T23:00:00Z").is_gt());
        // Past f64: compared as text, not as infinity.
        assert!(compare("1e999999", "5").is_lt());
    }

    #[test]
    fn a_param_is_replaced() {
        let mut url = url::Url::parse("https://a.example/t?since=1&x=y").unwrap();
        set_param(&mut url, "since", "2 3");
        assert_eq!(url.as_str(), "https://a.example/t?x=y&since=2+3");
    }
}
