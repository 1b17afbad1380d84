//! Cluster mode end to end: `ferry serve --database-url` processes sharing one PostgreSQL
//! schema, under load, killed with SIGKILL, stopped with SIGTERM, restarted. What must hold:
//! every acknowledged event reaches every destination; the attempt log shows no job attempted
//! by two nodes under one lease, and no two nodes attempting one delivery at the same time;
//! a dead node's jobs are finished by the others once its leases ran out; a graceful stop
//! delivers nothing twice; migrations run once; an alert notifies once.

use crate::crash::{Load, exits_within, post_event, signal, tally};
use crate::helpers::*;
use crate::postgres::TestSchema;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

/// The secret key every node of a test cluster shares (32 bytes, base64).
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Starts a node `id` of the cluster in `schema` with `config`; its log goes to `log`.
async fn start_node(
    config: &Path,
    schema: &TestSchema,
    id: &str,
    log: &Path,
) -> (tokio::process::Child, String) {
    let log = std::fs::File::create(log).unwrap();
    spawn_serve(
        &[
            "serve".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--database-url".as_ref(),
            schema.url.as_ref(),
            "--node-id".as_ref(),
            id.as_ref(),
        ],
        &[
            ("FERRY_API_TOKEN", TOKEN),
            ("FERRY_SECRET_KEY", KEY),
            ("FERRY_LOG", "info"),
        ],
        std::process::Stdio::from(log),
    )
    .await
}

/// Each attempt in the log: (delivery, node, lease token, started at, duration).
async fn attempt_log(schema: &TestSchema) -> Vec<(String, String, i64, i64, i64)> {
    schema
        .client()
        .await
        .query(
            "SELECT delivery_id, node, lease_token, started_at, duration_ms FROM attempts ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// No lease token on two attempts, and no delivery attempted by two nodes at overlapping
/// times.
fn assert_no_overlap(log: &[(String, String, i64, i64, i64)]) {
    let mut tokens = HashSet::new();
    for (delivery, _, token, _, _) in log {
        assert!(
            tokens.insert(*token),
            "lease token {token} used by two attempts (delivery {delivery})"
        );
    }
    let mut by_delivery: HashMap<&str, Vec<(&str, i64, i64)>> = HashMap::new();
    for (delivery, node, _, started, duration) in log {
        by_delivery
            .entry(delivery)
            .or_default()
            .push((node, *started, started + duration));
    }
    for (delivery, attempts) in by_delivery {
        for (i, a) in attempts.iter().enumerate() {
            for b in &attempts[i + 1..] {
                let overlap = a.1 < b.2 && b.1 < a.2;
                assert!(
                    !(overlap && a.0 != b.0),
                    "delivery {delivery} attempted by {} and {} at once: {a:?} {b:?}",
                    a.0,
                    b.0
                );
            }
        }
    }
}

/// Writes `yaml` as `ferry.yaml` in `dir`.
fn config_at(dir: &Path, yaml: String) -> std::path::PathBuf {
    let config = dir.join("ferry.yaml");
    std::fs::write(&config, yaml).unwrap();
    config
}

/// One source delivering to one destination at `url` with `concurrency: 4`.
fn one_destination(url: &str) -> String {
    format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: slow, kind: http, url: "{url}", concurrency: 4 }} ]
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: [slow] }} ] }} ]
"#
    )
}

/// A flow delivering to `quick` and to `slow` (8 at once), with 3 s leases.
fn write_config(dir: &Path, quick: &Receiver, slow: &Receiver) -> std::path::PathBuf {
    config_at(
        dir,
        format!(
            r#"
settings: {{ allow_private_destinations: true, shutdown_grace: 10s, lease: 3s }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: quick, kind: http, url: "{}" }}
  - {{ id: slow, kind: http, url: "{}", concurrency: 8 }}
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: [quick, slow] }} ] }} ]
"#,
            quick.url, slow.url
        ),
    )
}

/// Waits until each receiver has seen every event of `acked`.
async fn all_delivered(acked: &HashSet<u64>, receivers: &[&Receiver]) {
    for receiver in receivers {
        wait_until(
            &format!("every acknowledged event at {}", receiver.url),
            || async {
                let seen = tally(receiver);
                acked.iter().all(|n| seen.contains_key(n))
            },
        )
        .await;
    }
}

