//! The PostgreSQL schema as an ordered list of migrations, embedded in the binary, and
//! [`migrate`], which applies the missing ones. Everything happens in one transaction that
//! first takes an advisory lock on a key derived from the schema in use, so nodes that start
//! together migrate once: the first applies, the others wait for its commit and find nothing
//! left to do. A database migrated by a newer Ferry (a version this binary does not know) is
//! refused: an older binary must not run on a newer schema.

use super::PgError;

/// One step of the schema: applied once, in order, and recorded in `ferry_migrations`.
#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// A migration [`migrate`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: i32,
    pub name: &'static str,
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The migrations applied now, in order; empty when the schema was up to date.
    pub applied: Vec<Applied>,
    /// The schema's version afterwards: [`LATEST_VERSION`].
    pub version: i32,
}

/// Every migration, by version from 1 up, without gaps. A new one is added at the end;
/// one that has shipped is never changed.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "the whole schema",
        sql: SCHEMA_1,
    },
    Migration {
        version: 2,
        name: "lease tokens",
        sql: LEASE_TOKENS_2,
    },
    Migration {
        version: 3,
        name: "node numbers",
        sql: NODE_NUMBERS_3,
    },
    Migration {
        version: 4,
        name: "held delivery jobs",
        sql: HELD_JOBS_4,
    },
    Migration {
        version: 5,
        name: "polling sources' states",
        sql: SOURCE_STATES_5,
    },
];

