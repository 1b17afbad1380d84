// The modules of the API suite that run on either store backend: included by `main.rs` (the
// `api` test binary, SQLite unless `FERRY_TEST_BACKEND=postgres`) and by `on_postgres.rs` (the
// `api_on_postgres` binary, always PostgreSQL), so that `cargo test` runs them on both.

mod helpers;
mod postgres;
mod tmpfs;
mod alerts;
mod bench;
mod browser;
mod cli;
mod client;
mod config;
mod console;
mod crash;
mod disk_full;
mod egress;
mod events;
mod fanout;
mod flows;
mod fuzz_corpus;
mod hostile;
mod idempotency;
mod layers;
mod limits;
mod many;
mod openapi;
mod overload;
mod polling;
mod retention;
mod retries;
mod schedules;
mod secrets;
mod strict_input;
mod tokens;
mod validation;
