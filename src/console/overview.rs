//! The overview (`/`): the last hour minute by minute as server-drawn SVG charts, the backlog
//! and its age, dead letters, refusals, destinations failing or paused, alerts firing; and the
//! live tail of events as they are accepted (`/events/tail`, Server-Sent Events).

use super::session::Sessions;
use super::{Viewer, page};
use crate::state::AppState;
use crate::telemetry::minutes::Minute;
use askama::Template;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::sync::Arc;

/// One bar of a chart, in the SVG's units (the chart is 600 by 80).
pub struct Bar {
    pub x: u32,
    pub y: u32,
    pub height: u32,
    /// What the bar's tooltip says.
    pub label: String,
}

/// A chart of one count over the last hour.
pub struct Chart {
    pub title: &'static str,
    pub total: u64,
    /// The highest minute (the chart's scale).
    pub peak: u64,
    pub class: &'static str,
    pub bars: Vec<Bar>,
}

const CHART_HEIGHT: u32 = 80;
const BAR_WIDTH: u32 = 10;

fn chart(
    title: &'static str,
    class: &'static str,
    hour: &[Minute],
    count: fn(&Minute) -> u64,
) -> Chart {
    let peak = hour.iter().map(count).max().unwrap_or(0);
    let bars = hour
        .iter()
        .enumerate()
        .filter(|(_, m)| count(m) > 0)
        .map(|(i, m)| {
            let n = count(m);
            // At least 2 units tall, so that a minute with one event shows.
            let height = ((n as f64 / peak.max(1) as f64) * f64::from(CHART_HEIGHT)).ceil() as u32;
            let height = height.clamp(2, CHART_HEIGHT);
            Bar {
                x: i as u32 * BAR_WIDTH,
                y: CHART_HEIGHT - height,
                height,
                label: format!("{}: {n}", crate::clock::rfc3339(m.minute * 60_000)),
            }
        })
        .collect();
    Chart {
        title,
        total: hour.iter().map(count).sum(),
        peak,
        class,
        bars,
    }
}

/// One destination's line on the overview.
pub struct DestinationLine {
    pub id: String,
    pub circuit: &'static str,
    pub circuit_class: &'static str,
    pub pending: i64,
    pub oldest_due: Option<String>,
    pub dead: i64,
    pub last_error: Option<String>,
}

/// A firing alert rule.
pub struct Firing {
    pub id: String,
    pub since: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    viewer: Option<Viewer>,
    page: &'static str,
    charts: Vec<Chart>,
    /// Delivered over attempted in the last hour, as a percentage with one decimal.
    success: Option<String>,
    pending: i64,
    /// How long the oldest due delivery has waited (`12s`), when one has.
    backlog_age: Option<String>,
    dead: i64,
    rejected: i64,
    /// Destinations whose circuit is not closed, or that are paused.
    troubled: usize,
    firing: Vec<Firing>,
    destinations: Vec<DestinationLine>,
}

/// `GET /`: the last hour, what waits, what failed, each destination's state.
pub async fn overview(viewer: Viewer, State(app): State<AppState>) -> Response {
    let now = app.clock.now_ms();
    let read = app.store.rejected_backlog_dead_and_alerts(now).await;
    let (rejected, backlog, dead, alerts) = match read {
        Ok(read) => read,
        Err(e) => return crate::api::error::ApiError::from(e).into_response(),
    };
    let hour = app
        .metrics
        .minutes
        .last_hour(crate::telemetry::minutes::now_ms());
    let charts = vec![
        chart("Events in", "events", &hour, |m| m.events),
        chart("Deliveries out", "delivered", &hour, |m| m.delivered),
        chart("Failed attempts", "failures", &hour, |m| m.failed),
    ];
    let (delivered, failed) = (charts[1].total, charts[2].total);
    let success = (delivered + failed > 0).then(|| {
        format!(
            "{:.1}%",
            delivered as f64 * 100.0 / (delivered + failed) as f64
        )
    });
    // Totals over every destination, those no longer configured included.
    let pending = backlog.iter().map(|b| b.pending).sum();
    let oldest_due = backlog.iter().filter_map(|b| b.oldest_due).min();
    let backlog_age = oldest_due.map(|due| {
        let waited = std::time::Duration::from_secs(((now - due).max(0) / 1000) as u64);
        humantime::format_duration(waited).to_string()
    });
    let dead_total = dead.iter().map(|(_, n)| n).sum();
    let destinations = destination_lines(&app, &backlog, &dead);
    let troubled = destinations
        .iter()
        .filter(|d| d.circuit != "closed")
        .count();
    let firing = alerts
        .into_iter()
        .filter(|a| a.firing)
        .map(|a| Firing {
            id: a.alert_id,
            since: crate::clock::rfc3339(a.since),
            message: a.message,
        })
        .collect();
    page(
        OverviewPage {
            viewer: Some(viewer),
            page: "overview",
            charts,
            success,
            pending,
            backlog_age,
            dead: dead_total,
            rejected,
            troubled,
            firing,
            destinations,
        }
        .render(),
    )
}

