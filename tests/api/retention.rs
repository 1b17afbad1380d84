//! Retention on an injected clock: finished work goes with its runs, deliveries and attempts;
//! pending work stays whole; dead letters stay until their own limit; bodies expire first and
//! the API says so; the rejected log is pruned; the database file levels off under a steady
//! load; each body is stored once (a transformed payload fanned out to three is one body); a
//! data directory of the schema before retention is migrated (through every version since)
//! without losing anything.

use crate::helpers::*;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);

fn config(ok: &Receiver, broken: &Receiver) -> String {
    format!(
        r#"
settings: {{ allow_private_destinations: true, retention: 1d, payload_retention: 1h, dead_letter_retention: 3d }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }}, event_type: {{ from: body, path: ".type" }} }} ]
event_types: [ {{ name: good }}, {{ name: bad }}, {{ name: slow }} ]
destinations:
  - {{ id: ok, kind: http, url: "{ok}" }}
  - {{ id: broken, kind: http, url: "{broken}" }}
flows:
  - id: good
    on: {{ source: s, event_types: [good] }}
    steps:
      - transform: '{{msg: .msg, shouted: (.msg | ascii_upcase)}}'
      - {{ name: ping, http: {{ method: POST, url: "{ok}" }} }}
      - deliver: ok
  - {{ id: bad, on: {{ source: s, event_types: [bad] }}, steps: [ {{ deliver: broken }} ] }}
  - {{ id: slow, on: {{ source: s, event_types: [slow] }}, steps: [ {{ delay: 30d }}, {{ deliver: ok }} ] }}
"#,
        ok = ok.url,
        broken = broken.url
    )
}

/// Runs a pass now and answers what every pass did so far (from the metrics: a pass the
/// clock's advance woke may have done the work before this one).
async fn prune(app: &TestApp) -> ferry::telemetry::events::Pruned {
    app.state.pruner.prune_now().await.unwrap();
    let m = &app.state.metrics;
    let pruned = |what: &str| {
        m.pruned
            .get_or_create(&vec![("what", what.to_string())])
            .get()
    };
    ferry::telemetry::events::Pruned {
        events: pruned("events"),
        runs: pruned("runs"),
        deliveries: pruned("deliveries"),
        attempts: pruned("attempts"),
        payloads: pruned("payloads"),
        rejections: pruned("rejections"),
        vacuumed_pages: m.vacuumed_pages.get(),
    }
}

