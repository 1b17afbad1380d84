//! The console in a real browser: `tests/browser/console.py` drives Debian's chromium with
//! Playwright for Python against `ferry serve` (this build's binary) and keeps screenshots of
//! the pages in `docs/screenshots/`. It needs `pip install playwright` and the `chromium`
//! package, which `.ci/run` installs.

#[test]
fn the_console_works_in_a_real_browser() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("python3")
        .arg(format!("{root}/tests/browser/console.py"))
        .arg(env!("CARGO_BIN_EXE_ferry"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the browser test failed (it needs `pip install playwright` and Debian's `chromium`, as .ci/run installs them):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
