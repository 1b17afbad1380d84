//! Poll sources against a real paginated HTTP API started here (a small axum server on
//! 127.0.0.1:0 whose data the tests change between polls, and which records every request):
//! pagination of each kind, the cursor and the conditional headers (kept across a restart),
//! backoff after failures and `Retry-After`, the failure metrics and alert, `backfill: false`,
//! and upstreams that answer with hostile pages. Time is the app's `ManualClock`.

use crate::helpers::*;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// The upstream API
// ---------------------------------------------------------------------------------------------

/// One request the upstream received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    /// The query's parameters, percent-decoded, in order.
    query: Vec<(String, String)>,
    headers: HeaderMap,
}

impl Seen {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// An answer the upstream gives instead of its data (from `Upstream::script`).
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: vec![],
            body: vec![],
        }
    }

    fn json(body: &Value) -> Answer {
        Answer::raw(200, body.to_string().into_bytes())
    }

    fn raw(status: u16, body: Vec<u8>) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        }
    }

    fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The upstream's data and what it answers next.
#[derive(Default)]
struct Api {
    /// Oldest first: each `{id, kind, n, updated_at, title}`.
    items: Vec<Value>,
    /// Moves with each change of `items`: the ETag is `"v<version>"`.
    version: u64,
    /// Whether page 1 carries an `ETag` and a `Last-Modified` (and answers `304` to them).
    conditional: bool,
    /// Answers given, one per request, before the data is served again.
    script: VecDeque<Answer>,
    /// Answers given, one per request, to requests for page `page=<key>`.
    page_script: std::collections::HashMap<String, VecDeque<Answer>>,
}

/// A paginated API of tickets. Paths name the pagination:
/// - `/link?per_page=N&page=P`: a `Link` header (with `first` and `last` around `next`);
/// - `/next_url?...`: `.links.next`, a relative URL, `null` on the last page;
/// - `/cursor?...&cursor=C`: `.meta.next_cursor` (`after:<id>`), `""` on the last page;
/// - `/page?...&page=P`: nothing; a page past the end is empty.
///
/// `since` keeps the items at or after it (as GitHub's `since` does): a number is compared
/// with `.n`, anything else with `.updated_at`. Every body is `{"data": [...], ...}`.
#[derive(Clone)]
struct Upstream {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    api: Arc<Mutex<Api>>,
}

impl Upstream {
    async fn start() -> Upstream {
        Upstream::start_at("127.0.0.1").await
    }

