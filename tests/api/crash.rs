//! Crash safety: `ferry serve` as a child process, killed with SIGKILL while events stream
//! in, restarted on the same data. Every event that got a 2xx reaches every destination;
//! duplicates are allowed (and counted), losses are not.

use crate::helpers::*;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn start_ferry(
    config: &std::path::Path,
    data: &std::path::Path,
) -> (tokio::process::Child, String) {
    serve_config(config, data, std::process::Stdio::inherit()).await
}

/// Senders posting numbered events to `/in/s` until stopped, keeping the numbers
/// acknowledged with a 2xx.
pub(crate) struct Load {
    acked: Arc<Mutex<HashSet<u64>>>,
    stop: Arc<AtomicBool>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(base: &str, senders: usize) -> Load {
        Self::spread(&[base.to_string()], senders)
    }

    /// Senders spread over the nodes `bases`: sender `i` starts at node `i`, and moves on to
    /// the next node when one does not answer.
    pub(crate) fn spread(bases: &[String], senders: usize) -> Load {
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let next = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let senders = (0..senders)
            .map(|i| {
                let (acked, next, stop) = (acked.clone(), next.clone(), stop.clone());
                let bases = bases.to_vec();
                tokio::spawn(async move {
                    let client = client();
                    let mut at = i;
                    while !stop.load(Ordering::Relaxed) {
                        let base = &bases[at % bases.len()];
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let sent = client
                            .post(format!("{base}/in/s"))
                            .header("content-type", "application/json")
                            .body(format!(r#"{{"type":"t","n":{n}}}"#))
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status().is_success() => {
                                acked.lock().unwrap().insert(n);
                            }
                            Ok(_) => {}
                            Err(_) => {
                                at += 1;
                                tokio::time::sleep(Duration::from_millis(5)).await
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            acked,
            stop,
            senders,
        }
    }

    pub(crate) fn acked(&self) -> HashSet<u64> {
        self.acked.lock().unwrap().clone()
    }

    /// Stops the senders; the numbers acknowledged.
    pub(crate) async fn stop(mut self) -> HashSet<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for s in std::mem::take(&mut self.senders) {
            s.await.unwrap();
        }
        self.acked()
    }
}

/// Posts event number `n` to `/in/s` and checks it is accepted.
pub(crate) async fn post_event(base: &str, n: u64) {
    let sent = client()
        .post(format!("{base}/in/s"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"type":"t","n":{n}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
}

/// Sends `signal` (`-TERM`) to `target`: a process id, or `-<id>` for its whole group.
pub(crate) fn signal(target: &str, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, "--", target])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} {target}");
}

/// Waits up to `seconds` for `child` to exit.
pub(crate) async fn exits_within(
    child: &mut tokio::process::Child,
    seconds: u64,
    what: &str,
) -> std::process::ExitStatus {
    tokio::time::timeout(Duration::from_secs(seconds), child.wait())
        .await
        .expect(what)
        .unwrap()
}

/// Event numbers seen by a receiver, with how often each arrived.
pub(crate) fn tally(receiver: &Receiver) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for r in receiver.requests() {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        *seen.entry(v["n"].as_u64().unwrap()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_event() {
    let quick = Receiver::start().await;
    let slow = Receiver::start_with(Reply::delayed(Duration::from_millis(5))).await;
    let flaky = Receiver::start().await;
    flaky.script((0..40).map(|i| Reply::status(if i % 2 == 0 { 503 } else { 200 })));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: quick, kind: http, url: "{}" }}
  - {{ id: slow, kind: http, url: "{}", concurrency: 4 }}
  - {{ id: flaky, kind: http, url: "{}", retry: {{ max_attempts: 20, initial: 100ms, max: 1s }} }}
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: [quick, slow, flaky] }} ] }} ]
"#,
            quick.url, slow.url, flaky.url
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (mut child, base) = start_ferry(&config, &data).await;

    let load = Load::start(&base, 8);
    wait_until("300 events acknowledged", || async {
        load.acked().len() >= 300
    })
    .await;
    child.kill().await.unwrap(); // SIGKILL
    let acked_before_kill = load.acked().len();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let acked = load.stop().await;
    assert!(acked.len() >= acked_before_kill);
    let delivered_before_restart = quick.count();

    let (mut child, _) = start_ferry(&config, &data).await;
    for receiver in [&quick, &slow, &flaky] {
        wait_until(
            &format!("every acknowledged event at {}", receiver.url),
            || async {
                let seen = tally(receiver);
                acked.iter().all(|n| seen.contains_key(n))
            },
        )
        .await;
    }
    let duplicates: usize = [&quick, &slow, &flaky]
        .iter()
        .map(|r| tally(r).values().map(|c| c - 1).sum::<usize>())
        .sum();
    eprintln!(
        "crash test: {} events acknowledged, {} quick deliveries before the kill, {} duplicate deliveries after restart",
        acked.len(),
        delivered_before_restart,
        duplicates
    );
    child.kill().await.unwrap();
}