/// Three nodes under load: one killed (SIGKILL), one stopped gracefully (SIGTERM), both
/// started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_lose_nothing_when_one_is_killed_and_one_stopped() {
    let schema = TestSchema::create().await;
    let quick = Receiver::start().await;
    let slow = Receiver::start_with(Reply::delayed(Duration::from_millis(40))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &quick, &slow);
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let mut nodes = Vec::new();
    for id in ["n0", "n1", "n2"] {
        nodes.push(start_node(&config, &schema, id, &log(id)).await);
    }
    let bases: Vec<String> = nodes.iter().map(|(_, base)| base.clone()).collect();

    let load = Load::spread(&bases, 6);
    wait_until("300 events acknowledged", || async {
        load.acked().len() >= 300
    })
    .await;
    // SIGKILL n0 while it holds leases: its jobs must go to the others once they run out.
    let client = schema.client().await;
    nodes[0].0.kill().await.unwrap();
    let held_by_killed: HashSet<String> = client
        .query(
            "SELECT delivery_id FROM delivery_jobs WHERE leased_by = 'n0'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let acked_at_kill = load.acked().len();
    wait_until("150 more events acknowledged", || async {
        load.acked().len() >= acked_at_kill + 150
    })
    .await;
    // SIGTERM n1 under load: it finishes what is in flight and gives the rest back.
    let pid = nodes[1].0.id().unwrap().to_string();
    signal(&pid, "-TERM");
    let status = exits_within(&mut nodes[1].0, 20, "n1 stops within its grace").await;
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    let acked = load.stop().await;

    // n2 alone finishes everything, n0's jobs included once their leases ran out.
    all_delivered(&acked, &[&quick, &slow]).await;
    wait_until("no job left in the store", || async {
        let left: i64 = client
            .query_one("SELECT count(*) FROM delivery_jobs", &[])
            .await
            .unwrap()
            .get(0);
        left == 0
    })
    .await;
    let log_rows = attempt_log(&schema).await;
    assert_no_overlap(&log_rows);
    let finished_by: HashMap<&str, &str> = log_rows
        .iter()
        .map(|(d, node, ..)| (d.as_str(), node.as_str()))
        .collect();
    let taken_over = held_by_killed
        .iter()
        .filter(|d| finished_by.get(d.as_str()).is_some_and(|n| *n != "n0"))
        .count();
    assert!(
        held_by_killed.is_empty() || taken_over > 0,
        "the killed node's jobs were finished by the others ({taken_over} of {})",
        held_by_killed.len()
    );
    let stopped = std::fs::read_to_string(log("n1")).unwrap();
    assert!(
        stopped.contains("gave back the leases"),
        "the stopped node gave its leases back:\n{stopped}"
    );

    // The two come back with no manual step and take work again.
    nodes[0] = start_node(&config, &schema, "n0", &log("n0-again")).await;
    nodes[1] = start_node(&config, &schema, "n1", &log("n1-again")).await;
    let next = 1_000_000;
    post_event(&nodes[0].1, next).await;
    post_event(&nodes[1].1, next + 1).await;
    let more: HashSet<u64> = [next, next + 1].into();
    all_delivered(&more, &[&quick, &slow]).await;
    let listed: serde_json::Value = client_get(&nodes[0].1, "/api/v1/events?limit=1").await;
    assert!(listed["data"].as_array().is_some_and(|a| !a.is_empty()));
    eprintln!(
        "cluster test: {} events acknowledged, {} deliveries held by the killed node, {} taken over, {} duplicates at the slow receiver",
        acked.len(),
        held_by_killed.len(),
        taken_over,
        tally(&slow).values().map(|c| c - 1).sum::<usize>()
    );
    for (mut child, _) in nodes {
        let _ = child.kill().await;
    }
}