#[tokio::test]
async fn finished_work_goes_after_its_retention_pending_work_stays_and_dead_letters_keep_their_own_limit()
 {
    let ok = Receiver::start().await;
    let broken = Receiver::start_with(Reply::status(400)).await;
    let app = spawn_app(&config(&ok, &broken)).await;

    let good = app
        .accept("/in/s", r#"{"type":"good","msg":"secret"}"#, &[])
        .await;
    let bad = app
        .accept("/in/s", r#"{"type":"bad","msg":"secret"}"#, &[])
        .await;
    let slow = app
        .accept("/in/s", r#"{"type":"slow","msg":"secret"}"#, &[])
        .await;
    let good_run = app.run_of(&good, "good").await;
    let bad_run = app.run_of(&bad, "bad").await;
    let slow_run = app.run_of(&slow, "slow").await;
    app.wait_run(&good_run, "completed").await;
    app.wait_run(&bad_run, "failed").await;
    app.wait_run(&slow_run, "running").await;
    let good_delivery = app.only_delivery(&good).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bad_delivery = app.only_delivery(&bad).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(app.post_json("/in/s", "{not json", &[]).await.status(), 400);
    wait_until("the rejection is logged", || async {
        app.count_rows("rejections").await == 1
    })
    .await;
    // The good run's http step and delivery, the bad delivery.
    assert_eq!(app.count_rows("attempts").await, 3);
    // The good run's transform made one body: its payload, its step's output and what its
    // delivery sent; the API shows it as the step's output.
    assert_eq!(app.count_rows("bodies").await, 1);
    let (_, run) = app.api_get(&format!("/api/v1/runs/{good_run}")).await;
    let transformed = serde_json::json!({"msg": "secret", "shouted": "SECRET"});
    assert_eq!(run["steps"][0]["output"], transformed, "{run:#}");
    assert_eq!(run["steps"][1]["input"], transformed, "{run:#}");

    // Young: nothing goes.
    assert_eq!(prune(&app).await, Default::default());

    // Past the payload retention: bodies go, records stay; the pending run is untouched.
    app.clock.advance(2 * HOUR);
    let done = prune(&app).await;
    assert_eq!((done.payloads, done.events), (2, 0), "{done:?}");
    assert_eq!(
        app.count_rows("bodies").await,
        0,
        "the transform's output went too"
    );
    let (status, event) = app.api_get(&format!("/api/v1/events/{good}")).await;
    assert_eq!(status, 200);
    assert_eq!(event["payload"], serde_json::Value::Null, "{event:#}");
    assert_eq!(event["payload_expired"], true);
    let delivery = &event["runs"][0]["deliveries"][0];
    assert_eq!(delivery["status"], "succeeded");
    assert_eq!(delivery["payload_expired"], true);
    let attempt = &delivery["attempts"][0];
    assert_eq!(
        attempt["status_code"], 200,
        "the outcome stays: {attempt:#}"
    );
    assert_eq!(attempt["response_body"], serde_json::Value::Null);
    let (_, run) = app.api_get(&format!("/api/v1/runs/{good_run}")).await;
    assert_eq!(run["payload_expired"], true);
    assert_eq!(run["status"], "completed");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "every step's record stays: {run:#}");
    for step in steps {
        assert!(step.get("output").is_none(), "{step:#}");
        assert_eq!(step["input"], serde_json::Value::Null, "{step:#}");
        assert!(step["status"].is_string() && step["started_at"].is_string());
    }
    assert_eq!(
        steps[1]["attempts"][0]["response_body"],
        serde_json::Value::Null
    );
    assert!(
        !run.to_string().contains("secret") && !event.to_string().contains("SECRET"),
        "no body is left: {run:#} {event:#}"
    );
    let (_, list) = app.api_get("/api/v1/events").await;
    let listed = |id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(listed(&good)["payload_expired"], true);
    assert_eq!(listed(&slow)["payload_expired"], false);
    let (_, pending) = app.api_get(&format!("/api/v1/events/{slow}")).await;
    assert_eq!(
        pending["payload"]["msg"], "secret",
        "pending work stays whole"
    );
    assert_eq!(pending["payload_expired"], false);

    // A dead letter whose payload expired cannot be sent again, nor its run replayed.
    let (status, refused) = app
        .api_post(&format!("/api/v1/deliveries/{bad_delivery}/retry"))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"], "payload_expired");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("settings.payload_retention"),
        "{refused}"
    );
    let (status, refused) = app
        .api_post(&format!("/api/v1/runs/{bad_run}/replay"))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"], "payload_expired");
    assert_eq!(broken.count(), 1, "nothing was sent again");

    // Past the retention: finished work goes whole, with the rejected log; the dead letter
    // and the pending run stay.
    app.clock.advance(DAY);
    let done = prune(&app).await;
    assert_eq!(
        (
            done.events,
            done.runs,
            done.deliveries,
            done.attempts,
            done.rejections
        ),
        (1, 1, 1, 2, 1),
        "{done:?}"
    );
    for path in [
        format!("/api/v1/events/{good}"),
        format!("/api/v1/runs/{good_run}"),
        format!("/api/v1/deliveries/{good_delivery}"),
    ] {
        assert_eq!(app.api_get(&path).await.0, 404, "{path}");
    }
    assert_eq!(
        app.count_rows("attempts").await,
        1,
        "only the dead letter's"
    );
    assert_eq!(app.count_rows("rejections").await, 0);
    let (status, dead) = app
        .api_get(&format!("/api/v1/deliveries/{bad_delivery}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(dead["status"], "dead");
    let (_, pending) = app.api_get(&format!("/api/v1/events/{slow}")).await;
    assert_eq!(pending["payload"]["msg"], "secret");
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "ferry_pruned_total{what=\"events\"} 1",
        "ferry_pruned_total{what=\"payloads\"} 2",
        "ferry_pruned_total{what=\"rejections\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(text.contains("ferry_oldest_event_age_seconds"), "{text}");

    // Past the dead-letter limit: the dead letter goes too; pending work still stays.
    app.clock.advance(2 * DAY);
    let done = prune(&app).await;
    assert_eq!((done.events, done.deliveries), (2, 2), "{done:?}");
    assert_eq!(app.api_get(&format!("/api/v1/events/{bad}")).await.0, 404);
    assert_eq!(app.count_rows("attempts").await, 0);
    assert_eq!(app.event_count().await, 1);
    let (_, pending) = app.api_get(&format!("/api/v1/runs/{slow_run}")).await;
    assert_eq!(pending["status"], "running");
}

/// The size of the database file once the checkpointer has copied everything into it, and
/// the size SQLite sees (pages times page size): the two agree when the WAL is wholly copied.
async fn settled_file_size(app: &TestApp) -> u64 {
    let path = app.data_dir().join("ferry.db");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let space = app.state.store.space().await.unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        if size == (space.pages * space.page_size) as u64 {
            return size;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file ({size} bytes) never reached the size SQLite sees ({space:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn under_a_steady_load_with_a_short_retention_the_database_file_levels_off() {
    if skip_on_postgres("measures the SQLite file and its free pages") {
        return;
    }
    let ok = Receiver::start().await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true, retention: 1m }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: a, kind: http, url: "{url}" }}, {{ id: b, kind: http, url: "{url}" }}, {{ id: c, kind: http, url: "{url}" }} ]
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: [a, b, c] }} ] }} ]
"#,
        url = ok.url
    ))
    .await;
    let body = format!(r#"{{"type":"t","pad":"{}"}}"#, "x".repeat(32 * 1024));
    const EVENTS_PER_ROUND: usize = 100;
    let (mut loaded, mut pruned) = (Vec::new(), Vec::new());
    for round in 1..=8 {
        for _ in 0..EVENTS_PER_ROUND {
            app.accept("/in/s", &body, &[]).await;
        }
        ok.wait_for(round * EVENTS_PER_ROUND * 3).await;
        wait_until("every delivery of the round is recorded", || async {
            app.count_rows("attempts").await == (EVENTS_PER_ROUND * 3) as i64
        })
        .await;
        loaded.push(settled_file_size(&app).await);
        app.clock.advance(Duration::from_secs(120));
        let done = prune(&app).await;
        assert_eq!(
            done.events,
            (round * EVENTS_PER_ROUND) as u64,
            "round {round}: {done:?}"
        );
        assert_eq!(app.event_count().await, 0);
        pruned.push(settled_file_size(&app).await);
    }
    // One round holds some 3.3 MB of rows: without pruning the file would grow by that much a
    // round. With it, the file after any round is no larger than after the second, within a
    // small margin.
    let margin = |base: u64| base + base / 10 + 256 * 1024;
    for (round, (&l, &p)) in loaded.iter().zip(&pruned).enumerate().skip(2) {
        assert!(
            l <= margin(loaded[1]) && p <= margin(pruned[1]),
            "round {}: {l} and {p} bytes; after round 2: {} and {}\nloaded {loaded:?}\npruned {pruned:?}",
            round + 1,
            loaded[1],
            pruned[1]
        );
    }
    assert!(
        prune(&app).await.vacuumed_pages > 0,
        "free pages were given back: {pruned:?}"
    );
    let space = app.state.store.space().await.unwrap();
    assert!(
        space.incremental,
        "a new data directory is auto_vacuum = INCREMENTAL"
    );
}

