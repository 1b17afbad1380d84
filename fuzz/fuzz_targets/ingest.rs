//! Fuzz target: `ferry::fuzzing::ingest` (what it reads and checks is described there).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry::fuzzing::ingest(data));
