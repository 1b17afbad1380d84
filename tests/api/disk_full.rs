//! A full disk: `ferry serve` as a child process with its data on a tmpfs the test mounts (the
//! tests run as root; without the right to mount, this test fails and says so), filled while
//! events stream in and freed again. While full, ingest answers `503` with `Retry-After`,
//! `/readyz` is not ready, the metrics and a `store_unwritable` alert rule say so; once freed,
//! Ferry writes again without a restart. Killed with SIGKILL while full and right after the
//! space came back, the files pass SQLite's integrity check and hold every acknowledged event,
//! and after each restart every acknowledged event reaches the receiver.

use crate::helpers::*;
use crate::tmpfs::Tmpfs;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the senders were answered.
#[derive(Default)]
struct Answers {
    /// Event numbers that got a 2xx.
    acked: HashSet<u64>,
    /// Every other answer: status, `Retry-After`, error code.
    refused: Vec<(u16, Option<String>, String)>,
}

impl Answers {
    fn refused_unwritable(&self) -> usize {
        self.refused
            .iter()
            .filter(|(_, _, code)| code == "store_unwritable")
            .count()
    }
}

/// Senders posting numbered events of 2 KiB to whatever Ferry `base` names, until `stop`.
fn send_events(
    base: Arc<Mutex<String>>,
    answers: Arc<Mutex<Answers>>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pad = "p".repeat(2048);
    (0..4)
        .map(|_| {
            let (base, answers, stop, next, pad) = (
                base.clone(),
                answers.clone(),
                stop.clone(),
                next.clone(),
                pad.clone(),
            );
            tokio::spawn(async move {
                let client = client();
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let url = format!("{}/in/s", base.lock().unwrap());
                    let sent = client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"type":"t","n":{n},"pad":"{pad}"}}"#))
                        .send()
                        .await;
                    let r = match sent {
                        Ok(r) => r,
                        // Ferry is down between a kill and its restart.
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let status = r.status().as_u16();
                    if r.status().is_success() {
                        answers.lock().unwrap().acked.insert(n);
                        continue;
                    }
                    let retry_after = r
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    let code = body["error"].as_str().unwrap_or("").to_string();
                    answers
                        .lock()
                        .unwrap()
                        .refused
                        .push((status, retry_after, code));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect()
}

/// What a crash leaves at `data`, checked on a copy: SQLite's integrity check passes and every
/// event in `acked` is there.
fn check_files(data: &Path, acked: &HashSet<u64>, when: &str) {
    let copy = tempfile::tempdir().unwrap();
    for name in ["ferry.db", "ferry.db-wal"] {
        if data.join(name).exists() {
            std::fs::copy(data.join(name), copy.path().join(name)).unwrap();
        }
    }
    let db = rusqlite::Connection::open(copy.path().join("ferry.db")).unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "the integrity check {when}");
    let mut stored = db.prepare("SELECT payload FROM events").unwrap();
    let stored: HashSet<u64> = stored
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(&p.unwrap()).unwrap();
            v["n"].as_u64().unwrap()
        })
        .collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events are not stored {when}: {lost:?}",
        lost.len()
    );
}

/// The `"n"` of an event's JSON body.
fn number(r: &Recorded) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["n"].as_u64().unwrap()
}