    async fn start_at(ip: &str) -> Upstream {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Upstream {
            base: format!("http://{addr}"),
            seen: Arc::default(),
            api: Arc::default(),
        };
        let state = up.clone();
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap| {
                let state = state.clone();
                async move {
                    let query = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    let seen = Seen {
                        method: method.to_string(),
                        path: uri.path().to_string(),
                        query,
                        headers,
                    };
                    state.seen.lock().unwrap().push(seen.clone());
                    let answer = state.api.lock().unwrap().answer(&seen);
                    let mut response = axum::http::Response::builder().status(answer.status);
                    for (k, v) in answer.headers {
                        response = response.header(k, v);
                    }
                    response.body(axum::body::Body::from(answer.body)).unwrap()
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        up
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    fn add(&self, items: impl IntoIterator<Item = Value>) {
        let mut api = self.api.lock().unwrap();
        api.items.extend(items);
        api.version += 1;
    }

    fn conditional(&self) {
        self.api.lock().unwrap().conditional = true;
    }

    fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.api.lock().unwrap().script.extend(answers);
    }

    /// Answers for requests of page `page` (the `page` parameter), one per request.
    fn script_page(&self, page: &str, answers: impl IntoIterator<Item = Answer>) {
        self.api
            .lock()
            .unwrap()
            .page_script
            .entry(page.to_string())
            .or_default()
            .extend(answers);
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn requests_to(&self, path: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.path == path)
            .collect()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn count_to(&self, path: &str) -> usize {
        self.requests_to(path).len()
    }

    async fn wait_for(&self, n: usize) {
        wait_until(&format!("{n} requests upstream"), || async {
            self.count() >= n
        })
        .await;
    }

    async fn wait_for_path(&self, path: &str, n: usize) {
        wait_until(&format!("{n} requests to {path}"), || async {
            self.count_to(path) >= n
        })
        .await;
    }

    /// Waits a moment (real time) and checks that no request came past the first `n`.
    async fn quiet(&self, n: usize, why: &str) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            self.count(),
            n,
            "{why}: {:#?}",
            &self.requests()[n.min(self.count())..]
        );
    }
}

/// `since` read the upstream's way: a number against `.n`, text against `.updated_at`.
fn at_or_after(item: &Value, since: &str) -> bool {
    match since.parse::<f64>() {
        Ok(number) => item["n"].as_f64().is_some_and(|n| n >= number),
        Err(_) => item["updated_at"].as_str().is_some_and(|t| t >= since),
    }
}

impl Api {
    fn answer(&mut self, seen: &Seen) -> Answer {
        if let Some(answer) = self.script.pop_front() {
            return answer;
        }
        if let Some(answer) = seen
            .param("page")
            .and_then(|p| self.page_script.get_mut(p))
            .and_then(|answers| answers.pop_front())
        {
            return answer;
        }
        let per_page: usize = seen
            .param("per_page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(2);
        let since = seen.param("since");
        let items: Vec<&Value> = self
            .items
            .iter()
            .filter(|i| since.is_none_or(|s| at_or_after(i, s)))
            .collect();
        let page: usize = seen
            .param("page")
            .map(|p| p.parse().expect("a page number"))
            .unwrap_or(1);
        let offset = match seen.param("cursor") {
            Some(cursor) if seen.path == "/cursor" => {
                let after = cursor.strip_prefix("after:").expect("a cursor we gave");
                items.iter().position(|i| i["id"] == after).unwrap() + 1
            }
            _ => (page - 1) * per_page,
        };
        let slice: Vec<Value> = items
            .iter()
            .skip(offset)
            .take(per_page)
            .map(|i| (*i).clone())
            .collect();
        let more = offset + per_page < items.len();
        // The query of another page: this one's, its page number changed.
        let with_page = |p: usize| {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &seen.query {
                if k != "page" {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("page", &p.to_string());
            format!("{}?{}", seen.path, q.finish())
        };
        let first = page == 1 && seen.param("cursor").is_none();
        let mut headers: Vec<(String, String)> =
            vec![("content-type".into(), "application/json".into())];
        if self.conditional && first {
            let etag = format!("\"v{}\"", self.version);
            let modified = format!("Fri, 01 May 2026 12:00:{:02} GMT", self.version % 60);
            headers.push(("etag".into(), etag.clone()));
            headers.push(("last-modified".into(), modified));
            if seen.header("if-none-match") == Some(etag.as_str()) {
                headers.remove(0);
                return Answer {
                    status: 304,
                    headers,
                    body: vec![],
                };
            }
        }
        let body = match seen.path.as_str() {
            "/link" => {
                let host = &seen.header("host").map(|h| format!("http://{h}")).unwrap();
                let last = items.len().div_ceil(per_page).max(1);
                let mut links = vec![];
                if page > 1 {
                    links.push(format!("<{host}{}>; rel=\"first\"", with_page(1)));
                }
                if more {
                    links.push(format!("<{host}{}>; rel=\"next\"", with_page(page + 1)));
                }
                links.push(format!("<{host}{}>; rel=\"last\"", with_page(last)));
                headers.push(("link".into(), links.join(", ")));
                json!({ "data": slice })
            }
            "/next_url" => {
                let next = more.then(|| with_page(page + 1));
                json!({ "data": slice, "links": { "next": next } })
            }
            "/cursor" => {
                let next = match slice.last() {
                    Some(last) if more => format!("after:{}", last["id"].as_str().unwrap()),
                    _ => String::new(),
                };
                json!({ "data": slice, "meta": { "next_cursor": next } })
            }
            "/page" => json!({ "data": slice }),
            other => panic!("no such path upstream: {other}"),
        };
        Answer {
            status: 200,
            headers,
            body: body.to_string().into_bytes(),
        }
    }
}

/// Ticket `n`: `T<n>`, `n` = 7 + n (so that T2 is 9 and T3 is 10: numbers must be compared as
/// numbers), updated at 10:<n> on 2026-05-01.
fn ticket(n: u32) -> Value {
    json!({
        "id": format!("T{n}"),
        "kind": if n % 2 == 1 { "ticket.created" } else { "ticket.updated" },
        "n": 7 + n,
        "updated_at": format!("2026-05-01T10:{n:02}:00Z"),
        "title": format!("ticket {n}"),
    })
}

fn tickets(range: std::ops::RangeInclusive<u32>) -> Vec<Value> {
    range.map(ticket).collect()
}

// ---------------------------------------------------------------------------------------------
// Config and what the app shows
// ---------------------------------------------------------------------------------------------

/// A poll source: `url`, polled by `timing` (`every: 1m`, `cron: ...`), with more lines.
fn poll_source(id: &str, url: &str, timing: &str, extra: &[&str]) -> String {
    let mut s = format!(
        r#"
  - id: {id}
    kind: poll
    request:
      url: "{url}"
      method: GET
      headers: {{ accept: application/json }}
      auth: {{ bearer: "tok" }}
      timeout: 10s
    {timing}
    items: '.data[]'
    item_id: '.id'
    event_type: {{ from: body, path: .kind }}"#
    );
    for line in extra {
        s.push_str("\n    ");
        s.push_str(line);
    }
    s
}

const PRIVATE: &str = "{ allow_private_destinations: true }";

fn config(settings: &str, sources: &[String]) -> String {
    format!("settings: {settings}\nsources:{}\n", sources.concat())
}

/// The item ids (idempotency keys) of events, in order.
fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["idempotency_key"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Checks that `events` are exactly `items`, in order: the payload is the item, the type
/// its `kind`, the idempotency key its `id`.
fn assert_events_are(events: &[Value], source: &str, items: &[Value]) {
    assert_eq!(ids(events), ids_of(items), "the events of {source}");
    for (event, item) in events.iter().zip(items) {
        assert_eq!(event["source"], source, "{event}");
        assert_eq!(event["payload"], *item, "{event}");
        assert_eq!(event["event_type"], item["kind"], "{event}");
        assert_eq!(event["idempotency_key"], item["id"], "{event}");
    }
}

fn ids_of(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until `source` has at least `n` events and returns them all, oldest first (the
/// caller checks which: a failure then names the items).
async fn wait_events(app: &TestApp, source: &str, n: usize) -> Vec<Value> {
    wait_until(&format!("{n} events of {source}"), || async {
        events_of(app, source).await.len() >= n
    })
    .await;
    events_of(app, source).await
}

/// The value of metric `name` labelled `source="<source>"`, if the app shows one.
async fn metric(app: &TestApp, name: &str, source: &str) -> Option<f64> {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("source") == Some(source))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

const FAILURES: &str = "ferry_source_poll_failures_total";
const FAILING: &str = "ferry_source_failing";

async fn failures(app: &TestApp, source: &str) -> f64 {
    metric(app, FAILURES, source).await.unwrap_or(0.0)
}

async fn wait_failing(app: &TestApp, source: &str, n: f64) {
    wait_until(&format!("{FAILING}{{source={source}}} = {n}"), || async {
        metric(app, FAILING, source).await == Some(n)
    })
    .await;
}

/// Rejected-log entries of `source`.
async fn rejections_of(app: &TestApp, source: &str) -> Vec<Value> {
    let (status, log) = app.api_get("/api/v1/rejections?limit=500").await;
    assert_eq!(status, 200, "{log}");
    log["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"] == source)
        .cloned()
        .collect()
}

/// What shows that something went wrong with `source`: its failed polls and its entries in
/// the rejected log.
async fn trouble(app: &TestApp, source: &str) -> f64 {
    failures(app, source).await + rejections_of(app, source).await.len() as f64
}

/// Moves the app's clock by `by`, once the poll that just ran has settled (its end decides
/// when the next one is due).
async fn advance(app: &TestApp, by: Duration) {
    tokio::time::sleep(Duration::from_millis(50)).await;
    app.clock.advance(by);
}

/// Moves the clock `step` at a time until the upstream gets a request (a poll that is due
/// after a backoff of unknown length).
async fn advance_until_request(app: &TestApp, up: &Upstream, step: Duration) {
    let before = up.count();
    for _ in 0..400 {
        advance(app, step).await;
        for _ in 0..30 {
            if up.count() > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    panic!("no poll came");
}

/// The app still answers: readiness and the API.
async fn still_answers(app: &TestApp) {
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let (status, _) = app.api_get("/api/v1/events?limit=1").await;
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// 1. A first poll takes every page a `Link` header names; the next takes only what is new,
/// asking with `since` and dropping the item it has already seen.
#[tokio::test]
async fn the_first_poll_takes_every_page_and_the_next_only_what_is_new() {
    let up = Upstream::start().await;
    up.add(tickets(1..=5));
    let app = spawn_app(&config(
        PRIVATE,
        &[poll_source(
            "tickets",
            &up.url("/link?per_page=2"),
            "every: 1m",
            &[
                "cursor: { path: '.updated_at', param: since }",
                "pagination: { kind: link }",
            ],
        )],
    ))
    .await;

    let events = wait_events(&app, "tickets", 5).await;
    assert_events_are(&events, "tickets", &tickets(1..=5));
    let seen = up.requests();
    assert_eq!(seen.len(), 3, "three pages: {seen:#?}");
    let params: Vec<_> = seen.iter().map(|s| s.query.clone()).collect();
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        params[0],
        pairs(&[("per_page", "2")]),
        "page 1 as configured"
    );
    assert_eq!(params[1], pairs(&[("per_page", "2"), ("page", "2")]));
    assert_eq!(params[2], pairs(&[("per_page", "2"), ("page", "3")]));
    for s in &seen {
        assert_eq!(s.method, "GET");
        assert_eq!(s.path, "/link");
        assert_eq!(s.header("authorization"), Some("Bearer tok"), "{s:?}");
        assert_eq!(s.header("accept"), Some("application/json"), "{s:?}");
        assert_eq!(s.header("if-none-match"), None, "no ETag was ever given");
    }

    // Two new tickets upstream. The next poll asks `since` the greatest `updated_at` seen;
    // the upstream answers T5 again (at or after), which is a duplicate.
    up.add(tickets(6..=7));
    advance(&app, Duration::from_secs(60)).await;
    let events = wait_events(&app, "tickets", 7).await;
    assert_events_are(&events, "tickets", &tickets(1..=7));
    up.wait_for(5).await;
    let seen = up.requests();
    assert_eq!(seen.len(), 5, "two pages: {seen:#?}");
    assert_eq!(seen[3].param("since"), Some("2026-05-01T10:05:00Z"));
    assert_eq!(seen[3].param("page"), None);
    assert_eq!(seen[4].param("since"), Some("2026-05-01T10:05:00Z"));
    assert_eq!(seen[4].param("page"), Some("2"));

    // Nothing new: a poll that takes nothing.
    advance(&app, Duration::from_secs(60)).await;
    up.wait_for(6).await;
    assert_eq!(
        up.requests()[5].param("since"),
        Some("2026-05-01T10:07:00Z")
    );
    up.add(tickets(8..=8));
    advance(&app, Duration::from_secs(60)).await;
    let events = wait_events(&app, "tickets", 8).await;
    assert_events_are(&events, "tickets", &tickets(1..=8));

    assert_eq!(metric(&app, FAILING, "tickets").await, Some(0.0));
    assert_eq!(failures(&app, "tickets").await, 0.0);

    // A poll source is not a webhook.
    let refused = app.post_json("/in/tickets", r#"{"id":"T99"}"#, &[]).await;
    assert_eq!(refused.status(), 405);
    let answer: Value = refused.json().await.unwrap();
    assert_eq!(answer["error"], "not_a_webhook", "{answer}");
}

/// 2. The cursor (and the page's ETag and Last-Modified) are kept across a restart.
#[tokio::test]
async fn a_restart_remembers_the_cursor_and_the_conditional_headers() {
    let up = Upstream::start().await;
    up.conditional();
    up.add(tickets(1..=3));
    let yaml = config(
        PRIVATE,
        &[poll_source(
            "tickets",
            &up.url("/link?per_page=2"),
            "every: 1m",
            &[
                "cursor: { path: '.updated_at', param: since }",
                "pagination: { kind: link }",
            ],
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let clock = ferry::clock::ManualClock::new(ferry::clock::system_now_ms());
    let app = spawn_app_at(&yaml, dir.path(), clock.clone(), None).await;
    wait_count(&app, "tickets", 3).await;
    up.wait_for(2).await;
    let page1 = up.requests()[0].clone();
    assert_eq!(page1.param("since"), None);
    // Let the poll end (its cursor is saved once every page succeeded).
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop(app).await;
    let before = up.count();
    assert_eq!(before, 2, "{:#?}", up.requests());

    up.add(tickets(4..=4));
    let app = spawn_app_at(&yaml, dir.path(), clock.clone(), None).await;
    let events = wait_events(&app, "tickets", 4).await;
    assert_events_are(&events, "tickets", &tickets(1..=4));
    let first = up.requests()[before].clone();
    assert_eq!(
        first.param("since"),
        Some("2026-05-01T10:03:00Z"),
        "the first request after the restart: {first:?}"
    );
    assert_eq!(first.param("page"), None);
    assert_eq!(first.header("if-none-match"), Some("\"v1\""), "{first:?}");
    assert_eq!(
        first.header("if-modified-since"),
        Some("Fri, 01 May 2026 12:00:01 GMT"),
        "{first:?}"
    );
}

/// 3. Page 1's ETag and Last-Modified are sent back; a `304` is nothing new, not a failure.
#[tokio::test]
async fn an_unchanged_page_answered_304_makes_no_event() {
    let up = Upstream::start().await;
    up.conditional();
    up.add(tickets(1..=2));
    let app = spawn_app(&config(
        PRIVATE,
        &[poll_source(
            "tickets",
            &up.url("/page?per_page=10"),
            "every: 1m",
            &[],
        )],
    ))
    .await;
    wait_count(&app, "tickets", 2).await;
    up.wait_for(1).await;
    assert_eq!(up.requests()[0].header("if-none-match"), None);

    advance(&app, Duration::from_secs(60)).await;
    up.wait_for(2).await;
    let second = up.requests()[1].clone();
    assert_eq!(second.header("if-none-match"), Some("\"v1\""), "{second:?}");
    assert_eq!(
        second.header("if-modified-since"),
        Some("Fri, 01 May 2026 12:00:01 GMT"),
        "{second:?}"
    );
    assert_eq!(up.count(), 2, "a 304 on page 1 ends the poll");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(events_of(&app, "tickets").await.len(), 2);

    // A change upstream: a new ETag, the new ticket.
    up.add(tickets(3..=3));
    advance(&app, Duration::from_secs(60)).await;
    let events = wait_events(&app, "tickets", 3).await;
    assert_events_are(&events, "tickets", &tickets(1..=3));
    let third = up.requests()[2].clone();
    assert_eq!(third.header("if-none-match"), Some("\"v1\""), "{third:?}");

    advance(&app, Duration::from_secs(60)).await;
    up.wait_for(4).await;
    let fourth = up.requests()[3].clone();
    assert_eq!(fourth.header("if-none-match"), Some("\"v2\""), "{fourth:?}");
    assert_eq!(
        fourth.header("if-modified-since"),
        Some("Fri, 01 May 2026 12:00:02 GMT")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(events_of(&app, "tickets").await.len(), 3);
    assert_eq!(failures(&app, "tickets").await, 0.0, "a 304 is no failure");
    assert_eq!(metric(&app, FAILING, "tickets").await, Some(0.0));
}

/// 4. A `429` with `Retry-After: 120` holds the next poll for 120 s of the app's clock (longer
/// than the backoff of one failure, 2 × 10 s).
#[tokio::test]
async fn retry_after_holds_the_next_poll() {
    let up = Upstream::start().await;
    up.add(tickets(1..=2));
    up.script([Answer::status(429).header("retry-after", "120")]);
    let app = spawn_app(&config(
        PRIVATE,
        &[poll_source(
            "tickets",
            &up.url("/page?per_page=10"),
            "every: 10s",
            &[],
        )],
    ))
    .await;
    up.wait_for(1).await;
    wait_failing(&app, "tickets", 1.0).await;
    assert_eq!(failures(&app, "tickets").await, 1.0);
    assert!(events_of(&app, "tickets").await.is_empty());

    advance(&app, Duration::from_secs(60)).await;
    up.quiet(1, "60 s after a Retry-After of 120 s").await;
    advance(&app, Duration::from_secs(59)).await;
    up.quiet(1, "119 s after a Retry-After of 120 s").await;
    advance(&app, Duration::from_secs(2)).await;
    up.wait_for(2).await;
    let events = wait_events(&app, "tickets", 2).await;
    assert_events_are(&events, "tickets", &tickets(1..=2));
    wait_failing(&app, "tickets", 0.0).await;
    assert_eq!(failures(&app, "tickets").await, 1.0);

    // Back to the usual interval.
    advance(&app, Duration::from_secs(10)).await;
    up.wait_for(3).await;
}

/// 4b. A failure on page 2: page 1's events stay, the cursor is not moved (it is saved only
/// when every page worked), and the next poll takes the rest.
#[tokio::test]
async fn a_failure_on_a_later_page_keeps_the_events_before_it_and_not_the_cursor() {
    let up = Upstream::start().await;
    up.add(tickets(1..=4));
    let app = spawn_app(&config(
        PRIVATE,
        &[poll_source(
            "tickets",
            &up.url("/link?per_page=2"),
            "every: 10s",
            &[
                "cursor: { path: '.updated_at', param: since }",
                "pagination: { kind: link }",
            ],
        )],
    ))
    .await;
    let events = wait_events(&app, "tickets", 4).await;
    assert_events_are(&events, "tickets", &tickets(1..=4));
    wait_failing(&app, "tickets", 0.0).await;

    // T5..T8 come; page 2 of the next poll fails.
    up.add(tickets(5..=8));
    let before = up.count();
    up.script_page("2", [Answer::status(502)]);
    advance(&app, Duration::from_secs(10)).await;
    wait_failing(&app, "tickets", 1.0).await;
    let seen = up.requests();
    assert_eq!(seen[before].param("since"), Some("2026-05-01T10:04:00Z"));
    let events = events_of(&app, "tickets").await;
    // Page 1 (since T4) was T4 again and T5; page 2, T6 and T7, failed.
    assert_eq!(ids(&events), ids_of(&tickets(1..=5)), "page 1's T5 stays");

    // The next poll starts again from the old cursor, and takes the rest.
    let before = up.count();
    advance_until_request(&app, &up, Duration::from_secs(10)).await;
    let events = wait_events(&app, "tickets", 8).await;
    assert_events_are(&events, "tickets", &tickets(1..=8));
    assert_eq!(
        up.requests()[before].param("since"),
        Some("2026-05-01T10:04:00Z"),
        "the failed poll did not move the cursor"
    );
    wait_failing(&app, "tickets", 0.0).await;
}

/// 5. Three `500`s, then a recovery: the failing gauge counts 1, 2, 3, then 0, the failures
/// counter 3; the alert fires at 3 and resolves.
#[tokio::test]
async fn failed_polls_show_in_the_metrics_and_fire_an_alert_that_resolves() {
    let up = Upstream::start().await;
    up.add(tickets(1..=2));
    up.script([
        Answer::status(500),
        Answer::status(500),
        Answer::status(500),
    ]);
    let ops = Receiver::start().await;
    let app = spawn_app(&format!(
        "{}channels: [ {{ id: ops, kind: webhook, url: \"{}\" }} ]\nalerts:\n  - {{ id: tickets-down, when: {{ source_failing: {{ source: tickets, polls: 3 }} }}, notify: [ops] }}\n",
        config(
            "{ allow_private_destinations: true, alert_interval: 1s }",
            &[poll_source(
                "tickets",
                &up.url("/page?per_page=10"),
                "every: 10s",
                &[],
            )],
        ),
        ops.url
    ))
    .await;
    let fired = |state: &str| {
        notices(&ops)
            .iter()
            .filter(|n| n["alert"] == "tickets-down" && n["state"] == state)
            .count()
    };

    up.wait_for(1).await;
    wait_failing(&app, "tickets", 1.0).await;
    for n in 2..=3 {
        advance_until_request(&app, &up, Duration::from_secs(10)).await;
        wait_failing(&app, "tickets", n as f64).await;
        if n == 2 {
            app.state.alerts.evaluate_now().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(fired("firing"), 0, "2 failed polls are not 3");
        }
    }
    assert_eq!(failures(&app, "tickets").await, 3.0);
    wait_evaluated(&app, "the alert fires", || async { fired("firing") == 1 }).await;
    let notice = notices(&ops)
        .into_iter()
        .find(|n| n["state"] == "firing")
        .unwrap();
    assert_eq!(notice["type"], "alert.firing", "{notice}");
    assert!(notice.to_string().contains("tickets"), "{notice}");
    assert!(events_of(&app, "tickets").await.is_empty());

    // The upstream answers again.
    advance_until_request(&app, &up, Duration::from_secs(10)).await;
    let events = wait_events(&app, "tickets", 2).await;
    assert_events_are(&events, "tickets", &tickets(1..=2));
    wait_failing(&app, "tickets", 0.0).await;
    assert_eq!(failures(&app, "tickets").await, 3.0);
    wait_evaluated(&app, "the alert resolves", || async {
        fired("resolved") == 1
    })
    .await;
    assert_eq!(fired("firing"), 1);

    // The usual interval again.
    let before = up.count();
    advance(&app, Duration::from_secs(10)).await;
    up.wait_for(before + 1).await;
}

/// 5b. The backoff: after n failed polls in a row the next is `every` × 2^n later (`every`
/// doubled per consecutive failure), then the usual interval after a success.
#[tokio::test]
async fn failed_polls_back_off_doubling_every_per_failure() {
    let up = Upstream::start().await;
    up.add(tickets(1..=1));
    up.script([
        Answer::status(500),
        Answer::status(503),
        Answer::status(500),
    ]);
    let app = spawn_app(&config(
        PRIVATE,
        &[poll_source(
            "tickets",
            &up.url("/page?per_page=10"),
            "every: 10s",
            &[],
        )],
    ))
    .await;
    up.wait_for(1).await;
    for n in 1..=3u32 {
        wait_failing(&app, "tickets", n as f64).await;
        let backoff = 10 * 2u64.pow(n);
        advance(&app, Duration::from_secs(backoff - 1)).await;
        up.quiet(
            n as usize,
            &format!(
                "{}s after failure {n} (every 10s doubled {n} times: {backoff}s)",
                backoff - 1
            ),
        )
        .await;
        advance(&app, Duration::from_secs(1)).await;
        up.wait_for(n as usize + 1).await;
    }
    wait_count(&app, "tickets", 1).await;
    wait_failing(&app, "tickets", 0.0).await;
    advance(&app, Duration::from_secs(9)).await;
    up.quiet(4, "9 s after a poll that worked").await;
    advance(&app, Duration::from_secs(1)).await;
    up.wait_for(5).await;
}

/// 5c. The backoff is at most an hour: with `every: 40m`, the second failure in a row waits
/// 60 min, not 80 or 160.
#[tokio::test]
async fn the_backoff_is_at_most_an_hour() {
    let up = Upstream::start().await;
    up.add(tickets(1..=1));
    up.script([
        Answer::status(500),
        Answer::status(500),
        Answer::status(500),
        Answer::status(500),
    ]);
    let app = spawn_app(&config(
        PRIVATE,
        &[poll_source(
            "tickets",
            &up.url("/page?per_page=10"),
            "every: 40m",
            &[],
        )],
    ))
    .await;
    up.wait_for(1).await;
    wait_failing(&app, "tickets", 1.0).await;
    advance_until_request(&app, &up, Duration::from_secs(600)).await;
    for n in 2..=3 {
        wait_failing(&app, "tickets", n as f64).await;
        advance(&app, Duration::from_secs(3599)).await;
        up.quiet(n, &format!("59m59s after failure {n}")).await;
        advance(&app, Duration::from_secs(1)).await;
        up.wait_for(n + 1).await;
    }
}

/// 7b. `backfill: false` when the first poll fails: the first poll that works still takes only
/// the cursor.
#[tokio::test]
async fn without_backfill_a_failed_first_poll_does_not_make_the_next_one_backfill() {
    let up = Upstream::start().await;
    up.add(tickets(1..=3));
    up.script([Answer::status(503)]);
    let app = spawn_app(&config(
        PRIVATE,
        &[poll_source(
            "tickets",
            &up.url("/link?per_page=2"),
            "every: 10s",
            &[
                "cursor: { path: '.updated_at', param: since }",
                "pagination: { kind: link }",
                "backfill: false",
            ],
        )],
    ))
    .await;
    up.wait_for(1).await;
    wait_failing(&app, "tickets", 1.0).await;
    advance_until_request(&app, &up, Duration::from_secs(10)).await;
    wait_failing(&app, "tickets", 0.0).await;
    let events = events_of(&app, "tickets").await;
    assert!(
        events.is_empty(),
        "T1..T3 existed before the source: {:?}",
        ids(&events)
    );
    let asked = up.requests()[1].clone();
    assert_eq!(asked.param("since"), None, "no cursor yet: {asked:?}");
}

/// 6. Each kind of pagination on small data; `max_pages` caps a poll and the next poll goes on
/// from the cursor (compared as numbers: 9 < 10 < 11).
#[tokio::test]
async fn each_pagination_kind_and_max_pages() {
    let up = Upstream::start().await;
    up.add(tickets(1..=5));
    let app = spawn_app(&config(
        PRIVATE,
        &[
            poll_source(
                "by-next-url",
                &up.url("/next_url?per_page=2"),
                "every: 1m",
                &["pagination: { kind: next_url, path: '.links.next' }"],
            ),
            poll_source(
                "by-cursor",
                &up.url("/cursor?per_page=2"),
                "every: 1m",
                &["pagination: { kind: cursor, path: '.meta.next_cursor', param: cursor }"],
            ),
            poll_source(
                "by-page",
                &up.url("/page?per_page=2"),
                "every: 1m",
                &["pagination: { kind: page, param: page, start: 1 }"],
            ),
            poll_source(
                "capped",
                &up.url("/link?per_page=2"),
                "every: 1m",
                &[
                    "pagination: { kind: link }",
                    "cursor: { path: '.n', param: since }",
                    "max_pages: 2",
                ],
            ),
        ],
    ))
    .await;
    let all = tickets(1..=5);
    for source in ["by-next-url", "by-cursor", "by-page"] {
        let events = wait_events(&app, source, 5).await;
        assert_events_are(&events, source, &all);
    }
    let events = wait_events(&app, "capped", 4).await;
    assert_events_are(&events, "capped", &tickets(1..=4));

    // next_url: the relative URL from the body, on the first page's host.
    let pages: Vec<_> = up
        .requests_to("/next_url")
        .iter()
        .map(|s| s.param("page").map(str::to_string))
        .collect();
    assert_eq!(pages, [None, Some("2".into()), Some("3".into())]);
    // cursor: the value from the body as `cursor` on the first page's URL, until "".
    let cursors: Vec<_> = up
        .requests_to("/cursor")
        .iter()
        .map(|s| {
            assert_eq!(s.param("per_page"), Some("2"), "{s:?}");
            s.param("cursor").map(str::to_string)
        })
        .collect();
    assert_eq!(
        cursors,
        [None, Some("after:T2".into()), Some("after:T4".into())]
    );
    // page: 1, 2, 3, then 4, which is empty.
    up.wait_for_path("/page", 4).await;
    let pages: Vec<_> = up
        .requests_to("/page")
        .iter()
        .map(|s| s.param("page").unwrap_or("1").to_string())
        .collect();
    assert_eq!(pages, ["1", "2", "3", "4"]);
    // max_pages: 2 pages, no third.
    assert_eq!(up.count_to("/link"), 2, "{:#?}", up.requests_to("/link"));

    // The next poll: `capped` goes on from its cursor, 11 (T4); T4 again is a duplicate.
    advance(&app, Duration::from_secs(60)).await;
    let events = wait_events(&app, "capped", 5).await;
    assert_events_are(&events, "capped", &all);
    let link = up.requests_to("/link");
    assert_eq!(link[2].param("since"), Some("11"), "{:?}", link[2]);
    for (source, path, requests) in [
        ("by-next-url", "/next_url", 6),
        ("by-cursor", "/cursor", 6),
        ("by-page", "/page", 8),
    ] {
        up.wait_for_path(path, requests).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            events_of(&app, source).await.len(),
            5,
            "{source}: duplicates"
        );
    }
}

/// 7. `backfill: false`: the first poll takes only the cursor; what comes after is taken.
#[tokio::test]
async fn without_backfill_the_first_poll_takes_only_the_cursor() {
    let up = Upstream::start().await;
    up.add(tickets(1..=3));
    let app = spawn_app(&config(
        PRIVATE,
        &[poll_source(
            "tickets",
            &up.url("/link?per_page=2"),
            "every: 1m",
            &[
                "cursor: { path: '.updated_at', param: since }",
                "pagination: { kind: link }",
                "backfill: false",
            ],
        )],
    ))
    .await;
    up.wait_for(1).await;
    wait_failing(&app, "tickets", 0.0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(events_of(&app, "tickets").await.is_empty());

    up.add(tickets(4..=4));
    let before = up.count();
    advance(&app, Duration::from_secs(60)).await;
    up.wait_for(before + 1).await;
    assert_eq!(
        up.requests()[before].param("since"),
        Some("2026-05-01T10:03:00Z"),
        "the first poll kept the cursor: {:#?}",
        up.requests()
    );
    let events = wait_events(&app, "tickets", 1).await;
    assert_events_are(&events, "tickets", &tickets(4..=4));
    // Still only T4 a poll later (T3, at the cursor, was there before).
    up.add(tickets(5..=5));
    advance(&app, Duration::from_secs(60)).await;
    let events = wait_events(&app, "tickets", 2).await;
    assert_events_are(&events, "tickets", &tickets(4..=5));
}

/// Polls `check` every 10 ms for up to 10 s: whether it came to hold.
async fn comes_to_hold<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The hostile pages of test 8. `n` is the kept cursor: an item that carries it is neither
/// skipped (it is not below the cursor) nor moves the cursor.
fn hostile_page(case: &str, n: u32, elsewhere: &Upstream) -> Answer {
    let item = |id: &str| json!({"id": id, "kind": "hostile", "n": n});
    let link_to = |target: &str| {
        Answer::json(&json!({"data": [item("H-link")]}))
            .header("link", &format!("<{target}>; rel=\"next\""))
    };
    match case {
        "a body nested 100,000 deep" => {
            let mut b = br#"{"data":["#.to_vec();
            b.extend(std::iter::repeat_n(b'[', 100_000));
            b.extend(std::iter::repeat_n(b']', 100_000));
            b.extend(b"]}");
            Answer::raw(200, b)
        }
        "a 2 MB body" => {
            let mut big = item("H-big");
            big["pad"] = json!("a".repeat(2 * 1024 * 1024));
            Answer::json(&json!({ "data": [big] }))
        }
        "a body that is not UTF-8" => {
            let mut b = format!(r#"{{"data":[{{"id":"H-utf8","kind":"hostile","n":{n},"title":""#)
                .into_bytes();
            b.extend([0xff, 0xfe, 0xc3]);
            b.extend(br#""}]}"#);
            Answer::raw(200, b)
        }
        "a cursor of 1e999999" => Answer::raw(
            200,
            br#"{"data":[{"id":"H-inf","kind":"hostile","n":1e999999}]}"#.to_vec(),
        ),
        "an item id of 10 KB" => Answer::json(&json!({"data": [item(&"x".repeat(10 * 1024))]})),
        "items that are not objects" => {
            Answer::json(&json!({"data": [1, "two", null, [3], true, 4.5]}))
        }
        "a Link to a host the egress rules refuse" => {
            link_to(&elsewhere.url("/link?per_page=2&page=2"))
        }
        "a Link to a file" => link_to("file:///etc/passwd"),
        "a Link to the cloud's metadata address" => {
            link_to("http://169.254.169.254/latest/meta-data/")
        }
        other => panic!("no case {other}"),
    }
}

/// 8. Hostile pages, each followed by a normal poll that works: the app keeps answering, the
/// failure shows (a failed poll, or the item in the rejected log), and nothing a hostile page
/// held moves the cursor or makes a bad event.
#[tokio::test]
async fn hostile_upstreams_fail_visibly_and_the_next_poll_works() {
    let up = Upstream::start().await;
    // Elsewhere: a host the egress rules do not allow.
    let elsewhere = Upstream::start_at("127.0.0.2").await;
    up.add(tickets(1..=1));
    let app = spawn_app(&config(
        "{ egress: { allow: [\"127.0.0.1/32\"] } }",
        &[poll_source(
            "tickets",
            &up.url("/link?per_page=2"),
            "every: 10s",
            &[
                "cursor: { path: '.n', param: since }",
                "pagination: { kind: link }",
            ],
        )],
    ))
    .await;
    wait_count(&app, "tickets", 1).await;

    let cases = [
        "a body nested 100,000 deep",
        "a 2 MB body",
        "a body that is not UTF-8",
        "a cursor of 1e999999",
        "an item id of 10 KB",
        "items that are not objects",
        "a Link to a host the egress rules refuse",
        "a Link to a file",
        "a Link to the cloud's metadata address",
    ];
    let mut problems: Vec<String> = vec![];
    let mut normal = 1;
    for what in cases {
        let trouble_before = trouble(&app, "tickets").await;
        let events_before = ids(&events_of(&app, "tickets").await);
        up.script([hostile_page(what, 7 + normal, &elsewhere)]);
        advance_until_request(&app, &up, Duration::from_secs(10)).await;
        if !comes_to_hold(|| async { trouble(&app, "tickets").await > trouble_before }).await {
            let made: Vec<String> = ids(&events_of(&app, "tickets").await)
                .into_iter()
                .skip(events_before.len())
                .map(|k| k.chars().take(40).collect())
                .collect();
            problems.push(format!(
                "{what}: no failed poll and nothing in the rejected log (failing gauge {:?}; events made: {made:?})",
                metric(&app, FAILING, "tickets").await
            ));
        }
        still_answers(&app).await;

        // A normal poll: the next ticket is taken, asked for from the last normal cursor.
        normal += 1;
        up.add([ticket(normal)]);
        let before = up.count();
        advance_until_request(&app, &up, Duration::from_secs(10)).await;
        let asked = up.requests()[before].clone();
        let expected = (7 + normal - 1).to_string();
        if asked.param("since") != Some(expected.as_str()) {
            problems.push(format!(
                "{what}: the next poll asked since={:?}, not the last normal ticket's {expected}",
                asked.param("since")
            ));
        }
        let key = format!("T{normal}");
        let taken = comes_to_hold(|| async {
            events_of(&app, "tickets")
                .await
                .iter()
                .any(|e| e["idempotency_key"] == key.as_str())
        })
        .await;
        if !taken {
            problems.push(format!(
                "{what}: the next normal ticket {key} was not taken"
            ));
            // Let the cursor catch up, so that one case does not fail the next ones.
            advance_until_request(&app, &up, Duration::from_secs(10)).await;
        }
        if !comes_to_hold(|| async { metric(&app, FAILING, "tickets").await == Some(0.0) }).await {
            problems.push(format!(
                "{what}: the source is still failing after a normal poll"
            ));
        }
        still_answers(&app).await;
    }
    if elsewhere.count() != 0 {
        problems.push(format!(
            "a Link to a refused host was followed: {:?}",
            elsewhere.requests()
        ));
    }

    // Every normal ticket is an event, once; no event comes of a hostile page but its whole
    // objects with a usable id (`H-...`).
    let events = events_of(&app, "tickets").await;
    let keys = ids(&events);
    for n in 1..=normal {
        let key = format!("T{n}");
        let times = keys.iter().filter(|k| **k == key).count();
        if times != 1 {
            problems.push(format!("{key} is {times} events"));
        }
    }
    for e in &events {
        match e["idempotency_key"].as_str() {
            Some(key) if key.starts_with('T') || (key.starts_with("H-") && key.len() < 100) => {}
            _ => problems.push(format!(
                "an event from a hostile page: key {:.60}, payload {:.200}",
                e["idempotency_key"].to_string(),
                e["payload"].to_string()
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// 8b. An item whose `item_id` gives nothing (no `id`, `null`, `""`) has no idempotency key: it
/// is refused (in the rejected log), not made an event at every poll.
#[tokio::test]
async fn an_item_without_an_id_is_refused_not_taken_at_every_poll() {
    let up = Upstream::start().await;
    up.add(tickets(1..=1));
    up.add([
        json!({"kind": "ticket.created", "n": 20, "updated_at": "2026-05-01T11:00:00Z", "title": "no id"}),
        json!({"id": null, "kind": "ticket.created", "n": 21, "updated_at": "2026-05-01T11:01:00Z"}),
        json!({"id": "", "kind": "ticket.created", "n": 22, "updated_at": "2026-05-01T11:02:00Z"}),
    ]);
    let app = spawn_app(&config(
        PRIVATE,
        &[poll_source(
            "tickets",
            &up.url("/page?per_page=10"),
            "every: 1m",
            &[],
        )],
    ))
    .await;
    for poll in 1..=3 {
        up.wait_for(poll).await;
        wait_failing(&app, "tickets", 0.0).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let events = events_of(&app, "tickets").await;
        assert_eq!(
            ids(&events),
            ["T1"],
            "after poll {poll}: {:#?}",
            events.iter().map(|e| &e["payload"]).collect::<Vec<_>>()
        );
        advance(&app, Duration::from_secs(60)).await;
    }
    let refused = rejections_of(&app, "tickets").await;
    assert!(
        refused.len() >= 3,
        "the three items without an id are in the rejected log: {refused:#?}"
    );
}

/// A `cron` poll source polls at its ticks, not at start.
#[tokio::test]
async fn a_cron_poll_source_polls_at_its_ticks() {
    let up = Upstream::start().await;
    up.add(tickets(1..=1));
    let clock = ferry::clock::ManualClock::new(
        ferry::clock::parse_rfc3339("2026-05-01T10:02:30Z").unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_at(
        &config(
            PRIVATE,
            &[poll_source(
                "tickets",
                &up.url("/page?per_page=10"),
                "cron: \"*/5 * * * *\"",
                &[],
            )],
        ),
        dir.path(),
        clock.clone(),
        None,
    )
    .await;
    up.quiet(0, "before the first tick").await;
    advance(&app, Duration::from_millis(149_999)).await;
    up.quiet(0, "at 10:04:59.999").await;
    advance(&app, Duration::from_millis(1)).await;
    up.wait_for(1).await;
    wait_count(&app, "tickets", 1).await;
    advance(&app, Duration::from_secs(300)).await;
    up.wait_for(2).await;
}

/// What the config refuses in a poll source.
#[tokio::test]
async fn poll_sources_that_cannot_work_are_refused_when_the_config_loads() {
    let load = |source: &str| {
        ferry::config::load_str(
            &format!("settings: {PRIVATE}\nsources:{source}\n"),
            "test.yaml",
            std::path::Path::new("."),
            &|_| None,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let url = "http://127.0.0.1:9/tickets";
    let good = poll_source("p", url, "every: 1m", &[]);
    assert_eq!(load(&good), Ok(()), "a plain poll source loads");
    let good = poll_source(
        "p",
        url,
        "cron: \"*/5 * * * *\"",
        &[
            "timezone: Europe/Paris",
            "cursor: { path: '.updated_at', param: since }",
            "backfill: false",
            "max_pages: 3",
            "pagination: { kind: page, param: page, start: 0 }",
        ],
    );
    assert_eq!(load(&good), Ok(()), "every field");

    for (source, says) in [
        (
            poll_source("p", url, "every: 1m\n    cron: \"* * * * *\"", &[]),
            "every",
        ),
        (poll_source("p", url, "max_pages: 2", &[]), "every"),
        (
            poll_source("p", url, "every: 1m", &["backfill: false"]),
            "cursor",
        ),
        (
            poll_source("p", url, "every: 1m", &[]).replace("\n    item_id: '.id'", ""),
            "item_id",
        ),
        (
            poll_source("p", &format!("{url}?since={{{{ .x }}}}"), "every: 1m", &[]),
            "placeholders",
        ),
        (
            poll_source("p", url, "every: 1m", &["pagination: { kind: scroll }"]),
            "pagination",
        ),
        (
            poll_source("p", url, "every: 1m", &["pagination: { kind: next_url }"]),
            "path",
        ),
        (
            poll_source("p", url, "every: 1m", &["verify: { scheme: none }"]),
            "verify",
        ),
    ] {
        let refused = load(&source);
        assert!(refused.is_err(), "loaded: {source}");
        let error = refused.unwrap_err();
        assert!(error.contains(says), "{source}\n{error}");
    }

    // The jq expressions are compiled as the app starts: `items` that is not jq stops it.
    let source = poll_source("p", url, "every: 1m", &[]).replace("'.data[]'", "'.data['");
    let config = ferry::config::load_str(
        &format!("settings: {PRIVATE}\nsources:{source}\n"),
        "test.yaml",
        std::path::Path::new("."),
        &|_| None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (options, _schema) = serve_options(config, dir.path()).await;
    let refused = ferry::app::prepare(options)
        .await
        .err()
        .expect("`items: '.data['` is refused")
        .to_string();
    assert!(refused.contains("items"), "{refused}");
}