/// The version of the last migration: the one this binary brings a database to.
pub const LATEST_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The record of applied migrations. Created outside the migrations (they are recorded in
/// it), under the same lock.
const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS ferry_migrations (
    version INT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// Brings the schema the connection uses (`current_schema()`, the first schema of its
/// `search_path` that exists) to [`LATEST_VERSION`], in one transaction: the advisory lock
/// of this schema, `ferry_migrations` made if missing, the versions recorded there read,
/// then each missing migration applied and recorded in order. Any failure rolls the whole
/// of it back: the schema is as it was, and the next start tries again.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Migrated, PgError> {
    let tx = client.transaction().await?;
    match apply_missing(&tx).await {
        Ok(done) => {
            tx.commit().await?;
            for m in &done {
                tracing::info!(
                    version = m.version,
                    "applied PostgreSQL migration {} ({})",
                    m.version,
                    m.name
                );
            }
            Ok(Migrated {
                applied: done,
                version: LATEST_VERSION,
            })
        }
        Err(e) => {
            // At once, not when the dropped transaction's rollback gets sent: until then the
            // connection would hold the lock, and every other node would wait for it.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// The body of [`migrate`]'s transaction: the lock, then the missing migrations, applied
/// and recorded. Answers those it applied.
async fn apply_missing(tx: &tokio_postgres::Transaction<'_>) -> Result<Vec<Applied>, PgError> {
    let schema: Option<String> = tx.query_one("SELECT current_schema()", &[]).await?.get(0);
    let schema = schema.ok_or(PgError::NoSchema)?;
    // Held until the commit or rollback; a second migrator of this schema waits here, and
    // reads what the first committed (each statement of a READ COMMITTED transaction sees
    // what was committed before it began).
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('ferry.migrate.' || $1::text))",
        &[&schema],
    )
    .await?;
    // Without the notice `IF NOT EXISTS` sends each time the table is there.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    tx.batch_execute(MIGRATIONS_TABLE).await?;
    // try_get: a `ferry_migrations` made by hand, with other types, is an error, not a panic.
    let applied: Vec<i32> = tx
        .query("SELECT version FROM ferry_migrations ORDER BY version", &[])
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    if let Some(&found) = applied.last()
        && found > LATEST_VERSION
    {
        return Err(PgError::NewerSchema {
            found,
            known: LATEST_VERSION,
        });
    }
    let mut done = Vec::new();
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        let failed = |e: tokio_postgres::Error| PgError::Migration {
            version: migration.version,
            name: migration.name,
            reason: super::describe(&e),
        };
        tx.batch_execute(migration.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO ferry_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(failed)?;
        done.push(Applied {
            version: migration.version,
            name: migration.name,
        });
    }
    Ok(done)
}

/// Version 1: every table and index of the SQLite store (`store/schema.rs`, version 4), with
/// the same names so the SQL of both backends reads alike, and the tables of cluster mode.
///
/// Types: every SQLite INTEGER is BIGINT (the Rust side reads `i64` on both backends, and
/// tokio-postgres does not widen an INT4 to `i64`), so times stay milliseconds since the
/// epoch; BLOB is BYTEA; TEXT is TEXT, JSON included (kept as the bytes written, as SQLite
/// keeps them, not re-encoded as JSONB). Every TEXT column is `COLLATE "C"`: byte order, as
/// SQLite compares, so ids sort and page the same whatever the database's locale (and "C"
/// indexes compare faster). A SQLite rowid whose order the code relies on (`events.seq`,
/// `attempts.id`, `alert_history.id`, `rejections.id`) is an identity column; note that
/// identity values are handed out at insert, not at commit, so a transaction may commit a
/// lower value after another committed a higher one. SQLite's `WITHOUT ROWID` has no
/// counterpart: every table here is a heap with its primary key index.
///
/// Left out: `store_probe`, the row the SQLite writer rewrites to find out whether the disk
/// takes writes again after a failed write (SQLite's mechanics, not data).
const SCHEMA_1: &str = r#"
-- Events as received. `seq` is the order of arrival the reads page by.
CREATE TABLE events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT COLLATE "C" NOT NULL UNIQUE,
    source TEXT COLLATE "C" NOT NULL,
    event_type TEXT COLLATE "C" NOT NULL,
    idempotency_key TEXT COLLATE "C",
    received_at BIGINT NOT NULL,
    headers TEXT COLLATE "C" NOT NULL,
    payload BYTEA NOT NULL,
    payload_expired_at BIGINT
);
CREATE UNIQUE INDEX events_idempotency ON events(source, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- Bodies made by a run's steps, each stored once and referenced by id. The ids are handed
-- out before the write that stores them and never reused: each start of a node takes them
-- from a range of its own (its number from `ferry_node_numbers` times 2^40, version 3), so
-- every node's are unique, and they are inserted as given (BY DEFAULT, not ALWAYS).
CREATE TABLE bodies (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    event_seq BIGINT NOT NULL,
    data BYTEA NOT NULL
);
CREATE INDEX bodies_event ON bodies(event_seq);

CREATE TABLE runs (
    id TEXT COLLATE "C" PRIMARY KEY,
    event_id TEXT COLLATE "C" NOT NULL,
    flow_id TEXT COLLATE "C" NOT NULL,
    flow_version TEXT COLLATE "C" NOT NULL,
    status TEXT COLLATE "C" NOT NULL,
    pc BIGINT NOT NULL,
    resume_pc BIGINT,
    next_at BIGINT,
    step_attempts BIGINT NOT NULL DEFAULT 0,
    pending BIGINT NOT NULL DEFAULT 0,
    dead BIGINT NOT NULL DEFAULT 0,
    context TEXT COLLATE "C",
    steps TEXT COLLATE "C" NOT NULL,
    error TEXT COLLATE "C",
    failed_on TEXT COLLATE "C",
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    payload_body BIGINT
);
CREATE INDEX runs_event ON runs(event_id);
CREATE INDEX runs_due ON runs(next_at) WHERE status = 'running';
CREATE INDEX runs_failed ON runs(id) WHERE status = 'failed' AND failed_on = 'step';

CREATE TABLE deliveries (
    id TEXT COLLATE "C" PRIMARY KEY,
    event_id TEXT COLLATE "C" NOT NULL,
    run_id TEXT COLLATE "C" NOT NULL,
    destination_id TEXT COLLATE "C" NOT NULL,
    status TEXT COLLATE "C" NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    round_attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_error TEXT COLLATE "C",
    body_id BIGINT
);
CREATE INDEX deliveries_event ON deliveries(event_id);
CREATE INDEX deliveries_due ON deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_dead ON deliveries(id) WHERE status = 'dead';
CREATE INDEX deliveries_dead_destination ON deliveries(destination_id, status) WHERE status = 'dead';

-- As in SQLite, plus who made the attempt (`node`, a `ferry_nodes` id) and under which lease
-- (`lease_token`, the claim's token in `delivery_jobs` or `run_jobs`): what shows that no job
-- was attempted by two nodes within one lease.
CREATE TABLE attempts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id TEXT COLLATE "C" NOT NULL,
    destination_id TEXT COLLATE "C",
    attempt BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    status_code BIGINT,
    response_headers TEXT COLLATE "C",
    response_body BYTEA,
    error TEXT COLLATE "C",
    outcome TEXT COLLATE "C" NOT NULL,
    node TEXT COLLATE "C",
    lease_token BIGINT
);
CREATE INDEX attempts_delivery ON attempts(delivery_id);
CREATE INDEX attempts_destination ON attempts(destination_id, started_at) WHERE destination_id IS NOT NULL;

CREATE TABLE paused_destinations (
    destination_id TEXT COLLATE "C" PRIMARY KEY,
    paused_by TEXT COLLATE "C" NOT NULL,
    reason TEXT COLLATE "C" NOT NULL,
    since BIGINT NOT NULL
);

CREATE TABLE config_objects (
    kind TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    spec TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);

CREATE TABLE schema_versions (
    event_type TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    schema TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (event_type, version)
);

CREATE TABLE api_tokens (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    scope TEXT COLLATE "C" NOT NULL,
    hash BYTEA NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE alert_states (
    alert_id TEXT COLLATE "C" PRIMARY KEY,
    firing BIGINT NOT NULL,
    since BIGINT NOT NULL,
    message TEXT COLLATE "C" NOT NULL,
    subject TEXT COLLATE "C" NOT NULL,
    last_notice_at BIGINT,
    notified BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE alert_history (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id TEXT COLLATE "C" NOT NULL,
    at BIGINT NOT NULL,
    firing BIGINT NOT NULL,
    subject TEXT COLLATE "C" NOT NULL,
    message TEXT COLLATE "C" NOT NULL,
    notices TEXT COLLATE "C" NOT NULL
);
CREATE INDEX alert_history_rule ON alert_history(alert_id, id);

CREATE TABLE rejections (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source TEXT COLLATE "C" NOT NULL,
    received_at BIGINT NOT NULL,
    status BIGINT NOT NULL,
    error TEXT COLLATE "C" NOT NULL,
    reason TEXT COLLATE "C" NOT NULL,
    body BYTEA NOT NULL
);

-- Cluster mode. The hot tables of pending work: one row per pending delivery (or run due for
-- the run worker), deleted when it succeeds or is dead (or the run stops waiting for the run
-- worker), so they stay small however large `deliveries` and `runs` grow, and the
-- `SKIP LOCKED` scans of the claims stay short. `due_at` is Ferry's clock (ms since the
-- epoch), `lease_until` the database's (ms, from now() at the claim: nodes' clocks may
-- disagree, the database's is one), NULL when not leased. `lease_token` is fresh for each
-- claim, and every later change of the job (renew, complete, retry, dead-letter, release)
-- names it, so a worker whose lease was taken over changes nothing. `leased_by` is the node.
--
-- fillfactor 70: a claim, a renewal and a release change only the lease columns, which no
-- index covers, so with room left on the page PostgreSQL updates the row in place (a HOT
-- update: no new index entries, and the old version pruned without a vacuum). At the
-- default 100 a full page sends every such update to another page, with an entry in each
-- index. The tables are small, so the room costs little.
CREATE TABLE delivery_jobs (
    delivery_id TEXT COLLATE "C" PRIMARY KEY,
    destination_id TEXT COLLATE "C" NOT NULL,
    due_at BIGINT NOT NULL,
    lease_until BIGINT,
    lease_token BIGINT,
    leased_by TEXT COLLATE "C"
) WITH (fillfactor = 70);
CREATE INDEX delivery_jobs_due ON delivery_jobs(due_at);

CREATE TABLE run_jobs (
    run_id TEXT COLLATE "C" PRIMARY KEY,
    due_at BIGINT NOT NULL,
    lease_until BIGINT,
    lease_token BIGINT,
    leased_by TEXT COLLATE "C"
) WITH (fillfactor = 70);
CREATE INDEX run_jobs_due ON run_jobs(due_at);

-- The nodes of a cluster, for the console and operators to list: each node writes its row
-- when it starts and `seen_at` while it runs (ms, the node's clock).
CREATE TABLE ferry_nodes (
    node_id TEXT COLLATE "C" PRIMARY KEY,
    started_at BIGINT,
    seen_at BIGINT
);
"#;

/// Version 2: the sequence every claim takes its lease token from, so that a token is never
/// given twice, whichever node claims.
const LEASE_TOKENS_2: &str = r#"
CREATE SEQUENCE ferry_lease_tokens AS BIGINT;
CREATE INDEX delivery_jobs_lease ON delivery_jobs(lease_token) WHERE lease_token IS NOT NULL;
"#;

/// Version 3: each start of a node takes a number, which prefixes the ids of the bodies it
/// makes (they are handed out in memory before the write that stores them, so two nodes must
/// never draw from one range).
const NODE_NUMBERS_3: &str = r#"
CREATE SEQUENCE ferry_node_numbers AS BIGINT MINVALUE 1;
ALTER TABLE ferry_nodes ADD COLUMN number BIGINT;
"#;

/// A job held by its destination (paused, or its circuit open) rather than waiting for a
/// retry: a resume makes the held ones due at once, and the others keep their times.
const HELD_JOBS_4: &str = r#"
ALTER TABLE delivery_jobs ADD COLUMN held BOOLEAN NOT NULL DEFAULT false;
"#;

/// What a polling source keeps between polls (its cursor, the last ETag), as JSON.
const SOURCE_STATES_5: &str = r#"
CREATE TABLE source_states (
    source TEXT COLLATE "C" PRIMARY KEY,
    state TEXT COLLATE "C" NOT NULL,
    updated_at BIGINT NOT NULL
);
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps_and_the_last_is_the_latest() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(m.version).ok(), Some(i + 1), "{}", m.name);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(LATEST_VERSION));
    }
}
