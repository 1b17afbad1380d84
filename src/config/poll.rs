//! A polling source (`kind: poll`): the request (an `http` step's, without placeholders), when
//! it is sent (`every` or a cron pattern), how its answer is read (items, each item's id, the
//! high-water mark), how the next page is found, and whether the first poll takes what exists.

use super::Checker;
use super::expr::Expr;
use super::program::HttpStep;
use super::raw::RawSource;
use super::schedule::Ticks;
use super::settings::Settings;
use crate::clock::Millis;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug)]
pub struct Poll {
    pub request: HttpStep,
    /// The first page's URL, as written.
    pub url: url::Url,
    pub when: PollWhen,
    /// On a page's JSON body: each output is an item.
    pub items: Expr,
    /// On an item: its id, the event's idempotency key.
    pub item_id: Expr,
    pub cursor: Option<PollCursor>,
    pub pagination: Option<Pagination>,
    pub max_pages: u32,
    /// The first poll makes events of what already exists.
    pub backfill: bool,
}

#[derive(Debug)]
pub enum PollWhen {
    Every(Duration),
    Cron(Box<Ticks>),
}

/// The high-water mark: the greatest value of `path` over the items seen, sent as `param` on
/// the first page of the next poll.
#[derive(Debug)]
pub struct PollCursor {
    pub path: Expr,
    pub param: String,
}

#[derive(Debug)]
pub enum Pagination {
    /// The `Link` header's `rel="next"`.
    Link,
    /// A URL in the page (relative to the page's).
    NextUrl(Expr),
    /// A value in the page, sent as `param` with the first page's URL.
    Cursor { path: Expr, param: String },
    /// Page numbers in `param` from `start`; a page without items is the last.
    Page { param: String, start: u64 },
}

/// What a source keeps between polls, as JSON in the store.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PollState {
    /// The greatest `cursor.path` value seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// Consecutive failed polls, and the last one's reason.
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the last poll ended (worked or not).
    #[serde(default)]
    pub polled_at: Millis,
    /// When a poll last read all its pages: never, for a source whose first poll is still to
    /// come (a failed first poll does not count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worked_at: Option<Millis>,
}

/// The most pages one poll may follow.
pub const MAX_PAGES: u32 = 1000;
/// The shortest `every`.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

