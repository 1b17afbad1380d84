//! The `console` phase: the web console's pages (issue 22) on a store of `--console-events`
//! events, a million by default. Ferry takes them through its HTTP ingest, as fast as it
//! answers, from four sources: one event in twenty goes to no flow, one in twenty to a flow
//! whose third destination answers 503 (that delivery is dead after 2 attempts, its run
//! failed), the others to a fan-out flow to three receivers that answer 200. Once every run
//! has ended, one session signed in with the API token asks for each page
//! [`PAGE_REQUESTS`] times, one request after another on one keep-alive connection, and
//! each page's p50, p99 and max are reported. The times are taken at the client, over
//! loopback, with nothing else running: they stand for the server's.

use super::BenchError;
use super::receivers::{start_failing_receiver, start_receivers};
use super::report::{Report, row};
use super::storage::Storage;
use super::target::{API_TOKEN, Target, start_ferry_logging};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Requests per page; the p99 of 200 is the third slowest.
const PAGE_REQUESTS: usize = 200;

/// Events on one page of the console's list (the console's own constant).
const EVENTS_PER_PAGE: usize = 50;

/// The sources events come from, twenty events in a row from each in turn.
const SOURCES: [&str; 4] = ["shop", "billing", "auth", "crm"];

/// The types of the events the fan-out flows take, one after another.
const FANNED_OUT_TYPES: [&str; 3] = ["order.created", "order.paid", "user.signed_up"];

/// The type of the events whose flow delivers to the failing receiver too.
const FAILING_TYPE: &str = "invoice.failed";

/// The type of the events no flow takes.
const UNROUTED_TYPE: &str = "ping";

/// The row label of every figure of this phase.
const SHAPE: &str = "console pages";

/// The phase: fills a store, waits for its runs to end, then times the pages.
pub(super) async fn run(
    dir: &Path,
    events: u64,
    connections: usize,
    body_size: usize,
    report: &mut Report,
) -> Result<(), BenchError> {
    let (fine, _) = start_receivers(3, Instant::now()).await?;
    let failing = start_failing_receiver().await?;
    // Errors only: every attempt to the failing receiver is a warning.
    let ferry = start_ferry_logging(dir, &config(&fine, failing), "error").await?;
    eprintln!(
        "phase: ferry, console pages: filling the store with {events} events through the HTTP ingest"
    );
    let filled = fill(ferry.addr, events, connections, body_size).await;
    eprintln!(
        "  {} events acknowledged in {:.0} s ({:.0} events/s), {} failed; waiting for their runs to end",
        filled.acked,
        filled.seconds,
        filled.acked as f64 / filled.seconds,
        filled.failed
    );
    let storage = Storage::measure(&ferry, filled.acked, filled.routed).await;
    let timed = time_pages(&ferry, &filled).await;
    ferry.stop().await;
    let pages = timed?;
    report.push(row(
        SHAPE,
        "events in the store",
        filled.acked as f64,
        "",
        None,
    ));
    report.push(row(
        SHAPE,
        "time to fill through the HTTP ingest, s",
        filled.seconds,
        "",
        None,
    ));
    report.push(row(
        SHAPE,
        "fill, events/s",
        filled.acked as f64 / filled.seconds,
        "",
        None,
    ));
    report.push(row(
        SHAPE,
        "store on disk (ferry.db + WAL)",
        storage.on_disk_bytes() as f64 / 1e6,
        "MB",
        None,
    ));
    report.extend(storage.rows(SHAPE));
    for page in pages {
        for (name, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            let us = crate::telemetry::nearest_rank(&page.sorted_us, p).unwrap_or(0);
            report.push(row(
                SHAPE,
                format!("{} {name}", page.label),
                us as f64 / 1000.0,
                "ms",
                None,
            ));
        }
    }
    report.failed("console fill", filled.failed);
    Ok(())
}

/// What an event of the fill is, by its number.
struct Shape {
    source: &'static str,
    event_type: &'static str,
    /// Whether a flow takes it (it then has one run).
    routed: bool,
}

