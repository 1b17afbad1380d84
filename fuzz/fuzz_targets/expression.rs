//! Fuzz target: `ferry::fuzzing::Expressions` (what it reads and checks is described there).
//! Programs run in expression workers started from the `ferry` binary named by `FERRY_BIN`
//! (e.g. `target/debug/ferry`).
#![no_main]

use ferry::engine::sandbox::WorkerCommand;
use ferry::fuzzing::Expressions;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static EXPRESSIONS: OnceLock<Expressions> = OnceLock::new();

fn expressions() -> &'static Expressions {
    EXPRESSIONS.get_or_init(|| {
        let Some(program) = std::env::var_os("FERRY_BIN") else {
            panic!("set FERRY_BIN to a built ferry binary (e.g. target/debug/ferry): programs run in its expression workers");
        };
        Expressions::new(WorkerCommand {
            program: program.into(),
            args: vec!["expr-worker".into()],
        })
    })
}

fuzz_target!(|data: &[u8]| expressions().run(data));
