//! Ferry's integration tests: one binary, each test with its own server on a random port,
//! its own store (a SQLite directory, or with `FERRY_TEST_BACKEND=postgres` a PostgreSQL
//! schema: see `helpers.rs`) and real HTTP receivers. The suite's modules (`suite.rs`) run
//! again on PostgreSQL in the `api_on_postgres` binary (`on_postgres.rs`); the modules below
//! test the PostgreSQL backend itself and run here only.

/// Whether this binary runs every app on PostgreSQL whatever `FERRY_TEST_BACKEND` says.
const ON_POSTGRES: bool = false;

include!("suite.rs");

mod leases;
mod migrate;
mod pg_cluster;
mod pg_ingest;
mod pg_nodes;
mod pg_reads;
mod pg_writes;
mod providers;
