//! Ferry's integration tests: one binary, each test with its own server on a random port,
//! its own store (a SQLite directory, or with `FERRY_TEST_BACKEND=postgres` a PostgreSQL
//! schema: see `helpers.rs`) and real HTTP receivers.

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
mod leases;
mod limits;
mod many;
mod migrate;
mod openapi;
mod overload;
mod pg_cluster;
mod pg_ingest;
mod pg_nodes;
mod pg_reads;
mod pg_writes;
mod retention;
mod retries;
mod secrets;
mod strict_input;
mod tokens;
mod validation;
