//! The fuzz targets' seed corpora (`fuzz/corpus/<target>/`) and every crash they found
//! (`fuzz/regressions/<target>/`), replayed as ordinary tests through the same
//! `ferry::fuzzing` entry points the targets call: no fuzzer needed.

use crate::helpers::expression_worker;
use ferry::fuzzing;
use std::path::PathBuf;

/// Every input file of `target`: its seeds, then its regressions.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        let mut these: Vec<PathBuf> = dir.map(|entry| entry.unwrap().path()).collect();
        these.sort();
        files.extend(these);
    }
    files
}

/// Runs every input of `target` through `run`; a failure names the file.
fn replay(target: &str, run: impl Fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for `{target}`");
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data)));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{}: {message}", path.display());
        }
    }
}

#[test]
fn expression_corpus() {
    let expressions = fuzzing::Expressions::new(expression_worker());
    replay("expression", |data| expressions.run(data));
}

/// The targets that need no expression worker; a failure names the file, and so the target.
#[test]
fn ingest_config_signatures_and_schema_corpora() {
    type Target = (&'static str, fn(&[u8]));
    let targets: [Target; 4] = [
        ("ingest", fuzzing::ingest),
        ("config", fuzzing::config),
        ("signatures", fuzzing::signatures),
        ("schema", fuzzing::schema),
    ];
    for (target, run) in targets {
        replay(target, run);
    }
}