impl Shape {
    fn of(n: u64) -> Shape {
        let source = SOURCES[(n / 20 % SOURCES.len() as u64) as usize];
        let (event_type, routed) = match n % 20 {
            0 => (FAILING_TYPE, true),
            1 => (UNROUTED_TYPE, false),
            _ => (FANNED_OUT_TYPES[(n % 3) as usize], true),
        };
        Shape {
            source,
            event_type,
            routed,
        }
    }
}

/// Ferry's config: the four sources, the five event types, three destinations that answer 200 and one that answers
/// 503 (two attempts, 10 ms apart, and a breaker that never opens, so each of its
/// deliveries is dead at once), a fan-out flow and a failing flow per source.
fn config(fine: &[SocketAddr], failing: SocketAddr) -> String {
    let mut yaml = String::from("settings: { allow_private_destinations: true }\nsources:\n");
    for source in SOURCES {
        yaml.push_str(&format!(
            "  - {{ id: {source}, kind: webhook, verify: {{ scheme: none }} }}\n"
        ));
    }
    yaml.push_str("event_types:\n");
    for name in FANNED_OUT_TYPES
        .iter()
        .chain([&FAILING_TYPE, &UNROUTED_TYPE])
    {
        yaml.push_str(&format!("  - {{ name: {name} }}\n"));
    }
    yaml.push_str("destinations:\n");
    for (i, r) in fine.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{ id: d{i}, kind: http, url: \"http://{r}/\", concurrency: 64 }}\n"
        ));
    }
    yaml.push_str(&format!(
        "  - {{ id: flaky, kind: http, url: \"http://{failing}/\", concurrency: 64, retry: {{ max_attempts: 2, initial: 10ms, max: 10ms, jitter: none }}, circuit_breaker: {{ failures: 1000000000, pause_after: never }} }}\n"
    ));
    let fine_ids: Vec<String> = (0..fine.len()).map(|i| format!("d{i}")).collect();
    let mut failing_ids = fine_ids.clone();
    failing_ids.truncate(2);
    failing_ids.push("flaky".into());
    yaml.push_str("flows:\n");
    for source in SOURCES {
        yaml.push_str(&format!(
            "  - {{ id: fan-out-{source}, on: {{ source: {source}, event_types: [{}] }}, steps: [ {{ deliver: [{}] }} ] }}\n",
            FANNED_OUT_TYPES.join(", "),
            fine_ids.join(", ")
        ));
        yaml.push_str(&format!(
            "  - {{ id: failing-{source}, on: {{ source: {source}, event_types: [{FAILING_TYPE}] }}, steps: [ {{ deliver: [{}] }} ] }}\n",
            failing_ids.join(", ")
        ));
    }
    yaml
}

/// What the fill did.
struct Filled {
    acked: u64,
    failed: u64,
    /// Acknowledged events that a flow took: the runs to wait for.
    routed: u64,
    seconds: f64,
    /// The id of the event numbered half the count: the cursor of the deep pages.
    halfway: Option<String>,
    /// The id of the first event of the failing type from halfway on: the event page's.
    failing: Option<String>,
}

