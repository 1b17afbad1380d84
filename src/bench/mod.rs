//! `ferry bench`: measures Ferry on this machine against a bare HTTP handler in the same run,
//! and its ingest also against a synced bare handler (append and `fdatasync` only: the disk's
//! ceiling for anything that answers after a sync).
//! Ferry and the bare handlers each run as a child process (so their peak RSS is their own);
//! the load generator and the receivers run in this process, on loopback only. Every figure
//! is reported with its ratio to the bare handler's, since these machines are shared and noisy.
//! Each Ferry phase has a data directory of its own, and reports what it left on disk and what
//! its commits wrote to the WAL per event acknowledged.
//!
//! Here: the options and [`run`], which runs the phases in order. `phases.rs` holds each phase,
//! `report.rs` what they measured and its table; `load.rs` is the load generator,
//! `receivers.rs` the destinations Ferry delivers to, `target.rs` the child processes, `bare.rs`
//! the bare handlers' code, and `storage.rs` what a phase's Ferry stored. `console.rs` is the
//! `console` phase, which fills a store and times the web console's pages on it.

mod bare;
mod console;
mod load;
mod phases;
mod receivers;
mod report;
mod storage;
mod target;

pub use bare::bare_handler;

use phases::Bench;
use report::Report;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Seconds of measured load per phase (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Events per second in the fixed-rate latency phase.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Size of each event body in bytes.
    #[arg(long, default_value_t = 1024)]
    pub body_size: usize,
    /// Where the Ferry under test keeps its data (a fresh folder per phase is made inside).
    #[arg(long, default_value = "ferry-bench-data")]
    pub data: PathBuf,
    /// Keep the data folder after the run (each phase's `ferry.db` is in `PHASE/data/`), to
    /// look at where the bytes went; by default it is removed.
    #[arg(long)]
    pub keep_data: bool,
    /// Rounds of the ingest-only phase. Each round drives the bare handler, then Ferry, back to
    /// back, and takes their ratio; the median of the rounds' ratios is reported, so a host
    /// that speeds up or slows down between phases moves both sides of a ratio alike.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Flows in the `many` phase's config: the fan-out flow among others that each take an
    /// event type of their own.
    #[arg(long, default_value_t = 10_000)]
    pub flows: usize,
    /// Which Ferry phases to run (the bare handler always runs: it is the baseline).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,fanout,flow,many,latency"
    )]
    pub phases: Vec<Phase>,
    /// Events the `console` phase puts in its store before timing the console's pages.
    #[arg(long, default_value_t = 1_000_000)]
    pub console_events: u64,
    /// Another Ferry binary (an earlier build) to drive in the `flow` phase too, right after
    /// this one, so that the two are compared in the same run.
    #[arg(long)]
    pub compare_with: Option<PathBuf>,
    /// Run each phase's Ferry on this PostgreSQL database (cluster mode), in a fresh schema
    /// per phase (`ferry_bench_<phase>`, dropped after it), instead of SQLite.
    #[arg(long)]
    pub database_url: Option<String>,
    /// With `--database-url`: how many `ferry serve` nodes each phase runs; the load is
    /// spread over them.
    #[arg(long, default_value_t = 1, requires = "database_url", value_parser = clap::value_parser!(u64).range(1..=16))]
    pub nodes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Ingest only: no flow matches.
    Ingest,
    /// A flow that only delivers, to 3 destinations.
    Fanout,
    /// A flow with a filter, a transform and a fan-out to 3: its expressions run in the
    /// expression workers.
    Flow,
    /// The fan-out flow at a fixed rate, for latency.
    Latency,
    /// The fan-out flow among `--flows` flows: the time to validate and to start, memory, the
    /// ingest rate as a ratio to the fan-out phase's (one flow), and 100 flows created through
    /// the API.
    Many,
    /// The web console's pages, each asked for 200 times, on a store of `--console-events`
    /// events (a million by default) filled through the HTTP ingest first. Not in the default
    /// list: the fill takes minutes and gigabytes (about 3.5 KB an event on disk).
    Console,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the target at {0} did not become ready")]
    NotReady(SocketAddr),
    #[error("phase `{0}` had no successful request")]
    NoSuccess(&'static str),
}

/// Runs `ferry bench` on a runtime of its own and prints the report.
pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

/// The phases in order, then the report; the data folder is removed unless `--keep-data`.
async fn run_async(args: BenchArgs) -> Result<(), BenchError> {
    let bench = Bench::start(args).await?;
    let phases = &bench.args.phases;
    let mut report = Report::default();
    let (bare, baseline) = bench.baseline(&mut report).await?;
    let ingest_rss = if phases.contains(&Phase::Ingest) {
        Some(bench.ingest(&bare, &baseline, &mut report).await?)
    } else {
        None
    };
    // The bare handler serves the ingest rounds too: its peak RSS is read after them, and
    // listed before Ferry's.
    report.peak_rss("bare handler", bare.peak_rss_mb());
    bare.stop().await;
    if let Some(rss) = ingest_rss {
        report.peak_rss("ingest only", rss);
    }
    let one_flow = if phases.contains(&Phase::Fanout) {
        Some(bench.fan_out(&baseline, &mut report).await?)
    } else {
        None
    };
    if phases.contains(&Phase::Flow) {
        bench.flow(&baseline, &mut report).await?;
    }
    if phases.contains(&Phase::Many) {
        bench.many_flows(&baseline, one_flow, &mut report).await?;
    }
    if phases.contains(&Phase::Latency) {
        bench.latency(&baseline, &mut report).await?;
        bench.synced_at_fixed_rate(&baseline, &mut report).await?;
    }
    if phases.contains(&Phase::Console) {
        let args = &bench.args;
        console::run(
            &args.data.join("console"),
            args.console_events,
            args.connections,
            args.body_size,
            &mut report,
        )
        .await?;
    }
    report.print();
    let data = &bench.args.data;
    if bench.args.keep_data {
        println!("data kept in {}", data.display());
    } else {
        let _ = std::fs::remove_dir_all(data);
    }
    Ok(())
}