impl Checker<'_> {
    pub(super) fn poll(
        &mut self,
        place: &str,
        raw: &mut RawSource,
        settings: &Settings,
    ) -> Option<Poll> {
        for (field, given) in [
            ("verify", raw.verify.is_some()),
            ("format", raw.format.is_some()),
            ("cloudevents", raw.cloudevents.is_some()),
            ("missed", raw.missed.is_some()),
            ("emit", raw.emit.is_some()),
        ] {
            if given {
                self.error(
                    place.to_string(),
                    format!("`{field}` does not apply to a polling source"),
                );
            }
        }
        let Some(request) = raw.request.take() else {
            self.error(
                place.to_string(),
                "`request` is required for a polling source",
            );
            return None;
        };
        let placeholders =
            request.url.contains("{{") || request.headers.values().any(|v| v.contains("{{"));
        if placeholders {
            self.error(
                place.to_string(),
                "`request`: a poll's URL and headers take no `{{ }}` placeholders (the cursor and pages are added as query parameters)",
            );
        }
        for (field, given) in [
            ("body", request.body.is_some()),
            ("retry", request.retry.is_some()),
        ] {
            if given {
                self.error(
                    place.to_string(),
                    format!("`request.{field}` does not apply to a poll (a failed poll is tried again with its own backoff)"),
                );
            }
        }
        let url = url::Url::parse(&request.url).ok();
        let request = self.http_step(place, request, settings)?;
        let url = url?;
        let when = match (raw.every.take(), raw.cron.take()) {
            (Some(_), Some(_)) => {
                self.error(place.to_string(), "give `every` or `cron`, not both");
                return None;
            }
            (None, None) => {
                self.error(
                    place.to_string(),
                    "a polling source needs `every` (e.g. `1m`) or `cron`",
                );
                return None;
            }
            (Some(every), None) => {
                if raw.timezone.is_some() {
                    self.error(
                        place.to_string(),
                        "`timezone` goes with `cron`, not `every`",
                    );
                }
                PollWhen::Every(self.duration_at_least(
                    place,
                    "every",
                    &Some(every),
                    MIN_EVERY,
                    MIN_EVERY,
                ))
            }
            (None, Some(pattern)) => {
                PollWhen::Cron(Box::new(self.ticks(place, pattern, raw.timezone.take())?))
            }
        };
        let items = self.expr(place, "items", raw.items.as_deref().unwrap_or(".[]"))?;
        let Some(item_id) = raw.item_id.take() else {
            self.error(
                place.to_string(),
                "`item_id` is required for a polling source: a jq path to each item's id (e.g. `.id`)",
            );
            return None;
        };
        let item_id = self.expr(place, "item_id", &item_id)?;
        let cursor = match raw.cursor.take() {
            None => None,
            Some(c) => {
                self.check_param(place, "cursor.param", &c.param);
                Some(PollCursor {
                    path: self.expr(place, "cursor.path", &c.path)?,
                    param: c.param,
                })
            }
        };
        let pagination = match raw.pagination.take() {
            None => None,
            Some(p) => self.pagination(place, p),
        };
        let max_pages = raw.max_pages.unwrap_or(10);
        if !(1..=MAX_PAGES).contains(&max_pages) {
            self.error(
                place.to_string(),
                format!("`max_pages` is {max_pages}; use 1 to {MAX_PAGES}"),
            );
        }
        let backfill = raw.backfill.unwrap_or(true);
        if !backfill && cursor.is_none() {
            self.error(
                place.to_string(),
                "`backfill: false` needs `cursor`: the first poll keeps the high-water mark of what exists, and later polls take what is newer",
            );
        }
        Some(Poll {
            request,
            url,
            when,
            items,
            item_id,
            cursor,
            pagination,
            max_pages,
            backfill,
        })
    }

    fn pagination(&mut self, place: &str, raw: super::raw::RawPagination) -> Option<Pagination> {
        let wants = |kind: &str| match kind {
            "link" => (false, false, false),
            "next_url" => (true, false, false),
            "cursor" => (true, true, false),
            "page" => (false, true, true),
            _ => (false, false, false),
        };
        if !matches!(raw.kind.as_str(), "link" | "next_url" | "cursor" | "page") {
            self.error(
                place.to_string(),
                format!(
                    "`pagination.kind`: `{}` is not one of link, next_url, cursor, page",
                    raw.kind
                ),
            );
            return None;
        }
        let (path, param, start) = wants(&raw.kind);
        for (field, given, wanted) in [
            ("path", raw.path.is_some(), path),
            ("param", raw.param.is_some(), param),
            ("start", raw.start.is_some(), start),
        ] {
            if given && !wanted {
                self.error(
                    place.to_string(),
                    format!(
                        "`pagination.{field}` does not apply to `kind: {}`",
                        raw.kind
                    ),
                );
            }
            if !given && wanted && field != "start" {
                self.error(
                    place.to_string(),
                    format!("`pagination.{field}` is required for `kind: {}`", raw.kind),
                );
                return None;
            }
        }
        let param = raw.param.unwrap_or_default();
        if matches!(raw.kind.as_str(), "cursor" | "page") {
            self.check_param(place, "pagination.param", &param);
        }
        let path = match raw.path {
            Some(code) => Some(self.expr(place, "pagination.path", &code)?),
            None => None,
        };
        Some(match (raw.kind.as_str(), path) {
            ("next_url", Some(path)) => Pagination::NextUrl(path),
            ("cursor", Some(path)) => Pagination::Cursor { path, param },
            ("page", _) => Pagination::Page {
                param,
                start: raw.start.unwrap_or(1),
            },
            _ => Pagination::Link,
        })
    }

    /// A query parameter's name: not empty, and nothing that would need escaping to mean it.
    fn check_param(&mut self, place: &str, field: &str, name: &str) {
        let plain = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.[]".contains(&b));
        if !plain {
            self.error(
                place.to_string(),
                format!("`{field}`: a query parameter's name is 1 to 128 of a-z A-Z 0-9 - _ . [ ]"),
            );
        }
    }
}