/// Posts `count` events to Ferry on `connections` keep-alive connections, each as soon as the
/// previous one on its connection was answered.
async fn fill(addr: SocketAddr, count: u64, connections: usize, size: usize) -> Filled {
    let halfway = count / 2;
    let failing = halfway.div_ceil(20) * 20;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let (next, done) = (next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut part = Filled {
                acked: 0,
                failed: 0,
                routed: 0,
                seconds: 0.0,
                halfway: None,
                failing: None,
            };
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                return part;
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut sender, conn)) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
            else {
                return part;
            };
            tokio::spawn(conn);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                let shape = Shape::of(n);
                let request = hyper::Request::post(format!("/in/{}", shape.source))
                    .header("host", "bench")
                    .header("content-type", "application/json")
                    .body(Full::new(body(n, shape.event_type, size)));
                let Ok(request) = request else { break };
                if sender.ready().await.is_err() {
                    part.failed += 1;
                    break;
                }
                let answer = match sender.send_request(request).await {
                    Ok(response) if response.status().is_success() => {
                        response.into_body().collect().await.ok()
                    }
                    _ => None,
                };
                let Some(answer) = answer else {
                    part.failed += 1;
                    continue;
                };
                part.acked += 1;
                part.routed += u64::from(shape.routed);
                if n == halfway || n == failing {
                    let id = event_id(&answer.to_bytes());
                    if n == halfway {
                        part.halfway = id.clone();
                    }
                    if n == failing {
                        part.failing = id;
                    }
                }
                let acked = done.fetch_add(1, Ordering::Relaxed) + 1;
                if acked % 100_000 == 0 {
                    let s = started.elapsed().as_secs_f64();
                    eprintln!(
                        "  {acked} events in {s:.0} s ({:.0} events/s)",
                        acked as f64 / s
                    );
                }
            }
            part
        }));
    }
    let mut filled = Filled {
        acked: 0,
        failed: 0,
        routed: 0,
        seconds: 0.0,
        halfway: None,
        failing: None,
    };
    for task in tasks {
        if let Ok(part) = task.await {
            filled.acked += part.acked;
            filled.failed += part.failed;
            filled.routed += part.routed;
            filled.halfway = filled.halfway.or(part.halfway);
            filled.failing = filled.failing.or(part.failing);
        }
    }
    filled.seconds = started.elapsed().as_secs_f64();
    // The events a connection that broke did not send.
    filled.failed += count.saturating_sub(next.load(Ordering::Relaxed).min(count));
    filled
}