/// Each configured destination's circuit (or `paused`), backlog and dead letters.
pub fn destination_lines(
    app: &AppState,
    backlog: &[crate::store::Backlog],
    dead: &[(String, i64)],
) -> Vec<DestinationLine> {
    let health = app.deliverer.health();
    app.config
        .get()
        .destinations
        .keys()
        .map(|id| {
            let h = health.iter().find(|(d, _)| d == id).map(|(_, h)| h);
            let circuit = h
                .map(|h| {
                    if h.paused.is_some() {
                        "paused"
                    } else {
                        h.circuit.as_str()
                    }
                })
                .unwrap_or("closed");
            let waiting = backlog.iter().find(|b| b.destination_id == *id);
            DestinationLine {
                id: id.clone(),
                circuit,
                circuit_class: circuit_class(circuit),
                pending: waiting.map_or(0, |b| b.pending),
                oldest_due: waiting
                    .and_then(|b| b.oldest_due)
                    .map(crate::clock::rfc3339),
                dead: dead.iter().find(|(d, _)| d == id).map_or(0, |(_, n)| *n),
                last_error: h.and_then(|h| h.last_error.clone()),
            }
        })
        .collect()
}

/// The status colour of a circuit state.
pub fn circuit_class(circuit: &str) -> &'static str {
    match circuit {
        "closed" => "succeeded",
        "half_open" | "paused" => "pending",
        _ => "failed",
    }
}

/// `GET /events/tail`: each event accepted from now on, as a Server-Sent Event `accepted`
/// whose data is its id, source, type, time and deliveries (JSON). A watcher that fell behind
/// gets `skipped` with how many it missed. The stream ends when the server stops, when its
/// session ends (checked with each event and every [`TAIL_RECHECK`]), and when its token is
/// revoked (checked every [`TAIL_RECHECK`], and with an event at most once a second). A
/// session has at most `telemetry::tail::MAX_PER_KEY` tails open, the
/// server `MAX_WATCHERS`: past that, `429`.
pub async fn tail(
    viewer: Viewer,
    State(app): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
) -> Response {
    use tokio::sync::broadcast::error::RecvError;
    let Some(watcher) = app.tail.watch(&viewer.session_id) else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, "10")],
            "too many live tails are open: close one (another tab) and try again",
        )
            .into_response();
    };
    let mut recheck = tokio::time::interval(TAIL_RECHECK);
    recheck.reset();
    // When the token was last asked for its scope (a store read for a token made through the
    // API): at most once a second, not once per event per watcher.
    let token_checked = std::time::Instant::now();
    let state = (
        watcher,
        recheck,
        app,
        sessions,
        viewer.session_id,
        token_checked,
    );
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        let (watcher, recheck, app, sessions, session_id, token_checked) = &mut state;
        let sent = loop {
            let next = tokio::select! {
                next = watcher.events.recv() => Some(next),
                _ = watcher.closed.wait_for(|c| *c) => return None,
                _ = recheck.tick() => None,
            };
            let ask_token = next.is_none() || token_checked.elapsed() >= TOKEN_RECHECK;
            if !still_signed_in(app, sessions, session_id, ask_token).await {
                return None;
            }
            if ask_token {
                *token_checked = std::time::Instant::now();
            }
            match next {
                None => continue,
                Some(Ok(accepted)) => {
                    break Event::default()
                        .event("accepted")
                        .json_data(&accepted)
                        .unwrap_or_else(|_| Event::default().event("skipped").data("1"));
                }
                Some(Err(RecvError::Lagged(n))) => {
                    break Event::default().event("skipped").data(n.to_string());
                }
                Some(Err(RecvError::Closed)) => return None,
            }
        };
        Some((Ok::<_, Infallible>(sent), state))
    });
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Sse::new(stream).keep_alive(KeepAlive::default()),
    )
        .into_response()
}

/// How often an idle live tail checks that its session and token still hold.
pub const TAIL_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// How often, at most, a live tail asks the store whether its token still holds.
const TOKEN_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the session is still open (an in-memory lookup) and, when `ask_token`, its token
/// still valid.
async fn still_signed_in(
    app: &AppState,
    sessions: &Sessions,
    session_id: &str,
    ask_token: bool,
) -> bool {
    let Some(session) = sessions.get(session_id, app.clock.now_ms()) else {
        return false;
    };
    !ask_token
        || matches!(
            crate::api::scope_of(app, &session.token_digest).await,
            Ok(Some(_))
        )
}