/// GET `path` on a node with the test token, as JSON.
async fn client_get(base: &str, path: &str) -> serde_json::Value {
    let response = client()
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// One node of two stopped with SIGTERM under load and started again: no delivery is
/// received twice, and nothing waits for a lease to run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_under_load_and_restarted_delivers_nothing_twice() {
    let schema = TestSchema::create().await;
    let quick = Receiver::start().await;
    let slow = Receiver::start_with(Reply::delayed(Duration::from_millis(100))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &quick, &slow);
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let (mut a, base_a) = start_node(&config, &schema, "a", &log("a")).await;
    let load = Load::start(&base_a, 4);
    wait_until("200 events acknowledged", || async {
        load.acked().len() >= 200
    })
    .await;
    wait_until("attempts in flight at the slow receiver", || async {
        slow.count() >= 8
    })
    .await;
    let pid = a.id().unwrap().to_string();
    signal(&pid, "-TERM");
    let status = exits_within(&mut a, 20, "the node stops within its grace").await;
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    let acked = load.stop().await;
    assert!(
        slow.count() < acked.len(),
        "the stop came while deliveries were pending"
    );
    let (mut again, _) = start_node(&config, &schema, "a", &log("a-again")).await;
    all_delivered(&acked, &[&quick, &slow]).await;
    for receiver in [&quick, &slow] {
        let twice: Vec<u64> = tally(receiver)
            .into_iter()
            .filter(|(_, count)| *count > 1)
            .map(|(n, _)| n)
            .collect();
        assert!(
            twice.is_empty(),
            "delivered twice to {} across the graceful stop: {twice:?}",
            receiver.url
        );
    }
    assert_no_overlap(&attempt_log(&schema).await);
    again.kill().await.unwrap();
}

/// Three nodes started at once on an empty schema: exactly one applies the migrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_starting_together_migrate_once() {
    let schema = TestSchema::create().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(&config, "{}").unwrap();
    let logs: Vec<_> = (0..3)
        .map(|i| dir.path().join(format!("n{i}.log")))
        .collect();
    let (a, b, c) = tokio::join!(
        start_node(&config, &schema, "n0", &logs[0]),
        start_node(&config, &schema, "n1", &logs[1]),
        start_node(&config, &schema, "n2", &logs[2]),
    );
    let migrated: Vec<usize> = logs
        .iter()
        .map(|l| {
            std::fs::read_to_string(l)
                .unwrap()
                .matches("applied PostgreSQL migration")
                .count()
        })
        .collect();
    assert_eq!(
        migrated.iter().filter(|n| **n > 0).count(),
        1,
        "one node migrates: {migrated:?}"
    );
    assert_eq!(
        migrated.iter().sum::<usize>(),
        ferry::store::postgres::MIGRATIONS.len(),
        "each migration once: {migrated:?}"
    );
    let nodes: i64 = schema
        .client()
        .await
        .query_one("SELECT count(*) FROM ferry_nodes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(nodes, 3);
    for (mut child, _) in [a, b, c] {
        child.kill().await.unwrap();
    }
}

/// An alert rule on three nodes fires once: one node evaluates the rules at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_rule_notifies_once_not_once_per_node() {
    let schema = TestSchema::create().await;
    let ops = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_at(
        dir.path(),
        format!(
            r#"
settings: {{ allow_private_destinations: true, alert_interval: 200ms }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
channels: [ {{ id: ops, kind: webhook, url: "{}" }} ]
alerts:
  - {{ id: quiet, when: {{ source_silent: {{ source: s, for: 1s }} }}, notify: [ops] }}
"#,
            ops.url
        ),
    );
    let mut nodes = Vec::new();
    for id in ["n0", "n1", "n2"] {
        let log = dir.path().join(format!("{id}.log"));
        nodes.push(start_node(&config, &schema, id, &log).await);
    }
    wait_until("the alert notified", || async { ops.count() >= 1 }).await;
    // A few more evaluations on every node.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ops.count(), 1, "one notice, not one per node");
    // The leader dies: another node takes the lead, and does not notify again for the same
    // firing.
    let leader_log = (0..3).find(|i| {
        std::fs::read_to_string(dir.path().join(format!("n{i}.log")))
            .unwrap()
            .contains("leads `alerts` now")
    });
    let leader = leader_log.expect("a node leads");
    nodes[leader].0.kill().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        ops.count(),
        1,
        "the new leader does not announce the same firing again"
    );
    for (mut child, _) in nodes {
        let _ = child.kill().await;
    }
}

