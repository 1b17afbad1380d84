//! Ferry's integration tests: one binary, each test with its own server on a random port,
//! its own store (a SQLite directory, or with `FERRY_TEST_BACKEND=postgres` a PostgreSQL
//! schema: see `helpers.rs`) and real HTTP receivers. The suite's modules (`suite.rs`) run
//! again on PostgreSQL in the `api_on_postgres` binary (`on_postgres.rs`); the modules below
//! run here only: those that test the PostgreSQL backend itself, and those of ingest's checks
//! that no store changes (CloudEvents, the providers' signatures).

/// Whether this binary runs every app on PostgreSQL whatever `FERRY_TEST_BACKEND` says.
const ON_POSTGRES: bool = false;

include!("suite.rs");

mod cloudevents;
mod leases;
mod migrate;
mod pg_cluster;
mod pg_ingest;
mod pg_nodes;
mod pg_reads;
mod pg_writes;
mod providers;
mod sources_hostile;
