//! Ferry's integration tests: one binary, each test with its own server on a random port,
//! its own SQLite directory and real HTTP receivers.

mod helpers;

mod cli;
mod crash;
mod fanout;
mod idempotency;
mod overload;
mod retries;
mod validation;