/// An event body of about `size` bytes: its type, its number, and padding.
fn body(n: u64, event_type: &str, size: usize) -> Bytes {
    let head = format!(r#"{{"type":"{event_type}","n":{n},"pad":""#);
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(size.max(head.len() + 2));
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    Bytes::from(s)
}

/// The `event_id` of an ingest answer.
fn event_id(answer: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(answer).ok()?;
    Some(value.get("event_id")?.as_str()?.to_string())
}

/// One page's times.
struct PageTimes {
    label: String,
    sorted_us: Vec<u32>,
}

/// A page to time, and what a good answer of it holds.
struct Page {
    label: String,
    path: String,
    check: Check,
}

enum Check {
    /// This text, at least once.
    Holds(&'static str),
    /// This text, exactly so many times.
    Count(&'static str, usize),
}

impl Check {
    fn passes(&self, html: &str) -> bool {
        match self {
            Check::Holds(text) => html.contains(text),
            Check::Count(text, n) => html.matches(text).count() == *n,
        }
    }
}

/// Signs in, then times each page [`PAGE_REQUESTS`] times in turn.
async fn time_pages(ferry: &Target, filled: &Filled) -> Result<Vec<PageTimes>, BenchError> {
    let missing = |what: &str| {
        BenchError::Io(std::io::Error::other(format!(
            "the fill did not answer the id of {what}"
        )))
    };
    let halfway = filled
        .halfway
        .as_deref()
        .ok_or_else(|| missing("the event halfway"))?;
    let failing = filled
        .failing
        .as_deref()
        .ok_or_else(|| missing("a failing event"))?;
    let deep = filled.acked / 2;
    let full_list = || Check::Count("href=\"/events/evt_", EVENTS_PER_PAGE);
    let pages = [
        Page {
            label: "overview (/)".into(),
            path: "/".into(),
            check: Check::Holds("events in the last hour"),
        },
        Page {
            label: "events, first page".into(),
            path: "/events".into(),
            check: full_list(),
        },
        Page {
            label: format!("events, source=billing, {deep} events deep"),
            path: format!("/events?source=billing&after={halfway}"),
            check: full_list(),
        },
        Page {
            label: format!("events, status=failed, {deep} events deep"),
            path: format!("/events?status=failed&after={halfway}"),
            check: full_list(),
        },
        Page {
            label: "event with 3 deliveries, 4 attempts".into(),
            path: format!("/events/{failing}"),
            check: Check::Count("<div class=\"delivery\" id=\"dlv_", 3),
        },
    ];
    let client = reqwest_client()?;
    let base = format!("http://{}", ferry.addr);
    let cookie = sign_in(&client, &base).await?;
    let mut timed = Vec::new();
    for page in pages {
        let url = format!("{base}{}", page.path);
        let mut times = Vec::with_capacity(PAGE_REQUESTS);
        let mut size = 0;
        for _ in 0..PAGE_REQUESTS {
            let started = Instant::now();
            let answer = client
                .get(&url)
                .header(reqwest::header::COOKIE, &cookie)
                .send()
                .await
                .map_err(io_error)?;
            let status = answer.status();
            let html = answer.text().await.map_err(io_error)?;
            times.push(started.elapsed().as_micros() as u32);
            if status != reqwest::StatusCode::OK || !page.check.passes(&html) {
                return Err(BenchError::Io(std::io::Error::other(format!(
                    "{} answered {status} without what it should show: {}",
                    page.path,
                    html.chars().take(300).collect::<String>()
                ))));
            }
            size = html.len();
        }
        times.sort_unstable();
        eprintln!(
            "  {}: {size} bytes, p50 {:.2} ms, max {:.2} ms",
            page.label,
            times[times.len() / 2] as f64 / 1000.0,
            times.last().copied().unwrap_or(0) as f64 / 1000.0
        );
        timed.push(PageTimes {
            label: page.label,
            sorted_us: times,
        });
    }
    Ok(timed)
}

/// A client that keeps its connection and does not follow redirects (the sign-in's cookie is
/// on its redirect).
fn reqwest_client() -> Result<reqwest::Client, BenchError> {
    // reqwest is built without a default TLS provider: the process installs one (once).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(io_error)
}

/// `POST /sign-in` with the API token, from this server's own origin; the session cookie
/// (`name=value`) to send with the pages.
async fn sign_in(client: &reqwest::Client, base: &str) -> Result<String, BenchError> {
    let answer = client
        .post(format!("{base}/sign-in"))
        .header(reqwest::header::ORIGIN, base)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(format!("token={API_TOKEN}"))
        .send()
        .await
        .map_err(io_error)?;
    let status = answer.status();
    answer
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("ferry_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
        .ok_or_else(|| {
            BenchError::Io(std::io::Error::other(format!(
                "signing in to the console answered {status} without a session cookie"
            )))
        })
}

fn io_error(e: impl std::error::Error + Send + Sync + 'static) -> BenchError {
    BenchError::Io(std::io::Error::other(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_in_twenty_fails_one_in_twenty_is_unrouted_and_sources_take_turns() {
        let shapes: Vec<Shape> = (0..80).map(Shape::of).collect();
        let failing = shapes.iter().filter(|s| s.event_type == FAILING_TYPE);
        assert_eq!(failing.count(), 4);
        assert_eq!(shapes.iter().filter(|s| !s.routed).count(), 4);
        for (i, source) in SOURCES.iter().enumerate() {
            let theirs: Vec<&Shape> = shapes.iter().filter(|s| s.source == *source).collect();
            assert_eq!(theirs.len(), 20);
            assert_eq!(shapes[i * 20].event_type, FAILING_TYPE);
        }
    }

    #[test]
    fn the_config_is_valid() {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let yaml = config(&[addr(1), addr(2), addr(3)], addr(4));
        let loaded = crate::config::load_str(&yaml, "console.yaml", Path::new("."), &|_| None);
        if let Err(e) = loaded {
            panic!("{e}\n{yaml}");
        }
    }

    #[test]
    fn bodies_have_the_asked_size_and_name_their_type() {
        let b = body(7, FAILING_TYPE, 1024);
        assert_eq!(b.len(), 1024);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        assert_eq!(v["type"], FAILING_TYPE);
        assert_eq!(v["n"], 7);
    }

    #[test]
    fn the_event_id_is_read_from_an_ingest_answer() {
        assert_eq!(
            event_id(br#"{"event_id":"evt_01J"}"#).as_deref(),
            Some("evt_01J")
        );
        assert_eq!(event_id(b"not json"), None);
    }
}
