//! The phases of `ferry bench`, in the order they run: the bare handler (the baseline of
//! every ratio), ingest only (rounds of the bare handler, Ferry and the synced bare handler,
//! back to back), fan-out to 3, the flow with expressions (and `--compare-with`'s build), the
//! fan-out among many flows (`--flows`), the fan-out at a fixed rate for latency, and the
//! synced bare handler at that rate. Each phase
//! starts its targets, drives them, stops them and adds its rows to the [`Report`].

use super::load::{Drive, Load};
use super::receivers::{Deliveries, start_receivers};
use super::report::{Report, Row, median, row};
use super::storage::Storage;
use super::target::{
    API_TOKEN, Backend, Target, start_ferry, start_ferry_from, start_synced_bare, start_target,
};
use super::{BenchArgs, BenchError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What every phase shares: the arguments, how targets are driven, and the receivers that
/// Ferry delivers to.
pub(super) struct Bench {
    pub(super) args: BenchArgs,
    drive: Drive,
    receivers: Vec<SocketAddr>,
    stats: Arc<Deliveries>,
}

/// The bare handler's figures, which the ratios divide by.
pub(super) struct Baseline {
    /// Closed loop: its latencies are the baseline of latencies at max load.
    max: Load,
    /// At `--rate`: the baseline of latencies at a fixed rate.
    fixed: Load,
    /// Requests/s, closed loop.
    rps: f64,
    /// CPU microseconds per request, closed loop.
    cpu_us: f64,
}

/// One round of the ingest-only phase: the bare handler and Ferry, driven back to back.
struct Round {
    bare_rps: f64,
    rps: f64,
    /// The synced bare handler's requests/s, driven right after Ferry.
    synced_rps: f64,
    bare_cpu_us: f64,
    cpu_us: f64,
}

/// What a closed-loop phase with deliveries measured.
struct DeliveryRun {
    events_per_s: f64,
    deliveries_per_s: f64,
    failed: u64,
    rss: Option<f64>,
    storage: Storage,
}

impl Bench {
    /// Where each phase's Ferry keeps its data (`--database-url`, `--nodes`).
    fn backend(&self) -> Backend {
        match &self.args.database_url {
            Some(url) => Backend::Postgres {
                url: url.clone(),
                nodes: self.args.nodes as usize,
            },
            None => Backend::Sqlite,
        }
    }

    /// Prints what the run will do and starts the receivers.
    pub(super) async fn start(args: BenchArgs) -> Result<Bench, BenchError> {
        let drive = Drive {
            connections: args.connections,
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(args.duration),
            size: args.body_size,
            epoch: Instant::now(),
        };
        let (c, size) = (drive.connections, drive.size);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let store = match &args.database_url {
            Some(_) => format!(
                "PostgreSQL, {} node{}",
                args.nodes,
                if args.nodes == 1 { "" } else { "s" }
            ),
            None => "SQLite".to_string(),
        };
        println!(
            "ferry bench: {cores} cores, {size}-byte events, {c} connections, {}s per phase after 1s warm-up; store: {store}",
            args.duration
        );
        let (receivers, stats) = start_receivers(3, drive.epoch).await?;
        Ok(Bench {
            args,
            drive,
            receivers,
            stats,
        })
    }

    /// Phases 1 and 2: the bare handler, closed loop, then at `--rate`. It is left running for
    /// the ingest phase's rounds.
    pub(super) async fn baseline(
        &self,
        report: &mut Report,
    ) -> Result<(Target, Baseline), BenchError> {
        eprintln!("phase 1/7: bare handler, closed loop");
        let bare = start_target(&["bench-bare".into()]).await?;
        let (max, cpu_us) = self.closed_loop(&bare).await;
        eprintln!("phase 2/7: bare handler, {} requests/s", self.args.rate);
        let fixed = self.drive.run(&bare.addrs, Some(self.args.rate)).await;
        if max.ok == 0 {
            return Err(BenchError::NoSuccess("bare"));
        }
        let rps = self.drive.per_second(max.ok);
        report.push(row("bare handler", "requests/s", rps, "", Some(1.0)));
        report.push(row(
            "bare handler",
            "CPU per request",
            cpu_us,
            "us",
            Some(1.0),
        ));
        report.percentiles(
            "bare handler",
            "latency {} at max load",
            &max.latencies_us,
            &max.latencies_us,
        );
        report.failed("bare", max.failed + fixed.failed);
        let baseline = Baseline {
            max,
            fixed,
            rps,
            cpu_us,
        };
        Ok((bare, baseline))
    }

    /// Phase 3: ingest only (no flow matches), in `--rounds` rounds of the bare handler, Ferry
    /// and the synced bare handler; the figures are the medians of the rounds. Returns Ferry's
    /// peak RSS.
    pub(super) async fn ingest(
        &self,
        bare: &Target,
        baseline: &Baseline,
        report: &mut Report,
    ) -> Result<Option<f64>, BenchError> {
        let data = &self.args.data;
        let ferry = start_ferry(
            &self.backend(),
            &data.join("ingest"),
            &config(&self.receivers, Shape::IngestOnly),
        )
        .await?;
        let synced = start_synced_bare(&data.join("synced-bare")).await?;
        let mut rounds: Vec<Round> = Vec::new();
        let mut latencies = Vec::new();
        let (mut acked, mut failed, mut synced_failed) = (0, 0, 0);
        for round in 0..self.args.rounds.max(1) {
            // The first round's baseline is the bare phase just run.
            let (bare_rps, bare_cpu_us) = if round == 0 {
                (baseline.rps, baseline.cpu_us)
            } else {
                eprintln!("phase 3/7: round {}: bare handler, closed loop", round + 1);
                let (load, cpu) = self.closed_loop(bare).await;
                (self.drive.per_second(load.ok), cpu)
            };
            eprintln!(
                "phase 3/7: round {}: ferry, ingest only (no flow matches)",
                round + 1
            );
            let (ingest, cpu_us) = self.closed_loop(&ferry).await;
            let rps = self.drive.per_second(ingest.ok);
            eprintln!(
                "phase 3/7: round {}: synced bare handler (append and fdatasync only)",
                round + 1
            );
            let synced_load = self.drive.run(&synced.addrs, None).await;
            synced_failed += synced_load.failed;
            let synced_rps = self.drive.per_second(synced_load.ok);
            eprintln!(
                "  round {}: bare {bare_rps:.0} requests/s, ingest {rps:.0} events/s, ratio {:.2}; synced bare {synced_rps:.0} requests/s, {:.2} of bare, ingest {:.2} of it; CPU {bare_cpu_us:.1} / {cpu_us:.1} us",
                round + 1,
                rps / bare_rps,
                synced_rps / bare_rps,
                rps / synced_rps,
            );
            rounds.push(Round {
                bare_rps,
                rps,
                synced_rps,
                bare_cpu_us,
                cpu_us,
            });
            latencies.extend(ingest.latencies_us);
            failed += ingest.failed;
            acked += ingest.acked;
        }
        let rss = ferry.peak_rss_mb();
        let storage = Storage::measure(&ferry, acked, 0).await;
        ferry.stop().await;
        synced.stop().await;
        latencies.sort_unstable();
        report.extend(medians(&rounds));
        report.extend(storage.rows("ingest only"));
        report.percentiles(
            "ingest only",
            "latency {} at max load",
            &latencies,
            &baseline.max.latencies_us,
        );
        report.failed("ingest", failed);
        report.failed("synced bare", synced_failed);
        Ok(rss)
    }

    /// Phase 4: a flow that only delivers, to 3 destinations, closed loop. Returns its events/s
    /// ingested.
    pub(super) async fn fan_out(
        &self,
        baseline: &Baseline,
        report: &mut Report,
    ) -> Result<f64, BenchError> {
        let shape = "fan-out to 3";
        eprintln!("phase 4/7: ferry, {shape}, closed loop");
        let dir = self.args.data.join("fanout");
        let ferry = start_ferry(
            &self.backend(),
            &dir,
            &config(&self.receivers, Shape::FanOut),
        )
        .await?;
        let run = self.deliveries_closed_loop(ferry).await;
        report.push(run.events_row(shape, baseline));
        run.add_to(report, shape, "fan-out", baseline);
        Ok(run.events_per_s)
    }

    /// The fan-out flow among `--flows` flows (the others each on an event type of its own,
    /// which the bench's events do not have): how long `ferry validate` and the start take,
    /// the memory, the time of 100 flows created through the API one after another, then the
    /// fan-out closed loop, whose events/s are compared with the fan-out phase's (one flow).
    pub(super) async fn many_flows(
        &self,
        baseline: &Baseline,
        one_flow: Option<f64>,
        report: &mut Report,
    ) -> Result<(), BenchError> {
        let shape = "fan-out among many flows";
        let n = self.args.flows.max(1);
        eprintln!("phase: ferry, fan-out to 3 among {n} flows");
        let yaml = many_flows_config(&self.receivers, n);
        let dir = self.args.data.join("many");
        let checked = self.args.data.join("many-validate.yaml");
        std::fs::create_dir_all(&self.args.data)?;
        std::fs::write(&checked, &yaml)?;
        let started = Instant::now();
        let validated = tokio::process::Command::new(std::env::current_exe()?)
            .arg("validate")
            .arg("--config")
            .arg(&checked)
            .stdout(std::process::Stdio::null())
            .status()
            .await?;
        let validate_s = started.elapsed().as_secs_f64();
        if !validated.success() {
            return Err(BenchError::Io(std::io::Error::other(format!(
                "ferry validate refused the config of {n} flows"
            ))));
        }
        let started = Instant::now();
        let ferry = start_ferry(&self.backend(), &dir, &yaml).await?;
        let start_s = started.elapsed().as_secs_f64();
        let (rss_started, peak_started) = (ferry.rss_mb(), ferry.peak_rss_mb());
        let creations = create_flows(&ferry, n, 100).await?;
        report.push(row(
            shape,
            format!("flows (+{} through the API)", creations.len()),
            n as f64,
            "",
            None,
        ));
        report.push(row(
            shape,
            "ferry validate",
            validate_s * 1000.0,
            "ms",
            None,
        ));
        report.push(row(
            shape,
            "start, until it answers",
            start_s * 1000.0,
            "ms",
            None,
        ));
        report.push(row(
            shape,
            "RSS after start",
            rss_started.unwrap_or(0.0),
            "MB",
            None,
        ));
        report.push(row(
            shape,
            "peak RSS during start",
            peak_started.unwrap_or(0.0),
            "MB",
            None,
        ));
        for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
            let at = ((creations.len() as f64 * p).ceil() as usize).clamp(1, creations.len()) - 1;
            report.push(row(
                shape,
                format!("API flow creation {name}"),
                creations[at] * 1000.0,
                "ms",
                None,
            ));
        }
        let run = self.deliveries_closed_loop(ferry).await;
        report.push(run.events_row(shape, baseline));
        if let Some(one) = one_flow {
            report.push(row(
                "many flows / one flow (fan-out phase)",
                "events/s ingested",
                run.events_per_s / one,
                "x",
                None,
            ));
        }
        run.add_to(report, shape, "many flows", baseline);
        Ok(())
    }

    /// Phase 5: a filter, a transform and a fan-out to 3 (the expressions run in the
    /// expression workers), closed loop; then the same with `--compare-with`'s build.
    pub(super) async fn flow(
        &self,
        baseline: &Baseline,
        report: &mut Report,
    ) -> Result<(), BenchError> {
        let shape = "filter, transform, fan-out to 3";
        eprintln!("phase 5/7: ferry, {shape}, closed loop");
        let yaml = config(&self.receivers, Shape::Expressions);
        let ferry = start_ferry(&self.backend(), &self.args.data.join("flow"), &yaml).await?;
        let ours = self.deliveries_closed_loop(ferry).await;
        ours.add_to(report, shape, "flow", baseline);
        let Some(other) = &self.args.compare_with else {
            return Ok(());
        };
        eprintln!("phase 5/7: {}, {shape}, closed loop", other.display());
        let dir = self.args.data.join("flow-other");
        let ferry = start_ferry_from(&self.backend(), other, &dir, &yaml).await?;
        let theirs = self.deliveries_closed_loop(ferry).await;
        let theirs_shape = "the same, --compare-with build";
        theirs.add_to(report, theirs_shape, "flow, --compare-with build", baseline);
        report.push(row(
            "this build / --compare-with build",
            "deliveries/s",
            ours.deliveries_per_s / theirs.deliveries_per_s,
            "x",
            None,
        ));
        Ok(())
    }

    /// Phase 6: the fan-out flow at `--rate` events/s: the latency of ingest, and from ingest
    /// to delivery.
    pub(super) async fn latency(
        &self,
        baseline: &Baseline,
        report: &mut Report,
    ) -> Result<(), BenchError> {
        let (rate, stats) = (self.args.rate, &self.stats);
        let (warmup, measure) = (self.drive.warmup, self.drive.measure);
        eprintln!("phase 6/7: ferry, fan-out to 3 at {rate} events/s");
        let ferry = start_ferry(
            &self.backend(),
            &self.args.data.join("latency"),
            &config(&self.receivers, Shape::FanOut),
        )
        .await?;
        stats.recording.store(false, Ordering::Relaxed);
        let recorder = {
            let stats = stats.clone();
            tokio::spawn(async move {
                tokio::time::sleep(warmup).await;
                stats
                    .latencies_us
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                stats.recording.store(true, Ordering::Relaxed);
                tokio::time::sleep(measure).await;
                stats.recording.store(false, Ordering::Relaxed);
            })
        };
        let fixed = self.drive.run(&ferry.addrs, Some(rate)).await;
        let _ = recorder.await;
        // Let the last deliveries of the window arrive before reading latencies.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = ferry.peak_rss_mb();
        ferry.stop().await;
        let mut e2e =
            std::mem::take(&mut *stats.latencies_us.lock().unwrap_or_else(|e| e.into_inner()));
        e2e.sort_unstable();
        report.percentiles(
            "fixed rate",
            "ingest {} at fixed rate",
            &fixed.latencies_us,
            &baseline.fixed.latencies_us,
        );
        report.percentiles(
            "fixed rate",
            "ingest-to-delivery {}",
            &e2e,
            &baseline.fixed.latencies_us,
        );
        report.peak_rss("fixed rate", rss);
        report.failed("fixed rate", fixed.failed);
        eprintln!(
            "fixed rate: {} events sent, {} deliveries timed in the window",
            fixed.ok,
            e2e.len()
        );
        Ok(())
    }

    /// Phase 7: the synced bare handler at `--rate`: the disk's own latency tail. A sync that
    /// stalls for tens of milliseconds (the host's doing) holds every acknowledgement of any
    /// durable store as long.
    pub(super) async fn synced_at_fixed_rate(
        &self,
        baseline: &Baseline,
        report: &mut Report,
    ) -> Result<(), BenchError> {
        let rate = self.args.rate;
        eprintln!("phase 7/7: synced bare handler (append and fdatasync only), {rate} requests/s");
        let synced = start_synced_bare(&self.args.data.join("synced-bare-fixed")).await?;
        let synced_fixed = self.drive.run(&synced.addrs, Some(rate)).await;
        synced.stop().await;
        report.percentiles(
            "synced bare handler",
            "latency {} at fixed rate",
            &synced_fixed.latencies_us,
            &baseline.fixed.latencies_us,
        );
        report.failed("synced bare at fixed rate", synced_fixed.failed);
        Ok(())
    }

    /// A closed-loop drive of `target`, and the CPU it used per successful request.
    async fn closed_loop(&self, target: &Target) -> (Load, f64) {
        let before = target.cpu_time();
        let load = self.drive.run(&target.addrs, None).await;
        let cpu = self
            .drive
            .cpu_per_request(before, target.cpu_time(), load.ok);
        (load, cpu)
    }

    /// Drives `ferry` as fast as it answers and counts what the receivers get in the measured
    /// window; once every event's run has ended, measures what it stored; stops `ferry` after.
    async fn deliveries_closed_loop(&self, ferry: Target) -> DeliveryRun {
        let stats = &self.stats;
        let (warmup, measure) = (self.drive.warmup, self.drive.measure);
        stats.count.store(0, Ordering::Relaxed);
        let recorder = {
            let stats = stats.clone();
            tokio::spawn(async move {
                tokio::time::sleep(warmup).await;
                stats.count.store(0, Ordering::Relaxed);
                stats.recording.store(true, Ordering::Relaxed);
                tokio::time::sleep(measure).await;
                stats.recording.store(false, Ordering::Relaxed);
                stats.count.load(Ordering::Relaxed)
            })
        };
        stats.recording.store(true, Ordering::Relaxed);
        let load = self.drive.run(&ferry.addrs, None).await;
        let delivered = recorder.await.unwrap_or(0);
        let rss = ferry.peak_rss_mb();
        let storage = Storage::measure(&ferry, load.acked, load.acked).await;
        ferry.stop().await;
        stats
            .latencies_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        DeliveryRun {
            events_per_s: self.drive.per_second(load.ok),
            deliveries_per_s: self.drive.per_second(delivered),
            failed: load.failed,
            rss,
            storage,
        }
    }
}