/// A graceful stop (`SIGTERM`, as in a rolling deploy) under load, then a restart on the same
/// data: every acknowledged event reaches every destination, and none twice. The slow
/// receiver keeps attempts in flight at the moment of the stop; they finish and are recorded
/// before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_restart_deliver_nothing_twice() {
    let quick = Receiver::start().await;
    let slow = Receiver::start_with(Reply::delayed(Duration::from_millis(100))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
settings: {{ allow_private_destinations: true, shutdown_grace: 10s }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: quick, kind: http, url: "{}" }}
  - {{ id: slow, kind: http, url: "{}", concurrency: 16 }}
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: [quick, slow] }} ] }} ]
"#,
            quick.url, slow.url
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (mut child, base) = start_ferry(&config, &data).await;

    let load = Load::start(&base, 4);
    wait_until("200 events acknowledged", || async {
        load.acked().len() >= 200
    })
    .await;
    wait_until("attempts in flight at the slow receiver", || async {
        slow.count() >= 16
    })
    .await;
    let pid = child.id().expect("ferry is running").to_string();
    signal(&pid, "-TERM");
    let status = exits_within(&mut child, 20, "ferry stops within its grace").await;
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    let acked = load.stop().await;
    let slow_before_restart = slow.count();
    assert!(
        slow_before_restart < acked.len(),
        "the stop came while deliveries were still pending ({slow_before_restart} of {})",
        acked.len()
    );

    let (mut child, _) = start_ferry(&config, &data).await;
    for receiver in [&quick, &slow] {
        wait_until(
            &format!("every acknowledged event at {}", receiver.url),
            || async {
                let seen = tally(receiver);
                acked.iter().all(|n| seen.contains_key(n))
            },
        )
        .await;
    }
    for receiver in [&quick, &slow] {
        let twice: Vec<u64> = tally(receiver)
            .into_iter()
            .filter(|(_, count)| *count > 1)
            .map(|(n, _)| n)
            .collect();
        assert!(
            twice.is_empty(),
            "events delivered twice to {} across the graceful stop: {twice:?}",
            receiver.url
        );
    }
    child.kill().await.unwrap();
}

/// A stop signal sent to the whole process group (a terminal's Ctrl-C, systemd's default
/// `KillMode`) while a run's `http` step is in flight: the expression workers, in the same
/// group, must outlive it, so the step finishes, its answer is committed and the run goes on
/// after the restart without sending the step again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_sent_to_the_process_group_lets_a_run_step_finish() {
    let api = Receiver::start_with(Reply::delayed(Duration::from_millis(1500))).await;
    let quick = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
settings: {{ allow_private_destinations: true, shutdown_grace: 10s }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: quick, kind: http, url: "{}" }} ]
flows:
  - id: f
    on: {{ source: s }}
    steps:
      - name: create
        http: {{ method: POST, url: "{}", body: '{{n: .n}}' }}
      - transform: '{{got: $steps.create.body.received, n: .n}}'
      - deliver: quick
"#,
            quick.url, api.url
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (store, envs) = store_args(&data).await;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .args(store)
        .args(["--listen", "127.0.0.1:0"])
        .env("FERRY_API_TOKEN", TOKEN)
        .env("FERRY_LOG", "error")
        .envs(envs)
        .process_group(0);
    let (mut child, base) = spawn_announced(command, std::process::Stdio::inherit()).await;
    post_event(&base, 1).await;
    api.wait_for(1).await;
    let group = format!("-{}", child.id().expect("ferry is running"));
    signal(&group, "-TERM");
    let status = exits_within(&mut child, 20, "ferry stops within its grace").await;
    assert!(status.success(), "a graceful stop exits 0: {status:?}");

    let (mut child, _) = start_ferry(&config, &data).await;
    quick.wait_for(1).await;
    let delivered: serde_json::Value = serde_json::from_slice(&quick.requests()[0].body).unwrap();
    assert_eq!(delivered, serde_json::json!({"got": true, "n": 1}));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api.count(),
        1,
        "the step's answer was committed: it is not sent again"
    );
    assert_eq!(quick.count(), 1);
    child.kill().await.unwrap();
}

/// A second stop signal, even sent right after the first, ends the process at once (143 for
/// `SIGTERM`), without waiting for the attempt in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_stops_at_once() {
    let slow = Receiver::start_with(Reply::delayed(Duration::from_secs(30))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
settings: {{ allow_private_destinations: true, shutdown_grace: 30s }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: slow, kind: http, url: "{}", timeout: 60s }} ]
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: slow }} ] }} ]
"#,
            slow.url
        ),
    )
    .unwrap();
    let (mut child, base) = start_ferry(&config, &dir.path().join("data")).await;
    post_event(&base, 1).await;
    slow.wait_for(1).await;
    let pid = child.id().expect("ferry is running").to_string();
    signal(&pid, "-TERM");
    // Two signals sent back to back may arrive as one (standard signals do not queue): the
    // second goes once the first has begun the stop (the listener is closed).
    let addr = base.trim_start_matches("http://").to_string();
    wait_until("the listener closed by the first signal", || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(&addr).await.is_err() }
    })
    .await;
    signal(&pid, "-TERM");
    let status = exits_within(
        &mut child,
        10,
        "the second signal stops ferry at once, not after the grace",
    )
    .await;
    assert_eq!(status.code(), Some(143), "{status:?}");
}
