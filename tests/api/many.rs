//! A config of ten thousand flows, a thousand sources and a thousand destinations: it loads,
//! serves and routes each event to its own flow alone, and changes through the API apply to one
//! flow without touching the others.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::fmt::Write;
use std::time::Duration;

const FLOWS: usize = 10_000;
const SOURCES: usize = 1_000;
const DESTINATIONS: usize = 1_000;
const TYPES: usize = FLOWS / SOURCES;

/// Flow `i` takes events of type `t{i / SOURCES}` from source `s{i % SOURCES}`, keeps those
/// whose `n` is not `i` (an expression of its own), and delivers to [`destination_of`]`(i)`.
fn many_flows(receiver: &Receiver) -> String {
    let mut yaml = String::from("settings: { allow_private_destinations: true }\nsources:\n");
    for s in 0..SOURCES {
        writeln!(
            yaml,
            "  - {{ id: s{s}, kind: webhook, verify: {{ scheme: none }} }}"
        )
        .unwrap();
    }
    yaml.push_str("event_types:\n");
    for t in 0..TYPES {
        writeln!(yaml, "  - {{ name: t{t} }}").unwrap();
    }
    yaml.push_str("destinations:\n");
    for d in 0..DESTINATIONS {
        writeln!(
            yaml,
            "  - {{ id: d{d}, kind: http, url: \"{}\", headers: {{ x-destination: d{d} }} }}",
            receiver.url
        )
        .unwrap();
    }
    yaml.push_str("flows:\n");
    for i in 0..FLOWS {
        writeln!(
            yaml,
            "  - {{ id: f{i}, on: {{ source: s{}, event_types: [t{}] }}, steps: [{{ filter: \".n != {i}\" }}, {{ deliver: d{} }}] }}",
            i % SOURCES,
            i / SOURCES,
            destination_of(i)
        )
        .unwrap();
    }
    yaml
}

fn destination_of(flow: usize) -> usize {
    (flow * 7 + 3) % DESTINATIONS
}

/// The destinations that received requests, by their `x-destination` header, in order.
fn reached(receiver: &Receiver) -> Vec<String> {
    receiver
        .requests()
        .iter()
        .map(|r| {
            r.headers
                .get("x-destination")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string()
        })
        .collect()
}

