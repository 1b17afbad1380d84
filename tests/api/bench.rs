//! `ferry bench` on a very short run: every Ferry phase that stores events reports its bytes on
//! disk and its WAL bytes written per event, and the figures are those of 1 KiB events stored.

/// The value of the table row of `shape` whose figure starts with `figure`, in bytes.
fn bytes_of(table: &str, shape: &str, figure: &str) -> f64 {
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("| {shape} | {figure}")))
        .unwrap_or_else(|| panic!("no row `{shape} | {figure}` in:\n{table}"));
    let value = row.split(" | ").nth(2).unwrap_or_default();
    value
        .strip_suffix(" B")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not a number of bytes: {row}"))
}

#[test]
fn the_bench_reports_bytes_on_disk_and_wal_bytes_per_event_for_each_phase() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "bench",
            "--duration",
            "1",
            "--connections",
            "4",
            "--rounds",
            "1",
        ])
        .args(["--phases", "ingest,fanout,flow", "--data"])
        .arg(dir.path().join("bench"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for shape in [
        "ingest only",
        "fan-out to 3",
        "filter, transform, fan-out to 3",
    ] {
        let on_disk = bytes_of(&stdout, shape, "bytes on disk per event (ferry.db + WAL)");
        let wal = bytes_of(&stdout, shape, "WAL bytes written per event");
        // A 1 KiB event is stored whole, and every commit writes whole 4 KiB pages.
        for (figure, bytes) in [("on disk", on_disk), ("WAL written", wal)] {
            assert!(
                bytes > 1_000.0 && bytes < 10_000_000.0,
                "{shape}: {figure} {bytes} B per event\n{stdout}"
            );
        }
    }
    // The data folder is removed after the run.
    assert!(!dir.path().join("bench").exists());
}
