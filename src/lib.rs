//! Ferry: a self-hosted integration engine. The modules follow the path of an event:
//! `ingest` (receive, verify, validate; `json` is the strict JSON it accepts) → `engine` (flows decide what happens) → `store`
//! (commit) → `deliver` (attempts, retries, dead letters); around them `api`, `config`,
//! `app` (wiring), `cluster` (a node's heartbeat and following the other nodes' changes), `server` (connections: their cap and timeouts), `memory` (byte budgets), `retention` (the pruner),
//! `secrets` (which fields are secret, sealing them at rest, the key), `cli` (the commands:
//! their options, what each does and prints), `demo` and `bench`; `fuzzing` holds the fuzz
//! targets' entry points.
//! See ARCHITECTURE.md.

pub mod alerts;
pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod console;
pub mod deliver;
pub mod demo;
pub mod egress;
pub mod engine;
pub mod fuzzing;
pub mod ids;
pub mod ingest;
pub mod json;
pub mod memory;
pub mod retention;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