impl DeliveryRun {
    /// Its events/s ingested under `shape`, with the ratio to the bare handler.
    fn events_row(&self, shape: &'static str, baseline: &Baseline) -> Row {
        row(
            shape,
            "events/s ingested",
            self.events_per_s,
            "",
            Some(self.events_per_s / baseline.rps),
        )
    }

    /// Its deliveries/s and storage rows under `shape`, its peak RSS, and its failed requests
    /// under `phase`.
    fn add_to(
        &self,
        report: &mut Report,
        shape: &'static str,
        phase: &'static str,
        baseline: &Baseline,
    ) {
        report.push(row(
            shape,
            "deliveries/s",
            self.deliveries_per_s,
            "",
            Some(self.deliveries_per_s / baseline.rps),
        ));
        report.extend(self.storage.rows(shape));
        report.peak_rss(shape, self.rss);
        report.failed(phase, self.failed);
    }
}

/// The ingest phase's rows: the median over its rounds of each figure and of its ratio.
fn medians(rounds: &[Round]) -> Vec<Row> {
    let n = rounds.len();
    let over_rounds = |figure: fn(&Round) -> f64| median(rounds.iter().map(figure));
    let medians = [
        (
            "ingest only",
            "events/s",
            "",
            over_rounds(|r| r.rps),
            Some(over_rounds(|r| r.rps / r.bare_rps)),
        ),
        (
            "synced bare handler",
            "requests/s",
            "",
            over_rounds(|r| r.synced_rps),
            Some(over_rounds(|r| r.synced_rps / r.bare_rps)),
        ),
        (
            "ingest only",
            "events/s per synced bare request/s",
            "x",
            over_rounds(|r| r.rps / r.synced_rps),
            None,
        ),
        (
            "ingest only",
            "CPU per event",
            "us",
            over_rounds(|r| r.cpu_us),
            Some(over_rounds(|r| r.cpu_us / r.bare_cpu_us)),
        ),
    ];
    medians
        .into_iter()
        .map(|(shape, figure, unit, value, ratio)| {
            row(
                shape,
                format!("{figure} (median of {n} rounds)"),
                value,
                unit,
                ratio,
            )
        })
        .collect()
}