/// Sends an event of type `t{t}` to source `s{s}` and waits until the receiver has `expect`
/// more requests, and a little longer for any it should not get; returns the new ones.
async fn send(
    app: &TestApp,
    receiver: &Receiver,
    s: usize,
    t: usize,
    expect: usize,
) -> Vec<String> {
    let before = receiver.count();
    let body = json!({"type": format!("t{t}"), "n": -1}).to_string();
    app.accept(&format!("/in/s{s}"), &body, &[]).await;
    receiver.wait_for(before + expect).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = reached(receiver).split_off(before);
    got.sort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_flows_route_by_lookup_and_change_one_at_a_time() {
    let receiver = Receiver::start().await;
    let yaml = many_flows(&receiver);
    let dir = tempfile::tempdir().unwrap();
    let clock = ferry::clock::ManualClock::new(ferry::clock::system_now_ms());
    let app = spawn_app_at(&yaml, dir.path(), clock.clone(), None).await;
    let config = app.state.config.get();
    assert_eq!(
        (
            config.flows.len(),
            config.sources.len(),
            config.destinations.len()
        ),
        (FLOWS, SOURCES, DESTINATIONS)
    );
    let (status, page) = app.api_get("/api/v1/flows?limit=3&after=f9997").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["f9998", "f9999"]);

    // Each event reaches its one flow's destination: flow 3005 for source 5, type 3.
    assert_eq!(
        send(&app, &receiver, 5, 3, 1).await,
        [format!("d{}", destination_of(3005))]
    );
    assert_eq!(
        send(&app, &receiver, 999, 9, 1).await,
        [format!("d{}", destination_of(9999))]
    );

    // A flow made through the API joins the same (source, type) and takes effect at once.
    let (status, made) = app
        .api_post_json(
            "/api/v1/flows",
            json!({"id": "extra", "on": {"source": "s1", "event_types": ["t1"]},
                   "steps": [{"filter": ".n < 0"}, {"deliver": "d999"}]}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let mut both = vec![format!("d{}", destination_of(1001)), "d999".to_string()];
    both.sort();
    assert_eq!(send(&app, &receiver, 1, 1, 2).await, both);
    // Replaced: the next event goes to its new destination.
    let (status, replaced) = app
        .api_send(
            Method::PUT,
            "/api/v1/flows/extra",
            Some(json!({"on": {"source": "s1", "event_types": ["t1"]}, "steps": [{"deliver": "d998"}]})),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    let mut both = vec![format!("d{}", destination_of(1001)), "d998".to_string()];
    both.sort();
    assert_eq!(send(&app, &receiver, 1, 1, 2).await, both);
    // Deleted: the flow it shared its events with is untouched, and so are the others.
    let (status, _) = app
        .api_send(Method::DELETE, "/api/v1/flows/extra", None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        send(&app, &receiver, 1, 1, 1).await,
        [format!("d{}", destination_of(1001))]
    );
    assert_eq!(
        send(&app, &receiver, 2, 2, 1).await,
        [format!("d{}", destination_of(2002))]
    );
    let config = app.state.config.get();
    assert_eq!(config.flows.len(), FLOWS);
    assert!(config.flow("extra").is_none());
    assert_eq!(
        config.flow("f4321").map(|f| f.source.as_str()),
        Some("s321")
    );

    // Deleting a destination that flows still use is refused, naming each of them.
    let (status, _) = app
        .api_post_json(
            "/api/v1/destinations",
            json!({"id": "spare", "kind": "http", "url": receiver.url.clone()}),
        )
        .await;
    assert_eq!(status, 201);
    for id in ["uses-spare", "also-spare"] {
        let (status, made) = app
            .api_post_json(
                "/api/v1/flows",
                json!({"id": id, "on": {"source": "s3"}, "steps": [{"deliver": ["d1", "spare"]}]}),
            )
            .await;
        assert_eq!(status, 201, "{made}");
    }
    let (status, refused) = app
        .api_send(Method::DELETE, "/api/v1/destinations/spare", None)
        .await;
    assert_eq!(status, 422, "{refused}");
    let places: Vec<&str> = refused["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["place"].as_str().unwrap())
        .collect();
    assert_eq!(
        places,
        [
            "api (flow also-spare), step 1",
            "api (flow uses-spare), step 1"
        ],
        "{refused}"
    );
    assert!(
        refused["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no destination has the id `spare`"),
        "{refused}"
    );
    // A file's destination that file flows use is the file's to change.
    let (status, refused) = app
        .api_send(Method::DELETE, "/api/v1/destinations/d3", None)
        .await;
    assert_eq!(
        (status.as_u16(), &refused["error"]),
        (409, &Value::from("provisioned"))
    );
    assert!(app.state.config.get().destinations.contains_key("spare"));

    // What the API made, a start takes back: the same flows in the same order.
    let order = |config: &ferry::config::Config| -> Vec<String> {
        config.flows.iter().map(|f| f.id.clone()).collect()
    };
    let before = order(&app.state.config.get());
    drop(app);
    let app = spawn_app_at(&yaml, dir.path(), clock, None).await;
    assert_eq!(order(&app.state.config.get()), before);
    assert_eq!(&before[FLOWS..], ["also-spare", "uses-spare"]);
}

/// An id the file writes as a number (`id: 7`) is still the file's: the API cannot take it,
/// and so never makes a config that the next start would refuse.
#[tokio::test]
async fn ids_the_file_writes_as_numbers_stay_the_files() {
    let receiver = Receiver::start().await;
    let yaml = format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: 123, kind: webhook, verify: {{ scheme: none }} }} ]
event_types: [ {{ name: 1.5 }} ]
destinations: [ {{ id: 7, kind: http, url: "{}" }} ]
flows: [ {{ id: 42, on: {{ source: 123 }}, steps: [ {{ deliver: "7" }} ] }} ]
"#,
        receiver.url
    );
    let dir = tempfile::tempdir().unwrap();
    let clock = ferry::clock::ManualClock::new(ferry::clock::system_now_ms());
    let app = spawn_app_at(&yaml, dir.path(), clock.clone(), None).await;
    for (kind, spec) in [
        (
            "sources",
            json!({"id": "123", "kind": "webhook", "verify": {"scheme": "none"}}),
        ),
        ("event-types", json!({"name": "1.5"})),
        (
            "destinations",
            json!({"id": "7", "kind": "http", "url": receiver.url.clone()}),
        ),
        (
            "flows",
            json!({"id": "42", "on": {"source": "123"}, "steps": [{"deliver": "7"}]}),
        ),
    ] {
        let (status, refused) = app.api_post_json(&format!("/api/v1/{kind}"), spec).await;
        assert_eq!(status, 422, "{kind}: {refused}");
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("defines this"),
            "{refused}"
        );
    }
    // Deleting what a file flow names is refused by the file's place.
    let (status, _) = app
        .api_post_json(
            "/api/v1/flows",
            json!({"id": "api-flow", "on": {"source": "123"}, "steps": [{"deliver": "7"}]}),
        )
        .await;
    assert_eq!(status, 201);
    app.accept("/in/123", r#"{"type": "x"}"#, &[]).await;
    receiver.wait_for(2).await;
    drop(app);
    let app = spawn_app_at(&yaml, dir.path(), clock, None).await;
    assert!(app.state.config.get().flow("api-flow").is_some());
}