/// Makes a data directory as Ferry made them before retention (schema version 2, the schema
/// of `fixtures/schema-v2.sql`, auto_vacuum NONE) holding one event with two pending
/// deliveries (one sends the event's payload, one its own body), a finished run whose context
/// holds a transformed payload (which version 4 moves to `bodies`), and one finished event.
fn version_2_data_dir(dir: &std::path::Path, now: i64) -> (String, String) {
    let conn = rusqlite::Connection::open(dir.join("ferry.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch(include_str!("fixtures/schema-v2.sql"))
        .unwrap();
    conn.pragma_update(None, "user_version", 2).unwrap();
    let (event, run) = (ferry::ids::event_id(), ferry::ids::run_id());
    conn.execute(
        "INSERT INTO events (id, source, event_type, received_at, headers, payload) VALUES (?1, 's', 't', ?2, '{}', ?3)",
        rusqlite::params![event, now, br#"{"n":1}"#.as_slice()],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO runs (id, event_id, flow_id, flow_version, status, pc, pending, steps, created_at, updated_at)
         VALUES (?1, ?2, 'f', 'v', 'waiting', 0, 2, '[]', ?3, ?3)",
        rusqlite::params![run, event, now],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO runs (id, event_id, flow_id, flow_version, status, pc, steps, context, created_at, updated_at)
         VALUES ('run_transformed', ?1, 'g', 'v', 'completed', 2, '[]', ?2, ?3, ?3)",
        rusqlite::params![event, r#"{"payload":{"t":1},"steps":{"x":{"a":1}}}"#, now],
    )
    .unwrap();
    // A transform may make the payload `null`: a payload still, not the event's.
    conn.execute(
        "INSERT INTO runs (id, event_id, flow_id, flow_version, status, pc, steps, context, created_at, updated_at)
         VALUES ('run_null', ?1, 'g', 'v', 'completed', 2, '[]', '{\"payload\":null}', ?2, ?2)",
        rusqlite::params![event, now],
    )
    .unwrap();
    for (destination, body) in [("a", None), ("b", Some(br#"{"own":true}"#.as_slice()))] {
        conn.execute(
            "INSERT INTO deliveries (id, event_id, run_id, destination_id, status, next_attempt_at, created_at, updated_at, body)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5, ?5, ?6)",
            rusqlite::params![ferry::ids::delivery_id(), event, run, destination, now, body],
        )
        .unwrap();
    }
    conn.execute(
        "INSERT INTO events (id, source, event_type, received_at, headers, payload) VALUES (?1, 's', 't', ?2, '{}', x'7b7d')",
        rusqlite::params![ferry::ids::event_id(), now - 1000],
    )
    .unwrap();
    // Two megabytes that the rewrite copies through the WAL.
    conn.execute_batch("CREATE TABLE padding (b BLOB)").unwrap();
    for _ in 0..32 {
        conn.execute(
            "INSERT INTO padding VALUES (?1)",
            rusqlite::params![vec![7u8; 64 * 1024]],
        )
        .unwrap();
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let auto_vacuum: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(auto_vacuum, 0, "the old layout has no auto_vacuum");
    (event, run)
}

#[tokio::test]
async fn a_data_directory_of_the_schema_before_retention_is_migrated_and_delivers_everything() {
    if skip_on_postgres("migrates a SQLite file of schema version 2") {
        return;
    }
    let ok = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ferry::clock::ManualClock::new(ferry::clock::system_now_ms());
    let (event, run) = version_2_data_dir(dir.path(), clock.now_ms());
    let app = spawn_app_at(
        &format!(
            r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: a, kind: http, url: "{url}" }}, {{ id: b, kind: http, url: "{url}" }} ]
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: [a, b] }} ] }} ]
"#,
            url = ok.url
        ),
        dir.path(),
        clock,
        None,
    )
    .await;
    ok.wait_for(2).await;
    let mut bodies: Vec<String> = ok
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    bodies.sort();
    assert_eq!(bodies, [r#"{"n":1}"#, r#"{"own":true}"#]);
    app.wait_run(&run, "completed").await;
    assert_eq!(app.event_count().await, 2, "nothing lost");
    let (_, shown) = app.api_get(&format!("/api/v1/events/{event}")).await;
    assert_eq!(shown["payload"], serde_json::json!({"n": 1}));
    assert_eq!(shown["payload_expired"], false);
    // New events go in and out as on a new data directory.
    let new = app.accept("/in/s", r#"{"type":"t","n":2}"#, &[]).await;
    ok.wait_for(4).await;
    app.wait_run(&app.run_of(&new, "f").await, "completed")
        .await;
    let space = app.state.store.space().await.unwrap();
    let c = app.sqlite();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let integrity: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!((version, integrity.as_str()), (4, "ok"));
    // Version 4 keeps bodies apart: the delivery's own body and the transformed payload of a
    // run's context each moved to `bodies`.
    let delivery_body: Vec<u8> = c.query_row(
        "SELECT b.data FROM deliveries d JOIN bodies b ON b.id = d.body_id WHERE d.destination_id = 'b'",
        [],
        |r| r.get(0),
    ).unwrap();
    let (run_body, context): (Vec<u8>, String) = c.query_row(
        "SELECT b.data, r.context FROM runs r JOIN bodies b ON b.id = r.payload_body WHERE r.id = 'run_transformed'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    ).unwrap();
    let null: (Vec<u8>, Option<String>) = c.query_row(
        "SELECT b.data, r.context FROM runs r JOIN bodies b ON b.id = r.payload_body WHERE r.id = 'run_null'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    ).unwrap();
    assert_eq!(null, (b"null".to_vec(), None));
    drop(c);
    assert_eq!(delivery_body, br#"{"own":true}"#);
    assert_eq!(run_body, br#"{"t":1}"#);
    assert_eq!(context, r#"{"steps":{"x":{"a":1}}}"#);
    assert!(space.incremental, "auto_vacuum is now INCREMENTAL");
    // The rewrite's copy of every page does not stay in the WAL.
    let wal = std::fs::metadata(dir.path().join("ferry.db-wal")).map_or(0, |m| m.len());
    assert!(
        wal < 1024 * 1024,
        "the WAL kept {wal} bytes after the rewrite"
    );
}

/// Each body once: a transformed payload fanned out to three destinations is one stored body,
/// which the run, the transform's step record and the three deliveries reference; a
/// per-destination body is stored apart; each destination gets what it must.
#[tokio::test]
async fn a_transformed_payload_fanned_out_to_three_is_stored_once() {
    let ok = Receiver::start().await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: a, kind: http, url: "{url}" }}
  - {{ id: b, kind: http, url: "{url}" }}
  - {{ id: c, kind: http, url: "{url}" }}
  - {{ id: d, kind: http, url: "{url}" }}
flows:
  - id: fan
    on: {{ source: s }}
    steps:
      - transform: '{{order: .id}}'
      - deliver: [a, b, c, {{ to: d, body: '{{only: .order}}' }}]
"#,
        url = ok.url
    ))
    .await;
    let event = app.accept("/in/s", r#"{"type":"t","id":7}"#, &[]).await;
    app.wait_run(&app.run_of(&event, "fan").await, "completed")
        .await;
    let mut sent: Vec<String> = ok
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            r#"{"only":7}"#,
            r#"{"order":7}"#,
            r#"{"order":7}"#,
            r#"{"order":7}"#
        ]
    );
    let runs = app
        .store_query("SELECT payload_body, steps FROM runs")
        .await;
    let (payload_body, steps) = (runs[0][0].clone().unwrap(), runs[0][1].clone().unwrap());
    let deliveries: Vec<(String, String)> = app
        .store_query("SELECT destination_id, body_id FROM deliveries ORDER BY destination_id")
        .await
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    assert_eq!(
        app.count_rows("bodies").await,
        2,
        "the transformed payload and d's own body"
    );
    let of = |to: &str| deliveries.iter().find(|(d, _)| d == to).unwrap().1.clone();
    assert_eq!(
        [of("a"), of("b"), of("c")],
        [(); 3].map(|_| payload_body.clone())
    );
    assert_ne!(of("d"), payload_body);
    assert!(
        steps.contains(&format!(r#""output_body":{payload_body}"#)) && !steps.contains("order"),
        "the transform's record names the body and holds no copy: {steps}"
    );
}
