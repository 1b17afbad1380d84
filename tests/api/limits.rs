//! Limits, against a real `ferry serve` child process: memory stays within its byte budgets
//! when a destination never answers (and ingest sheds with `503` + `Retry-After`), half-sent
//! requests are cut off by the timeouts while normal ones are answered, connections past the
//! cap wait without costing memory, and a body over the limit gets a `413` the client reads
//! (a head over 64 KiB, a `431`).

use crate::helpers::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;

/// The child's resident memory (VmRSS), in bytes.
fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read `{line}`"));
    kib * 1024
}

/// Samples the child's VmRSS every 20 ms and keeps the highest, until dropped.
struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let peak = Arc::new(AtomicU64::new(vm_rss(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(vm_rss(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        RssPeak { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A destination that accepts connections, reads whatever comes and never answers.
async fn silent_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            });
        }
    });
    format!("http://{addr}/hook")
}

/// `ferry serve` on `yaml`, in a data directory of its own.
struct Served {
    child: tokio::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(yaml: &str) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ferry.yaml");
        std::fs::write(&config, yaml).unwrap();
        let data = dir.path().join("data");
        let (child, base) = serve_config(&config, &data, std::process::Stdio::inherit()).await;
        Served {
            child,
            base,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// `host:port`, for raw sockets.
    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_within_its_budgets_when_a_destination_never_answers() {
    const INGEST: u64 = 8 * MIB;
    const DELIVERY: u64 = 16 * MIB;
    // Besides the two budgets, what writing and reading 1 MB rows takes whatever their
    // number: SQLite's page caches (the writer's 16 MiB, each read connection's 2 MiB), the
    // writer's gathered WAL frames (up to 8 MiB), the allocators' retained pages. Measured
    // at about 70 MiB with no destination at all; with no delivery budget this test peaks
    // about 200 MiB over its start.
    const MARGIN: u64 = 96 * MIB;
    let url = silent_receiver().await;
    let ferry = Served::start(&format!(
        r#"
settings:
  allow_private_destinations: true
  memory: {{ ingest_bytes: {INGEST}, delivery_bytes: {DELIVERY} }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: never, kind: http, url: "{url}", timeout: 60s, concurrency: 8 }} ]
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: [never] }} ] }} ]
"#
    ))
    .await;
    let (pid, base) = (ferry.pid(), ferry.base.clone());
    let before = vm_rss(pid);
    let rss = RssPeak::start(pid);

    // 1 MB events from 16 senders at once: twice what the ingest budget holds. At most 400
    // requests (400 MB over loopback), stopping at 150 accepted (150 MB in the store, nine
    // times the delivery budget).
    let body: Arc<str> = format!(r#"{{"type":"t","pad":"{}"}}"#, "x".repeat(999_900)).into();
    let (sent, accepted, refused) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut senders = Vec::new();
    for _ in 0..16 {
        let (sent, accepted, refused) = (sent.clone(), accepted.clone(), refused.clone());
        let (body, base) = (body.clone(), base.clone());
        senders.push(tokio::spawn(async move {
            let http = client();
            while sent.fetch_add(1, Ordering::Relaxed) < 400
                && accepted.load(Ordering::Relaxed) < 150
            {
                let r = http
                    .post(format!("{base}/in/s"))
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    202 => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    503 => {
                        assert_eq!(r.headers()["retry-after"], "1");
                        let e: serde_json::Value = r.json().await.unwrap();
                        assert_eq!(e["error"], "overloaded");
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
                }
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    // The deliverer takes in what was committed meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let peak = rss.peak();
    let (accepted, refused) = (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    eprintln!(
        "memory test: {accepted} accepted, {refused} refused with 503; VmRSS {} MiB before, peak {} MiB",
        before / MIB,
        peak / MIB
    );
    assert!(refused > 0, "ingest shed some of the load with 503");
    assert!(
        accepted >= 100,
        "enough accepted to pass the delivery budget many times: {accepted}"
    );
    assert!(
        peak < before + INGEST + DELIVERY + MARGIN,
        "VmRSS peaked at {} MiB, over {} MiB before + {} MiB of budgets + {} MiB margin",
        peak / MIB,
        before / MIB,
        (INGEST + DELIVERY) / MIB,
        MARGIN / MIB
    );
    let health = client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    drop(ferry);
}

/// Sends `bytes` on a new connection to `addr` and leaves it open.
async fn half_sent(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(bytes).await.unwrap();
    socket
}

/// Reads until the server closes the connection (or resets it); what it answered before.
async fn read_until_closed(mut socket: TcpStream, within: Duration) -> Vec<u8> {
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection is still open after {within:?}"
    );
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_cut_off_while_normal_requests_are_answered() {
    let ferry = Served::start(
        r#"
settings:
  connections: { header_read_timeout: 1s, body_read_timeout: 1s, idle_timeout: 1s }
sources: [ { id: s, kind: webhook, verify: { scheme: none } } ]
"#,
    )
    .await;
    let (base, addr) = (ferry.base.clone(), ferry.addr());
    // 300 slow senders: a third stop in the middle of the head, a third send a head and a
    // tenth of the body they promised, a third open a connection and send nothing.
    let mut heads = Vec::new();
    let mut bodies = Vec::new();
    let mut silent = Vec::new();
    for _ in 0..100 {
        heads.push(half_sent(&addr, b"POST /in/s HTTP/1.1\r\nhost: x\r\ncontent-le").await);
        bodies.push(
            half_sent(
                &addr,
                b"POST /in/s HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"type\":\"",
            )
            .await,
        );
        silent.push(half_sent(&addr, b"").await);
    }
    // Meanwhile, normal requests are answered.
    let http = client();
    for i in 0..20 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            http.post(format!("{base}/in/s"))
                .body(format!(r#"{{"type":"t","n":{i}}}"#))
                .send(),
        )
        .await
        .expect("a normal request is answered within 5 s")
        .unwrap();
        assert_eq!(r.status(), 202);
    }
    // Every slow sender is cut off: a body too slow gets a 408 first.
    let cut = Duration::from_secs(10);
    for socket in heads.into_iter().chain(silent) {
        let answer = read_until_closed(socket, cut).await;
        assert!(
            answer.is_empty(),
            "no answer to a head that never ended: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    for socket in bodies {
        let answer = String::from_utf8_lossy(&read_until_closed(socket, cut).await).to_string();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_timeout"), "{answer}");
    }
    // A kept-alive connection left idle is closed too.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(idle, cut).await).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(ferry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_without_memory_while_open_ones_work() {
    const MAX: usize = 16;
    let ferry = Served::start(&format!(
        r#"
settings:
  connections: {{ max: {MAX}, header_read_timeout: 3s, idle_timeout: 30s }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
"#
    ))
    .await;
    let (base, addr) = (ferry.base.clone(), ferry.addr());
    let pid = ferry.pid();
    // One connection that works all along, kept alive.
    let mut working = TcpStream::connect(&addr).await.unwrap();
    let ask_health = async |socket: &mut TcpStream| {
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
            .await
            .expect("an open connection is answered within 5 s")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(ask_health(&mut working).await.starts_with("HTTP/1.1 200"));
    let before = vm_rss(pid);
    let rss = RssPeak::start(pid);
    // The other slots, then 400 more connections, each with 48 KB of a head that never ends.
    let head = format!(
        "POST /in/s HTTP/1.1\r\nhost: x\r\nx-filler: {}",
        "f".repeat(48 * 1024)
    );
    let mut slow = Vec::new();
    for _ in 0..MAX - 1 + 400 {
        slow.push(half_sent(&addr, head.as_bytes()).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let answer = ask_health(&mut working).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "the open connection keeps working at the cap: {answer:?}"
        );
    }
    let peak = rss.peak();
    eprintln!(
        "connection cap test: VmRSS {} KiB before, peak {} KiB with {} connections opened",
        before / 1024,
        peak / 1024,
        slow.len() + 1
    );
    // Within the cap: 15 connections with up to 64 KiB of head each, and the allocator's
    // steps of 4 MiB (measured: 4 to 6 MiB). Accepting the 400 others would take about
    // 140 KiB each, over 50 MiB (measured with a cap of 1000).
    assert!(
        peak < before + 16 * MIB,
        "VmRSS grew from {} KiB to {} KiB",
        before / 1024,
        peak / 1024
    );
    // Once the slow ones go, a new connection is served.
    drop(slow);
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        client().get(format!("{base}/healthz")).send(),
    )
    .await
    .expect("a new connection is answered within 5 s once slots free up")
    .unwrap();
    assert_eq!(r.status(), 200);
    drop(ferry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_the_413_of_a_body_over_the_limit() {
    let ferry = Served::start(
        r#"
settings: { max_body_size: 65536 }
sources: [ { id: s, kind: webhook, verify: { scheme: none } } ]
"#,
    )
    .await;
    let (base, addr) = (ferry.base.clone(), ferry.addr());
    let big = format!(r#"{{"type":"t","pad":"{}"}}"#, "x".repeat(600_000));
    // A client that sends it all and then reads: the answer is there.
    let r = client()
        .post(format!("{base}/in/s"))
        .body(big.clone())
        .send()
        .await
        .unwrap_or_else(|e| panic!("the client reads the answer, not a reset: {e:?}"));
    assert_eq!(r.status(), 413);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"], "payload_too_large");
    // A head over 64 KiB is refused too.
    let r = client()
        .post(format!("{base}/in/s"))
        .header("x-filler", "f".repeat(70_000))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    // The same from a raw socket, with the length declared and without (chunked, found too
    // large while it is read): every byte is written before the answer is read.
    let mut chunked = String::new();
    for chunk in big.as_bytes().chunks(16 * 1024) {
        chunked.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        ));
    }
    chunked.push_str("0\r\n\r\n");
    for request in [
        format!(
            "POST /in/s HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{big}",
            big.len()
        ),
        format!(
            "POST /in/s HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n{chunked}"
        ),
    ] {
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        let answer =
            String::from_utf8_lossy(&read_until_closed(socket, Duration::from_secs(10)).await)
                .to_string();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
    }
    drop(ferry);
}