/// A receiver that answers after `delay` and counts the most requests it had at once.
async fn counting_receiver(
    delay: Duration,
) -> (
    String,
    std::sync::Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    // (now in flight, most at once, requests seen)
    let counts = std::sync::Arc::new((
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    ));
    let shared = counts.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move || {
            let c = shared.clone();
            async move {
                let now = c.0.fetch_add(1, SeqCst) + 1;
                c.1.fetch_max(now, SeqCst);
                tokio::time::sleep(delay).await;
                c.0.fetch_sub(1, SeqCst);
                c.2.fetch_add(1, SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, counts)
}

/// A destination's `concurrency` holds across the cluster: two live nodes take two each of
/// four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destinations_concurrency_is_shared_by_the_live_nodes() {
    use std::sync::atomic::Ordering::SeqCst;
    let schema = TestSchema::create().await;
    let (url, counts) = counting_receiver(Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_at(dir.path(), one_destination(&url));
    let (mut a, base_a) = start_node(&config, &schema, "a", &dir.path().join("a.log")).await;
    let (mut b, base_b) = start_node(&config, &schema, "b", &dir.path().join("b.log")).await;
    // Node a counts b at its next heartbeat (every 5 s); b counted a when it joined.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for n in 0..40 {
        post_event(if n % 2 == 0 { &base_a } else { &base_b }, n).await;
    }
    wait_until("40 deliveries", || async { counts.2.load(SeqCst) >= 40 }).await;
    let most = counts.1.load(SeqCst);
    assert!(
        most <= 4,
        "at most `concurrency` requests at once across the nodes, saw {most}"
    );
    assert!(most >= 2, "both nodes send: {most} at once");
    a.kill().await.unwrap();
    b.kill().await.unwrap();
}

/// Two nodes under load with leases renewed often (every third of a second): renewals and the
/// batches that record attempts lock the same rows, and must never deadlock (a deadlock rolls
/// back a batch of attempts already sent, which are then sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_with_short_leases_under_load_deliver_nothing_twice() {
    let schema = TestSchema::create().await;
    let receivers = [
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let config = config_at(
        dir.path(),
        format!(
            r#"
settings: {{ allow_private_destinations: true, lease: 1s }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: d0, kind: http, url: "{}" }}
  - {{ id: d1, kind: http, url: "{}" }}
  - {{ id: d2, kind: http, url: "{}" }}
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: [d0, d1, d2] }} ] }} ]
"#,
            receivers[0].url, receivers[1].url, receivers[2].url
        ),
    );
    let (mut a, base_a) = start_node(&config, &schema, "a", &dir.path().join("a.log")).await;
    let (mut b, base_b) = start_node(&config, &schema, "b", &dir.path().join("b.log")).await;
    let load = Load::spread(&[base_a, base_b], 8);
    wait_until("1500 events acknowledged", || async {
        load.acked().len() >= 1500
    })
    .await;
    let acked = load.stop().await;
    let [r0, r1, r2] = &receivers;
    all_delivered(&acked, &[r0, r1, r2]).await;
    for receiver in &receivers {
        let twice = tally(receiver).values().filter(|c| **c > 1).count();
        assert_eq!(twice, 0, "deliveries received twice at {}", receiver.url);
    }
    for node in ["a", "b"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{node}.log"))).unwrap();
        assert!(
            !log.contains("could not record the attempt"),
            "node {node} failed to record attempts:\n{log}"
        );
    }
    a.kill().await.unwrap();
    b.kill().await.unwrap();
}

/// A node id with control characters is refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_with_control_characters_is_refused() {
    let schema = TestSchema::create().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "serve",
            "--database-url",
            &schema.url,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--node-id", "a\nb\u{1b}[31mred"])
        .env("FERRY_API_TOKEN", TOKEN)
        .env("FERRY_SECRET_KEY", KEY)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("must not hold control characters"),
        "{stderr}"
    );
    assert!(schema.tables().await.is_empty(), "nothing was written");
}