async fn get(base: &str, path: &str) -> (u16, String) {
    let r = client().get(format!("{base}{path}")).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Fills the disk and waits until ingest refuses an event because the store cannot write.
async fn fill_until_refused(disk: &Tmpfs, answers: &Mutex<Answers>) -> PathBuf {
    let before = answers.lock().unwrap().refused_unwritable();
    let filler = disk.fill("filler");
    wait_until("ingest answers 503 on the full disk", || async {
        answers.lock().unwrap().refused_unwritable() > before
    })
    .await;
    filler
}

async fn wait_acked_more(answers: &Mutex<Answers>, more: usize, what: &str) {
    let target = answers.lock().unwrap().acked.len() + more;
    wait_until(what, || async {
        answers.lock().unwrap().acked.len() >= target
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_503_corrupts_nothing_and_loses_no_acknowledged_event() {
    if skip_on_postgres("fills the tmpfs that holds the SQLite files") {
        return;
    }
    let (receiver, alerts) = (Receiver::start().await, Receiver::start().await);
    let yaml = format!(
        r#"
settings: {{ allow_private_destinations: true, alert_interval: 200ms }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: d, kind: http, url: "{}" }} ]
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: d }} ] }} ]
channels: [ {{ id: ops, kind: webhook, url: "{}" }} ]
alerts: [ {{ id: disk, when: {{ store_unwritable: {{}} }}, notify: [ops] }} ]
"#,
        receiver.url, alerts.url
    );
    // The config stays off the small file system.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(&config, yaml).unwrap();
    let disk = Tmpfs::mount("64m");
    let data = disk.path().join("data");
    let (mut child, first_base) =
        serve_config(&config, &data, std::process::Stdio::inherit()).await;
    let base = Arc::new(Mutex::new(first_base.clone()));
    let answers = Arc::new(Mutex::new(Answers::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders = send_events(base.clone(), answers.clone(), stop.clone());
    wait_acked_more(&answers, 200, "200 events acknowledged").await;

    // 1. Full, then freed: Ferry says so everywhere, and writes again on its own.
    let filler = fill_until_refused(&disk, &answers).await;
    wait_until("/readyz says the store cannot write", || async {
        let (status, body) = get(&first_base, "/readyz").await;
        status == 503 && body.contains("store_unwritable") && body.contains("No space left")
    })
    .await;
    wait_until("the metrics say the store cannot write", || async {
        let (_, metrics) = get(&first_base, "/metrics").await;
        metrics.contains("ferry_store_writable 0")
            && !metrics.contains("ferry_store_failed_writes_total 0\n")
    })
    .await;
    let notices = |state: &'static str| {
        let alerts = alerts.clone();
        async move {
            alerts.requests().iter().any(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                v["alert"] == "disk" && v["state"] == state
            })
        }
    };
    wait_until("the store_unwritable alert fires", || notices("firing")).await;
    std::fs::remove_file(filler).unwrap();
    wait_until("/readyz is ready again", || async {
        get(&first_base, "/readyz").await.0 == 200
    })
    .await;
    wait_acked_more(
        &answers,
        100,
        "events acknowledged again, without a restart",
    )
    .await;
    wait_until("the store_unwritable alert resolves", || {
        notices("resolved")
    })
    .await;

    // 2. SIGKILL while the disk is full; restart once there is room.
    fill_until_refused(&disk, &answers).await;
    child.kill().await.unwrap();
    let acked = answers.lock().unwrap().acked.clone();
    check_files(&data, &acked, "after a kill on the full disk");
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let (mut child, restarted) = serve_config(&config, &data, std::process::Stdio::inherit()).await;
    *base.lock().unwrap() = restarted;
    wait_acked_more(&answers, 100, "events acknowledged after the restart").await;

    // 3. SIGKILL right after the space came back.
    let filler = fill_until_refused(&disk, &answers).await;
    std::fs::remove_file(filler).unwrap();
    child.kill().await.unwrap();
    let acked = answers.lock().unwrap().acked.clone();
    check_files(&data, &acked, "after a kill right after the disk was freed");
    let (mut child, restarted) = serve_config(&config, &data, std::process::Stdio::inherit()).await;
    *base.lock().unwrap() = restarted;
    wait_acked_more(
        &answers,
        100,
        "events acknowledged after the second restart",
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    wait_until("every acknowledged event at the receiver", || async {
        let seen: HashSet<u64> = receiver.requests().iter().map(number).collect();
        answers.acked.is_subset(&seen)
    })
    .await;
    child.kill().await.unwrap();
    check_files(&data, &answers.acked, "at the end");
    // Every refusal was a 503 with Retry-After: the store's, or the write queue's when full.
    for (status, retry_after, code) in &answers.refused {
        assert_eq!(*status, 503, "refused with {status} ({code})");
        assert!(retry_after.is_some(), "a 503 ({code}) without Retry-After");
        assert!(
            code == "store_unwritable" || code == "overloaded",
            "a 503 with the code `{code}`"
        );
    }
    eprintln!(
        "disk full test: {} events acknowledged, {} refused with store_unwritable",
        answers.acked.len(),
        answers.refused_unwritable()
    );
}
