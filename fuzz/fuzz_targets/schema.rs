//! Fuzz target: `ferry::fuzzing::schema` (what it reads and checks is described there).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry::fuzzing::schema(data));