/// What the bench's flow does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// No flow matches the events.
    IngestOnly,
    /// Deliver to every receiver.
    FanOut,
    /// Filter, transform, then deliver to every receiver.
    Expressions,
}

/// The fan-out config with `n` flows: the fan-out flow first, then flows that each take an
/// event type of their own (declared), filter with an expression of their own and deliver to
/// the first receiver (issue 21's shape).
fn many_flows_config(receivers: &[SocketAddr], n: usize) -> String {
    let mut yaml = config(receivers, Shape::FanOut);
    let flows_at = yaml.find("flows:\n").unwrap_or(yaml.len());
    let mut types = String::from("event_types:\n");
    for i in 1..n + CREATED_FLOWS {
        types.push_str(&format!("  - {{ name: other.{i} }}\n"));
    }
    yaml.insert_str(flows_at, &types);
    for i in 1..n {
        yaml.push_str(&format!(
            "  - {{ id: other-{i}, on: {{ source: bench, event_types: [other.{i}] }}, steps: [ {{ filter: '.n > {i}' }}, {{ deliver: d0 }} ] }}\n"
        ));
    }
    yaml
}

/// Flows the `many` phase creates through the API, on event types the config declares.
const CREATED_FLOWS: usize = 100;

/// Creates `count` flows through `ferry`'s API, one after another; answers each one's time in
/// seconds, sorted.
async fn create_flows(
    ferry: &Target,
    existing: usize,
    count: usize,
) -> Result<Vec<f64>, BenchError> {
    // reqwest is built without a default TLS provider: the process installs one (once).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| BenchError::Io(std::io::Error::other(e)))?;
    let url = format!("http://{}/api/v1/flows", ferry.addr);
    let mut times = Vec::with_capacity(count);
    for i in existing..existing + count.min(CREATED_FLOWS) {
        let body = serde_json::json!({
            "id": format!("api-{i}"),
            "on": {"source": "bench", "event_types": [format!("other.{i}")]},
            "steps": [{"filter": format!(".m > {i}")}, {"deliver": "d0"}],
        });
        let started = Instant::now();
        let answer = client
            .post(&url)
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .map_err(|e| BenchError::Io(std::io::Error::other(e)))?;
        let status = answer.status();
        if !status.is_success() {
            let text = answer.text().await.unwrap_or_default();
            return Err(BenchError::Io(std::io::Error::other(format!(
                "creating flow api-{i} answered {status}: {text}"
            ))));
        }
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

fn config(receivers: &[SocketAddr], shape: Shape) -> String {
    let mut yaml = String::from(
        "settings: { allow_private_destinations: true }\nsources:\n  - { id: bench, kind: webhook, verify: { scheme: none } }\n  - { id: elsewhere, kind: webhook, verify: { scheme: none } }\n",
    );
    yaml.push_str("destinations:\n");
    for (i, r) in receivers.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{ id: d{i}, kind: http, url: \"http://{r}/\", concurrency: 64 }}\n"
        ));
    }
    let names: Vec<String> = (0..receivers.len()).map(|i| format!("d{i}")).collect();
    let source = if shape == Shape::IngestOnly {
        "elsewhere"
    } else {
        "bench"
    };
    // The transform keeps `sent_us`, which the receivers read for latency.
    let pure = if shape == Shape::Expressions {
        r#"{ filter: '.seq >= 0 and .type == "bench.event"' }, { transform: '{seq, sent_us, kind: .type, pad}' }, "#
    } else {
        ""
    };
    yaml.push_str(&format!(
        "flows:\n  - {{ id: fan-out, on: {{ source: {source} }}, steps: [ {pure}{{ deliver: [{}] }} ] }}\n",
        names.join(", ")
    ));
    yaml
}