/// A backlog that comes due at once (a destination resumed) is sent by every node, not taken
/// whole by the first that claims: each claims a few times its share of the destination's
/// `concurrency` at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_coming_due_at_once_is_spread_over_the_nodes() {
    let schema = TestSchema::create().await;
    let slow = Receiver::start_with(Reply::delayed(Duration::from_millis(50))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_at(dir.path(), one_destination(&slow.url));
    let (mut a, base_a) = start_node(&config, &schema, "a", &dir.path().join("a.log")).await;
    let (mut b, base_b) = start_node(&config, &schema, "b", &dir.path().join("b.log")).await;
    let paused = client()
        .post(format!("{base_a}/api/v1/destinations/slow/pause"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"reason": "backlog"}))
        .send()
        .await
        .unwrap();
    assert!(paused.status().is_success(), "{}", paused.status());
    // Both nodes hold the destination (b learns of the pause by its hint).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in 0..200 {
        post_event(if n % 2 == 0 { &base_a } else { &base_b }, n).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        slow.count(),
        0,
        "nothing is sent while the destination is paused"
    );
    let resumed = client()
        .post(format!("{base_b}/api/v1/destinations/slow/resume"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(resumed.status().is_success());
    let all: HashSet<u64> = (0..200).collect();
    all_delivered(&all, &[&slow]).await;
    let log = attempt_log(&schema).await;
    let by_a = log.iter().filter(|(_, node, ..)| node == "a").count();
    let by_b = log.iter().filter(|(_, node, ..)| node == "b").count();
    assert!(
        by_a >= 40 && by_b >= 40,
        "both nodes send the backlog: a {by_a}, b {by_b}"
    );
    a.kill().await.unwrap();
    b.kill().await.unwrap();
}

/// `ferry secrets rotate --database-url` with `envs`: whether it succeeded, and what it said.
async fn rotate_cluster(schema: &TestSchema, envs: &[(&str, &str)]) -> (bool, String) {
    crate::secrets::rotate_at(&["--database-url".as_ref(), schema.url.as_ref()], envs).await
}

/// A cluster's key is rotated with every node stopped: refused while one runs, then every
/// secret sealed again, and the nodes start with the new key only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_key_is_rotated_with_its_nodes_stopped() {
    let schema = TestSchema::create().await;
    let crm = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_at(
        dir.path(),
        r#"
settings: { allow_private_destinations: true }
sources: [ { id: s, kind: webhook, verify: { scheme: none } } ]
"#
        .to_string(),
    );
    let (mut node, base) = start_node(&config, &schema, "n", &dir.path().join("n.log")).await;
    let made = client()
        .post(format!("{base}/api/v1/destinations"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({
            "id": "crm", "kind": "http", "url": crm.url,
            "signing": { "secret": "whsec_c2VjcmV0LW9mLXRoZS1jcm0tZGVzdGluYXRpb24=" }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201, "{}", made.text().await.unwrap());
    let new_key = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let both = [("FERRY_SECRET_KEY", KEY), ("FERRY_NEW_SECRET_KEY", new_key)];

    let (ok, said) = rotate_cluster(&schema, &both).await;
    assert!(!ok && said.contains("stop every node first"), "{said}");
    let (ok, said) = rotate_cluster(&schema, &[("FERRY_NEW_SECRET_KEY", new_key)]).await;
    assert!(
        !ok && said.contains("FERRY_SECRET_KEY must be set"),
        "{said}"
    );

    // The node stops; its last heartbeat is older than 15 s (aged here rather than waited for).
    node.kill().await.unwrap();
    schema
        .client()
        .await
        .execute("UPDATE ferry_nodes SET seen_at = 0", &[])
        .await
        .unwrap();
    let (ok, said) = rotate_cluster(&schema, &both).await;
    assert!(ok, "{said}");
    assert!(said.contains("sealed 1 secret(s) of 1 object(s)"), "{said}");

    // The old key no longer opens the secrets; the new one does, and the destination signs.
    let old = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .args(["--database-url", &schema.url, "--node-id", "n"])
        .env("FERRY_API_TOKEN", TOKEN)
        .env("FERRY_SECRET_KEY", KEY)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&old.stderr);
    assert!(
        !old.status.success() && stderr.contains("does not open"),
        "{stderr}"
    );
    let log = std::fs::File::create(dir.path().join("n-again.log")).unwrap();
    let (mut again, base) = spawn_serve(
        &[
            "serve".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--database-url".as_ref(),
            schema.url.as_ref(),
            "--node-id".as_ref(),
            "n".as_ref(),
        ],
        &[("FERRY_API_TOKEN", TOKEN), ("FERRY_SECRET_KEY", new_key)],
        std::process::Stdio::from(log),
    )
    .await;
    let flow = client()
        .post(format!("{base}/api/v1/flows"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({
            "id": "f", "on": { "source": "s" }, "steps": [ { "deliver": ["crm"] } ]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(flow.status(), 201, "{}", flow.text().await.unwrap());
    post_event(&base, 1).await;
    crm.wait_for(1).await;
    assert!(
        crm.requests()[0].headers.contains_key("webhook-signature"),
        "the delivery is signed with the secret opened under the new key"
    );
    again.kill().await.unwrap();
}
