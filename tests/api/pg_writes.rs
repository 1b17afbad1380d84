//! The PostgreSQL store's writes besides ingest and leased attempts, on a real PostgreSQL, each
//! beside the SQLite store doing the same: every scenario runs on both, and both must answer
//! the same and leave the same rows (read from PostgreSQL and from `ferry.db` with the same
//! SQL). Cluster mode's hot tables are checked too: a delivery made pending gets its job, due
//! at once and leased to nobody; a run made `running` gets its run job, which goes when it
//! stops running. Hostile inputs (a 1 MB text, a NUL byte, which PostgreSQL refuses, bytes that
//! are not UTF-8 made lossy, extreme times) get clear errors, and the store answers afterwards.

use crate::postgres::TestSchema;
use bytes::Bytes;
use ferry::clock::Millis;
use ferry::store::postgres::{Fenced, Ingest, Lease, PgOptions, PgStore};
use ferry::store::{
    AlertChange, AlertState, AttemptNext, Body, ConfigChange, DeliveryJob, NewAttempt, NewDelivery,
    NewEvent, NewRun, NewStepAttempt, NewToken, NoticeSent, Pause, PruneCutoffs, PruneReport,
    PruneScope, Rejection, ReplayOutcome, Resealed, RunReplay, RunSave, Settled, Store, StoreError,
    StoreOptions,
};
use std::time::Duration;

const LEASE_MS: i64 = 30_000;
const NODE: &str = "node-a";
const MB: usize = 1 << 20;

/// A value of a row, as both backends give it.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

type Rows = Vec<Vec<Val>>;

fn int(v: i64) -> Val {
    Val::Int(v)
}

fn text(v: &str) -> Val {
    Val::Text(v.to_string())
}

/// What each test compares between the backends, table by table (without the ids PostgreSQL
/// hands out from sequences, which a refused insert uses up and SQLite does not).
const TABLES: &[&str] = &[
    "SELECT seq, id, source, event_type, idempotency_key, received_at, headers, payload, payload_expired_at FROM events ORDER BY seq",
    "SELECT id, event_seq, data FROM bodies ORDER BY id",
    "SELECT id, event_id, flow_id, flow_version, status, pc, resume_pc, next_at, step_attempts, pending, dead, context, steps, error, failed_on, created_at, updated_at, payload_body FROM runs ORDER BY id",
    "SELECT id, event_id, run_id, destination_id, status, attempts, round_attempts, next_attempt_at, created_at, updated_at, last_error, body_id FROM deliveries ORDER BY id",
    "SELECT delivery_id, attempt, destination_id, started_at, duration_ms, status_code, response_headers, response_body, error, outcome FROM attempts ORDER BY delivery_id, attempt",
    "SELECT destination_id, paused_by, reason, since FROM paused_destinations ORDER BY destination_id",
    "SELECT kind, id, spec, created_at, updated_at FROM config_objects ORDER BY kind, id",
    "SELECT event_type, version, schema, created_at FROM schema_versions ORDER BY event_type, version",
    "SELECT id, name, scope, hash, created_at, revoked_at FROM api_tokens ORDER BY id",
    "SELECT alert_id, firing, since, message, subject, last_notice_at, notified FROM alert_states ORDER BY alert_id",
    "SELECT alert_id, at, firing, subject, message, notices FROM alert_history ORDER BY alert_id, id",
    "SELECT source, received_at, status, error, reason, body FROM rejections ORDER BY id",
];

/// The two stores of a test: PostgreSQL in a schema of its own, SQLite in a directory of its
/// own.
struct Both {
    schema: TestSchema,
    pg: PgStore,
    sqlite: Store,
    dir: tempfile::TempDir,
}

impl Both {
    async fn new() -> Both {
        Both::with(StoreOptions::default()).await
    }

    async fn with(options: StoreOptions) -> Both {
        let schema = TestSchema::create().await;
        let pg = PgStore::connect(
            &schema.url,
            PgOptions {
                pool_size: 4,
                ..PgOptions::default()
            },
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Store::open(dir.path(), options, Default::default()).unwrap();
        Both {
            schema,
            pg,
            sqlite,
            dir,
        }
    }

    /// Another node on the same PostgreSQL schema.
    async fn other_node(&self) -> PgStore {
        PgStore::connect(
            &self.schema.url,
            PgOptions {
                pool_size: 4,
                ..PgOptions::default()
            },
        )
        .await
        .unwrap()
    }

    fn sqlite_rows(&self, sql: &str) -> Rows {
        let conn = rusqlite::Connection::open_with_flags(
            self.dir.path().join("ferry.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        let columns = stmt.column_count();
        stmt.query_map([], |row| {
            (0..columns)
                .map(|i| {
                    use rusqlite::types::ValueRef;
                    Ok(match row.get_ref(i)? {
                        ValueRef::Null => Val::Null,
                        ValueRef::Integer(v) => Val::Int(v),
                        ValueRef::Text(t) => Val::Text(String::from_utf8(t.to_vec()).unwrap()),
                        ValueRef::Blob(b) => Val::Bytes(b.to_vec()),
                        ValueRef::Real(r) => panic!("a REAL ({r}) in {sql}"),
                    })
                })
                .collect()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    async fn pg_rows(&self, sql: &str) -> Rows {
        use tokio_postgres::types::Type;
        let rows = self.schema.client().await.query(sql, &[]).await.unwrap();
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        let t = row.columns()[i].type_();
                        let v = if *t == Type::INT8 {
                            row.get::<_, Option<i64>>(i).map(Val::Int)
                        } else if *t == Type::INT4 {
                            row.get::<_, Option<i32>>(i).map(|v| Val::Int(v.into()))
                        } else if *t == Type::BOOL {
                            row.get::<_, Option<bool>>(i).map(|v| Val::Int(v.into()))
                        } else if *t == Type::TEXT {
                            row.get::<_, Option<String>>(i).map(Val::Text)
                        } else if *t == Type::BYTEA {
                            row.get::<_, Option<Vec<u8>>>(i).map(Val::Bytes)
                        } else {
                            panic!("column {i} of {sql} is {t}")
                        };
                        v.unwrap_or(Val::Null)
                    })
                    .collect()
            })
            .collect()
    }

    /// The rows `sql` reads, the same on both backends.
    async fn same(&self, sql: &str) -> Rows {
        let (sqlite, pg) = (self.sqlite_rows(sql), self.pg_rows(sql).await);
        assert_eq!(sqlite, pg, "SQLite, then PostgreSQL: {sql}");
        pg
    }

    /// Every table the same on both backends.
    async fn same_everywhere(&self) {
        for sql in TABLES {
            self.same(sql).await;
        }
    }

    async fn pg_count(&self, sql: &str) -> i64 {
        self.schema
            .client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// The delivery jobs: (delivery, due, leased by), by delivery.
    async fn delivery_jobs(&self) -> Vec<(String, i64, Option<String>)> {
        let rows = self
            .schema
            .client()
            .await
            .query(
                "SELECT delivery_id, due_at, leased_by FROM delivery_jobs ORDER BY delivery_id",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// The run jobs: (run, due, lease token), by run.
    async fn run_jobs(&self) -> Vec<(String, i64, Option<i64>)> {
        let rows = self
            .schema
            .client()
            .await
            .query(
                "SELECT run_id, due_at, lease_token FROM run_jobs ORDER BY run_id",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// Ingests what `make` makes on both (PostgreSQL's jobs leased to [`NODE`]); answers
    /// PostgreSQL's leases (delivery, token).
    async fn ingest(&self, make: impl Fn() -> Ingest) -> Vec<(String, i64)> {
        let one = make();
        let sqlite = self
            .sqlite
            .ingest(one.event, one.runs, one.deliveries)
            .await
            .unwrap();
        let pg = self
            .pg
            .ingest_batch(&[make()], NODE, LEASE_MS)
            .await
            .pop()
            .unwrap()
            .unwrap();
        assert_eq!(sqlite, pg.outcome);
        pg.leases
    }

    /// Records the attempt `make` makes on both (on PostgreSQL under its ingest lease, from
    /// `leases`); answers the run it settled (run, status), the same on both.
    async fn attempt(
        &self,
        leases: &[(String, i64)],
        make: impl Fn() -> NewAttempt,
    ) -> Option<(String, &'static str)> {
        let settled = |s: Option<Settled>| s.map(|s| (s.run_id, s.status));
        let sqlite = settled(self.sqlite.record_attempt(make()).await.unwrap());
        let a = make();
        let token = leases
            .iter()
            .find(|(d, _)| *d == a.delivery_id)
            .map(|(_, t)| *t)
            .unwrap();
        let lease = Lease {
            node: NODE.into(),
            token,
        };
        let pg = match self.pg.record_leased_attempt(&a, &lease).await.unwrap() {
            Fenced::Recorded(s) => settled(s),
            Fenced::LeaseLost => panic!("the ingest lease of {} was lost", a.delivery_id),
        };
        assert_eq!(sqlite, pg);
        pg
    }

    /// Sets `sql`'s rows in PostgreSQL (what a test cannot reach through the store).
    async fn pg_execute(&self, sql: &str) {
        self.schema.client().await.batch_execute(sql).await.unwrap();
    }
}

fn event(id: &str, at: Millis) -> NewEvent {
    NewEvent {
        id: id.into(),
        source: "shop".into(),
        event_type: "order.paid".into(),
        idempotency_key: None,
        received_at: at,
        headers: "{}".into(),
        payload: Bytes::from(format!(r#"{{"id":"{id}"}}"#)),
    }
}

fn body(id: i64) -> Body {
    Body {
        id,
        data: Bytes::from(format!(r#"{{"body":{id}}}"#)),
    }
}

fn run(id: &str, status: &'static str, next_at: Option<Millis>) -> NewRun {
    NewRun {
        id: id.into(),
        flow_id: "f".into(),
        flow_version: "v1".into(),
        status,
        pc: 1,
        resume_pc: None,
        next_at,
        error: (status == "failed").then(|| "the step failed".to_string()),
        context: None,
        payload_body: None,
        bodies: Vec::new(),
        steps: "[]".into(),
    }
}

fn delivery(id: &str, run_id: &str, to: &str, body: Option<Body>) -> NewDelivery {
    NewDelivery {
        id: id.into(),
        run_id: run_id.into(),
        destination_id: to.into(),
        body,
    }
}

/// An event received at `at` with nothing started.
fn alone(id: &str, at: Millis) -> impl Fn() -> Ingest {
    let id = id.to_string();
    move || Ingest {
        event: event(&id, at),
        runs: Vec::new(),
        deliveries: Vec::new(),
    }
}

/// An event received at `at` whose run (`run_<id>`) is in `status`, with `next_at`.
fn one_run(
    id: &str,
    at: Millis,
    status: &'static str,
    next_at: Option<Millis>,
) -> impl Fn() -> Ingest {
    let id = id.to_string();
    move || Ingest {
        event: event(&id, at),
        runs: vec![run(&format!("run_{id}"), status, next_at)],
        deliveries: Vec::new(),
    }
}

/// An event received at `at` whose run (`run_<id>`) waits for two deliveries,
/// `<id>_crm` (with a body of its own, `body_id`) and `<id>_erp`.
fn waiting(id: &str, at: Millis, body_id: i64) -> impl Fn() -> Ingest {
    let id = id.to_string();
    move || {
        let run_id = format!("run_{id}");
        let mut r = run(&run_id, "waiting", None);
        r.pc = 2;
        r.bodies = vec![body(body_id)];
        Ingest {
            event: event(&id, at),
            runs: vec![r],
            deliveries: vec![
                delivery(&format!("{id}_crm"), &run_id, "crm", Some(body(body_id))),
                delivery(&format!("{id}_erp"), &run_id, "erp", None),
            ],
        }
    }
}

/// An attempt of delivery `<event>_<to>` finished at `at`, and what follows it.
fn outcome(event_id: &str, to: &str, next: AttemptNext, at: Millis) -> impl Fn() -> NewAttempt {
    let event_id = event_id.to_string();
    let to = to.to_string();
    move || {
        let ok = matches!(next, AttemptNext::Succeeded);
        NewAttempt {
            delivery_id: format!("{event_id}_{to}"),
            event_id: event_id.clone(),
            run_id: format!("run_{event_id}"),
            destination_id: to.clone(),
            started_at: at - 10,
            finished_at: at,
            duration_ms: 10,
            status_code: Some(if ok { 200 } else { 500 }),
            response_headers: Some("{}".into()),
            response_body: Some(b"answer".to_vec()),
            error: (!ok).then(|| "500 Internal Server Error".to_string()),
            outcome: if ok { "succeeded" } else { "failed" },
            next,
            lease: None,
        }
    }
}

fn save(run_id: &str, event_id: &str, status: &'static str, now: Millis) -> RunSave {
    RunSave {
        id: run_id.into(),
        event_id: event_id.into(),
        expect_status: "running",
        status,
        pc: 1,
        resume_pc: None,
        next_at: None,
        step_attempts: 0,
        error: None,
        context: None,
        payload_body: None,
        bodies: Vec::new(),
        steps: "[]".into(),
        now,
        lease: None,
    }
}

fn step_attempt(job_id: &str, outcome: &'static str, status: u16, at: Millis) -> NewStepAttempt {
    NewStepAttempt {
        job_id: job_id.into(),
        started_at: at,
        duration_ms: 5,
        status_code: Some(status),
        response_headers: Some(r#"{"content-type":"application/json"}"#.into()),
        response_body: Some(br#"{"ok":true}"#.to_vec()),
        error: None,
        outcome,
    }
}

/// A PostgreSQL error about a NUL byte in text.
fn refuses_nul<T>(result: Result<T, StoreError>) {
    let Err(e) = result else {
        panic!("a NUL byte was taken")
    };
    let e = e.to_string();
    assert!(e.contains("0x00"), "{e}");
    assert!(e.len() < 1000, "a short message: {} bytes", e.len());
}

/// Text from bytes that are not UTF-8, as a caller would make it.
fn lossy() -> String {
    String::from_utf8_lossy(&[b'a', 0xff, 0xfe, b'{', 0xc3]).into_owned()
}

/// An outcome as a comparable tuple: (kind, its jobs as text, the run due).
fn replayed(o: &ReplayOutcome) -> (String, Vec<String>, bool) {
    match o {
        ReplayOutcome::NotFound => ("not found".into(), vec![], false),
        ReplayOutcome::NotFailed(status) => (format!("not failed: {status}"), vec![], false),
        ReplayOutcome::PayloadExpired => ("payload expired".into(), vec![], false),
        ReplayOutcome::Resumed {
            deliveries,
            run_due,
        } => {
            let mut jobs: Vec<String> = deliveries.iter().map(job).collect();
            jobs.sort();
            ("resumed".into(), jobs, *run_due)
        }
    }
}

fn job(j: &DeliveryJob) -> String {
    format!(
        "{} of {} (run {}) to {}, made {}, round {}, due {}, payload {}",
        j.id,
        j.event_id,
        j.run_id,
        j.destination_id,
        j.created_at,
        j.round_attempts,
        j.due_at,
        j.payload.is_some()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_step_writes_the_same_rows_on_both_and_moves_the_jobs() {
    let both = Both::new().await;
    both.ingest(one_run("e1", 1_000, "running", Some(1_500)))
        .await;
    assert_eq!(both.run_jobs().await, [("run_e1".into(), 1_500, None)]);
    // The run worker of another node holds the run: a save that keeps it running clears that.
    both.pg_execute(
        "UPDATE run_jobs SET lease_until = 9000000000000, lease_token = 42, leased_by = 'node-b'",
    )
    .await;

    let retry_later = || RunSave {
        next_at: Some(5_000),
        step_attempts: 1,
        error: Some("503 from the API".into()),
        context: Some(r#"{"a":1}"#.into()),
        steps: r#"[{"index":0}]"#.into(),
        ..save("run_e1", "e1", "running", 2_000)
    };
    let http = || Some(step_attempt("run_e1/1", "retry", 503, 1_990));
    assert!(
        both.sqlite
            .save_run(retry_later(), vec![], http())
            .await
            .unwrap()
    );
    assert!(
        both.pg
            .save_run(retry_later(), vec![], http())
            .await
            .unwrap()
    );
    assert_eq!(
        both.run_jobs().await,
        [("run_e1".into(), 5_000, None)],
        "due at its next step, leased to nobody"
    );

    let deliver = || RunSave {
        pc: 3,
        resume_pc: Some(4),
        payload_body: Some(900),
        bodies: vec![body(900)],
        steps: r#"[{"index":0},{"index":1}]"#.into(),
        ..save("run_e1", "e1", "waiting", 6_000)
    };
    let new = || {
        vec![
            delivery("d1", "run_e1", "crm", Some(body(900))),
            delivery("d2", "run_e1", "erp", None),
        ]
    };
    let http = || Some(step_attempt("run_e1/1", "succeeded", 200, 5_990));
    assert!(
        both.sqlite
            .save_run(deliver(), new(), http())
            .await
            .unwrap()
    );
    assert!(both.pg.save_run(deliver(), new(), http()).await.unwrap());
    assert!(both.run_jobs().await.is_empty(), "waiting: no run job");
    assert_eq!(
        both.delivery_jobs().await,
        [("d1".into(), 6_000, None), ("d2".into(), 6_000, None)],
        "the new deliveries are due at once, leased to nobody"
    );

    // The run is no longer running: nothing is written.
    let before: Vec<Rows> = snapshot(&both).await;
    assert!(
        !both
            .sqlite
            .save_run(deliver(), new(), http())
            .await
            .unwrap()
    );
    assert!(!both.pg.save_run(deliver(), new(), http()).await.unwrap());
    assert_eq!(snapshot(&both).await, before);

    let runs = both
        .same("SELECT status, pc, resume_pc, next_at, step_attempts, pending, dead, error, updated_at, payload_body FROM runs")
        .await;
    assert_eq!(
        runs,
        [vec![
            text("waiting"),
            int(3),
            int(4),
            Val::Null,
            int(0),
            int(2),
            int(0),
            Val::Null,
            int(6_000),
            int(900)
        ]]
    );
    let attempts = both
        .same("SELECT delivery_id, attempt, outcome, status_code FROM attempts ORDER BY attempt")
        .await;
    assert_eq!(
        attempts,
        [
            vec![text("run_e1/1"), int(1), text("retry"), int(503)],
            vec![text("run_e1/1"), int(2), text("succeeded"), int(200)]
        ]
    );
    let bodies = both
        .same("SELECT b.id, e.id FROM bodies b JOIN events e ON e.seq = b.event_seq")
        .await;
    assert_eq!(bodies, [vec![int(900), text("e1")]]);
    both.same_everywhere().await;
}

/// The events, bodies, runs, deliveries and attempts (the same on both) and PostgreSQL's
/// jobs, to see that nothing changed.
async fn snapshot(both: &Both) -> Vec<Rows> {
    let mut all = Vec::new();
    for sql in &TABLES[..5] {
        all.push(both.same(sql).await);
    }
    all.push(both.pg_rows("SELECT * FROM delivery_jobs ORDER BY 1").await);
    all.push(both.pg_rows("SELECT * FROM run_jobs ORDER BY 1").await);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_save_writes_nothing_and_a_run_that_ends_loses_its_job() {
    let both = Both::new().await;
    both.ingest(one_run("e2", 1_000, "running", Some(100)))
        .await;
    let before = snapshot(&both).await;
    // Two deliveries with one id: the second is refused, and the whole save with it.
    let twice = || {
        vec![
            delivery("dup", "run_e2", "crm", None),
            delivery("dup", "run_e2", "erp", None),
        ]
    };
    let waits = || save("run_e2", "e2", "waiting", 2_000);
    assert!(both.sqlite.save_run(waits(), twice(), None).await.is_err());
    assert!(both.pg.save_run(waits(), twice(), None).await.is_err());
    // Bodies of an event that is not stored.
    let orphan = || RunSave {
        bodies: vec![body(5)],
        ..save("run_e2", "no-such-event", "running", 2_000)
    };
    assert!(both.sqlite.save_run(orphan(), vec![], None).await.is_err());
    let e = both.pg.save_run(orphan(), vec![], None).await.unwrap_err();
    assert!(e.to_string().contains("no-such-event"), "{e}");
    assert_eq!(snapshot(&both).await, before, "nothing of either save");
    assert_eq!(both.run_jobs().await, [("run_e2".into(), 100, None)]);

    let done = || save("run_e2", "e2", "completed", 3_000);
    assert!(both.sqlite.save_run(done(), vec![], None).await.unwrap());
    assert!(both.pg.save_run(done(), vec![], None).await.unwrap());
    assert!(both.run_jobs().await.is_empty(), "completed: no run job");
    assert!(!both.pg.save_run(done(), vec![], None).await.unwrap());
    let run = both
        .same("SELECT status, updated_at, failed_on FROM runs")
        .await;
    assert_eq!(run, [vec![text("completed"), int(3_000), Val::Null]]);

    // A running run saved without a next step time is due at once (SQLite's worker takes it
    // so), and one that fails has no job.
    both.ingest(one_run("e3", 1_000, "running", Some(100)))
        .await;
    let at_once = || save("run_e3", "e3", "running", 4_000);
    assert!(both.sqlite.save_run(at_once(), vec![], None).await.unwrap());
    assert!(both.pg.save_run(at_once(), vec![], None).await.unwrap());
    assert_eq!(both.run_jobs().await, [("run_e3".into(), 4_000, None)]);
    let fails = || RunSave {
        error: Some("the step failed".into()),
        ..save("run_e3", "e3", "failed", 5_000)
    };
    assert!(both.sqlite.save_run(fails(), vec![], None).await.unwrap());
    assert!(both.pg.save_run(fails(), vec![], None).await.unwrap());
    assert!(both.run_jobs().await.is_empty());
    let failed = both
        .same("SELECT status, failed_on, error FROM runs WHERE id = 'run_e3'")
        .await;
    assert_eq!(
        failed,
        [vec![text("failed"), text("step"), text("the step failed")]]
    );
    both.same_everywhere().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_saves_get_clear_errors_and_the_store_saves_afterwards() {
    let both = Both::new().await;
    both.ingest(one_run("e1", 1_000, "running", Some(1))).await;
    let huge = || RunSave {
        next_at: Some(i64::MAX),
        step_attempts: u32::MAX,
        error: Some("e".repeat(MB)),
        context: Some(lossy()),
        steps: lossy(),
        ..save("run_e1", "e1", "running", i64::MIN)
    };
    let odd_attempt = || {
        Some(NewStepAttempt {
            response_body: Some(vec![0xff; 1000]),
            response_headers: Some(lossy()),
            duration_ms: i64::MAX,
            ..step_attempt("run_e1/0", "retry", u16::MAX, i64::MIN)
        })
    };
    assert!(
        both.sqlite
            .save_run(huge(), vec![], odd_attempt())
            .await
            .unwrap()
    );
    assert!(
        both.pg
            .save_run(huge(), vec![], odd_attempt())
            .await
            .unwrap()
    );
    assert_eq!(both.run_jobs().await, [("run_e1".into(), i64::MAX, None)]);
    both.same_everywhere().await;

    // PostgreSQL refuses a NUL byte in text, wherever it is; nothing is written.
    let before = both.pg_rows(TABLES[2]).await;
    let nul_steps = || RunSave {
        steps: "[\"\0\"]".into(),
        ..save("run_e1", "e1", "waiting", 5)
    };
    refuses_nul(both.pg.save_run(nul_steps(), vec![], None).await);
    let nul_delivery = vec![delivery("d\0", "run_e1", "crm", None)];
    refuses_nul(
        both.pg
            .save_run(save("run_e1", "e1", "waiting", 5), nul_delivery, None)
            .await,
    );
    refuses_nul(
        both.pg
            .save_run(save("run\0", "e1", "waiting", 5), vec![], None)
            .await,
    );
    assert_eq!(both.pg_rows(TABLES[2]).await, before);
    assert!(both.delivery_jobs().await.is_empty());
    assert!(
        both.pg
            .save_run(save("run_e1", "e1", "completed", 6), vec![], None)
            .await
            .unwrap(),
        "the store saves normally afterwards"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_are_written_replaced_and_removed_alike() {
    let both = Both::new().await;
    let pause = |by: &str, reason: &str, since| Pause {
        by: by.into(),
        reason: reason.into(),
        since,
    };
    for (destination, p) in [
        ("crm", Some(pause("api", "maintenance", 10))),
        ("crm", Some(pause("auto", "the circuit opened", 20))),
        ("erp", Some(pause("api", "moving", 30))),
        ("crm", None),
        ("nowhere", None),
    ] {
        both.sqlite
            .set_paused(destination, p.clone())
            .await
            .unwrap();
        both.pg.set_paused(destination, p).await.unwrap();
    }
    let rows = both.same(TABLES[5]).await;
    assert_eq!(
        rows,
        [vec![text("erp"), text("api"), text("moving"), int(30)]]
    );

    // Hostile: a 1 MB reason, text that was not UTF-8, the earliest time; a NUL refused.
    for (destination, p) in [
        (lossy(), Some(pause("api", &"r".repeat(MB), i64::MIN))),
        ("erp".into(), Some(pause(&lossy(), "x", i64::MAX))),
    ] {
        both.sqlite
            .set_paused(&destination, p.clone())
            .await
            .unwrap();
        both.pg.set_paused(&destination, p).await.unwrap();
    }
    both.same_everywhere().await;
    refuses_nul(
        both.pg
            .set_paused("c\0rm", Some(pause("api", "x", 1)))
            .await,
    );
    refuses_nul(both.pg.set_paused("crm", Some(pause("api", "\0", 1))).await);
    refuses_nul(both.pg.set_paused("c\0rm", None).await);
    both.pg.set_paused("erp", None).await.unwrap();
    assert_eq!(
        both.pg_count("SELECT count(*) FROM paused_destinations")
            .await,
        1
    );
}

fn alert_state(rule: &str, firing: bool, since: Millis) -> AlertState {
    AlertState {
        alert_id: rule.into(),
        firing,
        since,
        message: format!("{rule} since {since}"),
        subject: "destination crm".into(),
        last_notice_at: firing.then_some(since),
        notified: firing,
    }
}

fn alert_change(rule: &str, firing: bool, at: Millis) -> AlertChange {
    AlertChange {
        alert_id: rule.into(),
        at,
        firing,
        subject: "destination crm".into(),
        message: format!("{rule} at {at}"),
        notices: vec![NoticeSent {
            channel: "ops".into(),
            error: (at % 3 == 0).then(|| "timed out".to_string()),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_states_and_the_last_hundred_changes_of_each_rule_are_kept_alike() {
    let both = Both::new().await;
    for (rule, changes) in [("backlog", 105), ("dead", 3)] {
        for at in 0..changes {
            let firing = at % 2 == 0;
            let state = alert_state(rule, firing, at);
            let change = Some(alert_change(rule, firing, at));
            both.sqlite
                .save_alert(state.clone(), change.clone())
                .await
                .unwrap();
            both.pg.save_alert(state, change).await.unwrap();
        }
    }
    both.sqlite
        .save_alert(alert_state("quiet", false, 7), None)
        .await
        .unwrap();
    both.pg
        .save_alert(alert_state("quiet", false, 7), None)
        .await
        .unwrap();
    both.same_everywhere().await;
    let kept = both
        .same("SELECT alert_id, count(*), min(at), max(at) FROM alert_history GROUP BY alert_id ORDER BY alert_id")
        .await;
    assert_eq!(
        kept,
        [
            vec![text("backlog"), int(100), int(5), int(104)],
            vec![text("dead"), int(3), int(0), int(2)]
        ]
    );
    // The same ids too: both number the changes from 1 and trim by them.
    both.same("SELECT id FROM alert_history ORDER BY id").await;
    let states = both
        .same("SELECT alert_id, firing, since, notified FROM alert_states ORDER BY alert_id")
        .await;
    assert_eq!(
        states,
        [
            vec![text("backlog"), int(1), int(104), int(1)],
            vec![text("dead"), int(1), int(2), int(1)],
            vec![text("quiet"), int(0), int(7), int(0)]
        ]
    );
    let notices = both
        .same("SELECT notices FROM alert_history WHERE alert_id = 'dead' ORDER BY id")
        .await;
    assert_eq!(
        notices[0],
        [text(r#"[{"channel":"ops","error":"timed out"}]"#)]
    );

    // Hostile: a 1 MB message, the earliest time, text that was not UTF-8; a NUL refused.
    let mut state = alert_state(&lossy(), true, i64::MIN);
    state.message = "m".repeat(MB);
    let mut change = alert_change(&lossy(), true, i64::MIN);
    change.message = "m".repeat(MB);
    change.notices[0].error = Some(lossy());
    both.sqlite
        .save_alert(state.clone(), Some(change.clone()))
        .await
        .unwrap();
    both.pg.save_alert(state, Some(change)).await.unwrap();
    both.same_everywhere().await;
    let mut nul = alert_change("backlog", true, 1_000);
    nul.subject = "sub\0ject".into();
    refuses_nul(
        both.pg
            .save_alert(alert_state("backlog", true, 1_000), Some(nul))
            .await,
    );
    let mut nul = alert_state("backlog", true, 1_000);
    nul.alert_id = "\0".into();
    refuses_nul(both.pg.save_alert(nul, None).await);
    both.pg
        .save_alert(
            alert_state("backlog", false, 2_000),
            Some(alert_change("backlog", false, 2_000)),
        )
        .await
        .unwrap();
    assert_eq!(
        both.pg_count("SELECT count(*) FROM alert_history WHERE alert_id = 'backlog'")
            .await,
        100,
        "the refused change is not in the history, which stays at 100"
    );
}

fn token(id: &str, hash: u8, at: Millis) -> NewToken {
    NewToken {
        id: id.into(),
        name: format!("token {id}"),
        scope: "admin".into(),
        hash: vec![hash; 32],
        created_at: at,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_created_refused_and_revoked_alike() {
    let both = Both::new().await;
    for (id, hash, at) in [("t1", 1, 10), ("t2", 2, 20)] {
        both.sqlite.create_token(token(id, hash, at)).await.unwrap();
        both.pg.create_token(token(id, hash, at)).await.unwrap();
    }
    // A second token with an id, or a hash, already taken.
    for (id, hash) in [("t1", 9), ("t3", 1)] {
        assert!(both.sqlite.create_token(token(id, hash, 30)).await.is_err());
        let e = both
            .pg
            .create_token(token(id, hash, 30))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("23505"), "a unique violation: {e}");
    }
    for (id, revoked) in [("t1", true), ("t1", false), ("nope", false)] {
        assert_eq!(both.sqlite.revoke_token(id, 40).await.unwrap(), revoked);
        assert_eq!(both.pg.revoke_token(id, 40).await.unwrap(), revoked);
    }
    let rows = both.same(TABLES[8]).await;
    assert_eq!(
        rows,
        [
            vec![
                text("t1"),
                text("token t1"),
                text("admin"),
                Val::Bytes(vec![1; 32]),
                int(10),
                int(40)
            ],
            vec![
                text("t2"),
                text("token t2"),
                text("admin"),
                Val::Bytes(vec![2; 32]),
                int(20),
                Val::Null
            ]
        ]
    );

    // Hostile: a 1 MB name, text that was not UTF-8, extreme times; a NUL refused.
    let odd = || NewToken {
        name: "n".repeat(MB),
        scope: lossy(),
        created_at: i64::MAX,
        ..token(&lossy(), 7, 0)
    };
    both.sqlite.create_token(odd()).await.unwrap();
    both.pg.create_token(odd()).await.unwrap();
    assert!(both.sqlite.revoke_token(&lossy(), i64::MIN).await.unwrap());
    assert!(both.pg.revoke_token(&lossy(), i64::MIN).await.unwrap());
    both.same_everywhere().await;
    refuses_nul(both.pg.create_token(token("t\0", 8, 1)).await);
    refuses_nul(both.pg.revoke_token("t2\0", 1).await);
    assert!(both.pg.revoke_token("t2", 50).await.unwrap());
}

fn object(kind: &str, id: &str, spec: Option<&str>) -> Option<(String, String, Option<String>)> {
    Some((kind.into(), id.into(), spec.map(str::to_string)))
}

fn schemas(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_and_schema_versions_are_kept_alike() {
    let both = Both::new().await;
    let changes = || {
        vec![
            ConfigChange {
                object: object("sources", "shop", Some(r#"{"v":1}"#)),
                schemas: schemas(&[("order.paid", r#"{"type":"object"}"#)]),
                now: 10,
            },
            ConfigChange {
                object: object("sources", "shop", Some(r#"{"v":2}"#)),
                schemas: schemas(&[
                    ("order.paid", r#"{"type":"object"}"#),
                    ("order.refunded", "{}"),
                ]),
                now: 20,
            },
            ConfigChange {
                object: None,
                schemas: schemas(&[("order.paid", r#"{"type":"array"}"#)]),
                now: 30,
            },
            ConfigChange {
                object: object("sources", "shop", None),
                schemas: vec![],
                now: 40,
            },
            ConfigChange {
                object: object("destinations", "crm", Some(r#"{"url":"x"}"#)),
                schemas: vec![],
                now: 50,
            },
            ConfigChange {
                object: object("flows", "nothing-here", None),
                schemas: vec![],
                now: 60,
            },
        ]
    };
    for (s, p) in changes().into_iter().zip(changes()) {
        both.sqlite.change_config(s).await.unwrap();
        both.pg.change_config(p).await.unwrap();
    }
    let objects = both.same(TABLES[6]).await;
    assert_eq!(
        objects,
        [vec![
            text("destinations"),
            text("crm"),
            text(r#"{"url":"x"}"#),
            int(50),
            int(50)
        ]]
    );
    let versions = both.same(TABLES[7]).await;
    assert_eq!(
        versions,
        [
            vec![
                text("order.paid"),
                int(1),
                text(r#"{"type":"object"}"#),
                int(10)
            ],
            vec![
                text("order.paid"),
                int(2),
                text(r#"{"type":"array"}"#),
                int(30)
            ],
            vec![text("order.refunded"), int(1), text("{}"), int(20)]
        ]
    );

    // Hostile: a 1 MB spec, text that was not UTF-8, extreme times; a NUL refused, whole.
    let odd = || ConfigChange {
        object: object("flows", &lossy(), Some(&"s".repeat(MB))),
        schemas: schemas(&[(&lossy(), &"x".repeat(MB))]),
        now: i64::MIN,
    };
    both.sqlite.change_config(odd()).await.unwrap();
    both.pg.change_config(odd()).await.unwrap();
    both.same_everywhere().await;
    refuses_nul(
        both.pg
            .change_config(ConfigChange {
                object: object("flows", "f", Some("{}")),
                schemas: schemas(&[("t\0", "{}")]),
                now: 1,
            })
            .await,
    );
    assert_eq!(
        both.pg_count("SELECT count(*) FROM config_objects WHERE id = 'f'")
            .await,
        0,
        "the object of the refused change is not written"
    );
    both.pg
        .change_config(ConfigChange {
            object: object("flows", "f", Some("{}")),
            schemas: vec![],
            now: i64::MAX,
        })
        .await
        .unwrap();
}

/// Nodes that add schema versions of one event type at once number them in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_changing_one_event_type_at_once_number_its_versions_in_turn() {
    let both = Both::new().await;
    let nodes = [
        both.pg.clone(),
        both.other_node().await,
        both.other_node().await,
    ];
    let mut tasks = Vec::new();
    for i in 0..30 {
        let store = nodes[i % nodes.len()].clone();
        tasks.push(tokio::spawn(async move {
            store
                .change_config(ConfigChange {
                    object: None,
                    schemas: schemas(&[
                        ("order.paid", &format!(r#"{{"n":{i}}}"#)),
                        ("order.sent", &format!(r#"{{"n":{}}}"#, i % 2)),
                    ]),
                    now: i as i64,
                })
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let versions = both
        .pg_rows("SELECT event_type, count(*), count(DISTINCT version), max(version) FROM schema_versions GROUP BY 1 ORDER BY 1")
        .await;
    assert_eq!(versions[0], [text("order.paid"), int(30), int(30), int(30)]);
    assert_eq!(versions[1][0], text("order.sent"));
    assert_eq!(versions[1][1], versions[1][3], "numbered 1..n without gaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reseal_writes_every_spec_or_none() {
    let both = Both::new().await;
    for id in ["a", "b"] {
        let change = || ConfigChange {
            object: object("sources", id, Some(&format!("old-{id}"))),
            schemas: vec![],
            now: 1,
        };
        both.sqlite.change_config(change()).await.unwrap();
        both.pg.change_config(change()).await.unwrap();
    }
    let resealed = |b_as_read: &str| {
        vec![
            Resealed {
                kind: "sources".into(),
                id: "a".into(),
                old: "old-a".into(),
                new: "new-a".into(),
            },
            Resealed {
                kind: "sources".into(),
                id: "b".into(),
                old: b_as_read.into(),
                new: "new-b".into(),
            },
        ]
    };
    let sqlite = both.sqlite.reseal(resealed("changed")).await.unwrap_err();
    let pg = both.pg.reseal(resealed("changed")).await.unwrap_err();
    assert_eq!(sqlite.to_string(), pg.to_string());
    assert!(matches!(pg, StoreError::Corrupt(_)), "{pg}");
    assert_eq!(
        both.same("SELECT id, spec FROM config_objects ORDER BY id")
            .await,
        [
            vec![text("a"), text("old-a")],
            vec![text("b"), text("old-b")]
        ],
        "nothing was written"
    );
    both.sqlite.reseal(resealed("old-b")).await.unwrap();
    both.pg.reseal(resealed("old-b")).await.unwrap();
    assert_eq!(
        both.same("SELECT id, spec FROM config_objects ORDER BY id")
            .await,
        [
            vec![text("a"), text("new-a")],
            vec![text("b"), text("new-b")]
        ]
    );
    both.sqlite.reseal(vec![]).await.unwrap();
    both.pg.reseal(vec![]).await.unwrap();
    // Hostile: a NUL refused; a 1 MB spec taken.
    let mut nul = resealed("new-b");
    nul[1].new = "\0".into();
    nul[0].old = "new-a".into();
    refuses_nul(both.pg.reseal(nul).await);
    let mut big = resealed("new-b");
    big[0].old = "new-a".into();
    big[1].new = "s".repeat(MB);
    both.pg.reseal(big).await.unwrap();
    assert_eq!(
        both.pg_count("SELECT length(spec)::bigint FROM config_objects WHERE id = 'b'")
            .await,
        MB as i64
    );
}

/// The scan of retention that drops the bodies of events received before `before`.
fn drop_bodies_before(before: Millis, now: Millis) -> (PruneScope, PruneCutoffs) {
    (
        PruneScope::After {
            seq: 0,
            received_before: before,
            max: 100,
            bodies_only: true,
        },
        PruneCutoffs {
            now,
            finished: i64::MIN,
            dead: i64::MIN,
            payloads: Some(before),
        },
    )
}

async fn prune_both(both: &Both, scope: PruneScope, cutoffs: PruneCutoffs) -> PruneReport {
    let sqlite = both
        .sqlite
        .prune_events(scope.clone(), cutoffs)
        .await
        .unwrap();
    let pg = both.pg.prune_events(scope, cutoffs).await.unwrap();
    assert_eq!(sqlite, pg);
    pg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_runs_of_a_stored_event_are_added_alike_with_their_jobs() {
    let both = Both::new().await;
    both.ingest(alone("e1", 1_000)).await;
    let runs = || {
        let mut waits = run("ra", "waiting", None);
        waits.bodies = vec![body(700)];
        waits.payload_body = Some(700);
        vec![
            waits,
            run("rb", "running", Some(9_000)),
            run("rc", "failed", None),
            run("rd", "running", None),
        ]
    };
    let deliveries = || {
        vec![
            delivery("da", "ra", "crm", Some(body(700))),
            delivery("db", "ra", "erp", None),
        ]
    };
    assert!(
        both.sqlite
            .add_runs("e1", 5_000, runs(), deliveries())
            .await
            .unwrap()
    );
    assert!(
        both.pg
            .add_runs("e1", 5_000, runs(), deliveries())
            .await
            .unwrap()
    );
    assert_eq!(
        both.delivery_jobs().await,
        [("da".into(), 5_000, None), ("db".into(), 5_000, None)]
    );
    assert_eq!(
        both.run_jobs().await,
        [("rb".into(), 9_000, None), ("rd".into(), 5_000, None)],
        "the running runs are due at their next step (or at once)"
    );
    let rows = both
        .same("SELECT id, status, pending, failed_on, created_at FROM runs ORDER BY id")
        .await;
    assert_eq!(
        rows,
        [
            vec![text("ra"), text("waiting"), int(2), Val::Null, int(5_000)],
            vec![text("rb"), text("running"), int(0), Val::Null, int(5_000)],
            vec![text("rc"), text("failed"), int(0), text("step"), int(5_000)],
            vec![text("rd"), text("running"), int(0), Val::Null, int(5_000)]
        ]
    );

    // No such event; an event whose payload expired; a run id taken (nothing written).
    assert!(
        !both
            .sqlite
            .add_runs("nope", 6_000, runs(), deliveries())
            .await
            .unwrap()
    );
    assert!(
        !both
            .pg
            .add_runs("nope", 6_000, runs(), deliveries())
            .await
            .unwrap()
    );
    both.ingest(alone("e2", 2_000)).await;
    let (scope, cutoffs) = drop_bodies_before(3_000, 10_000);
    let report = prune_both(&both, scope, cutoffs).await;
    assert_eq!(report.payloads, 1, "{report:?}");
    let other = || vec![run("re", "running", Some(1))];
    assert!(
        !both
            .sqlite
            .add_runs("e2", 6_000, other(), vec![])
            .await
            .unwrap()
    );
    assert!(
        !both
            .pg
            .add_runs("e2", 6_000, other(), vec![])
            .await
            .unwrap()
    );
    assert!(
        both.sqlite
            .add_runs("e1", 6_000, runs(), vec![])
            .await
            .is_err()
    );
    assert!(both.pg.add_runs("e1", 6_000, runs(), vec![]).await.is_err());
    assert_eq!(both.pg_count("SELECT count(*) FROM runs").await, 4);
    assert_eq!(both.run_jobs().await.len(), 2);
    both.same_everywhere().await;

    // Hostile: a 1 MB context, extreme times, text that was not UTF-8; a NUL refused.
    let odd = || {
        let mut r = run(&lossy(), "running", Some(i64::MIN));
        r.context = Some("c".repeat(MB));
        r.flow_id = lossy();
        vec![r]
    };
    assert!(
        both.sqlite
            .add_runs("e1", i64::MAX, odd(), vec![])
            .await
            .unwrap()
    );
    assert!(
        both.pg
            .add_runs("e1", i64::MAX, odd(), vec![])
            .await
            .unwrap()
    );
    both.same_everywhere().await;
    let mut nul = run("rn", "running", None);
    nul.flow_version = "v\0".into();
    refuses_nul(both.pg.add_runs("e1", 1, vec![nul], vec![]).await);
    refuses_nul(both.pg.add_runs("e\0", 1, vec![], vec![]).await);
    assert!(
        both.pg
            .add_runs("e1", 7_000, vec![run("rz", "completed", None)], vec![])
            .await
            .unwrap()
    );
}

fn replay(run_id: &str, now: Millis, retry_dead: bool) -> RunReplay {
    RunReplay {
        run_id: run_id.into(),
        now,
        pc: 2,
        resume_pc: Some(3),
        flow_version: "v2".into(),
        retry_dead_deliveries: retry_dead,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_replayed_alike_with_its_jobs() {
    let both = Both::new().await;
    let both = &both;
    let leases = both.ingest(waiting("e1", 1_000, 11)).await;
    assert_eq!(
        both.attempt(&leases, outcome("e1", "crm", AttemptNext::Dead, 2_000))
            .await,
        None
    );
    assert_eq!(
        both.attempt(&leases, outcome("e1", "erp", AttemptNext::Succeeded, 3_000))
            .await,
        Some(("run_e1".into(), "failed"))
    );
    assert!(both.delivery_jobs().await.is_empty());

    let answers = |r: RunReplay| async move {
        let copy = RunReplay {
            run_id: r.run_id.clone(),
            flow_version: r.flow_version.clone(),
            ..r
        };
        let sqlite = replayed(&both.sqlite.replay_run(r).await.unwrap());
        let pg = replayed(&both.pg.replay_run(copy).await.unwrap());
        assert_eq!(sqlite, pg);
        pg
    };
    assert_eq!(answers(replay("nope", 4_000, true)).await.0, "not found");
    let resumed = answers(replay("run_e1", 4_000, true)).await;
    assert_eq!(
        resumed,
        (
            "resumed".into(),
            vec![
                "e1_crm of e1 (run run_e1) to crm, made 1000, round 0, due 4000, payload false"
                    .into()
            ],
            false
        )
    );
    assert_eq!(both.delivery_jobs().await, [("e1_crm".into(), 4_000, None)]);
    assert!(both.run_jobs().await.is_empty(), "waiting: no run job");
    assert_eq!(
        answers(replay("run_e1", 4_500, true)).await.0,
        "not failed: waiting"
    );
    let run = both
        .same("SELECT status, pc, resume_pc, next_at, pending, dead, error, failed_on, flow_version, updated_at FROM runs")
        .await;
    assert_eq!(
        run,
        [vec![
            text("waiting"),
            int(2),
            int(3),
            Val::Null,
            int(1),
            int(0),
            Val::Null,
            Val::Null,
            text("v2"),
            int(4_000)
        ]]
    );

    // A run whose step failed starts again, due at once for the run worker.
    both.ingest(one_run("e2", 1_000, "failed", None)).await;
    assert_eq!(
        answers(replay("run_e2", 5_000, false)).await,
        ("resumed".into(), vec![], true)
    );
    assert_eq!(both.run_jobs().await, [("run_e2".into(), 5_000, None)]);
    // With nothing dead to put back, the step runs again.
    both.ingest(one_run("e3", 1_000, "failed", None)).await;
    assert_eq!(
        answers(replay("run_e3", 5_500, true)).await,
        ("resumed".into(), vec![], true)
    );

    // An event whose bodies are gone cannot be replayed.
    both.ingest(one_run("e4", 1_000, "failed", None)).await;
    let (scope, cutoffs) = drop_bodies_before(1_500, 10_000);
    let report = prune_both(both, scope, cutoffs).await;
    assert_eq!(report.payloads, 1, "{report:?}");
    assert_eq!(
        answers(replay("run_e4", 6_000, false)).await.0,
        "payload expired"
    );
    both.same_everywhere().await;

    // Hostile: extreme times and positions, text that was not UTF-8; a NUL refused.
    both.ingest(one_run("e5", 1_000, "failed", None)).await;
    let odd = || RunReplay {
        pc: usize::MAX,
        resume_pc: Some(usize::MAX),
        flow_version: lossy(),
        ..replay("run_e5", i64::MIN, false)
    };
    assert_eq!(answers(odd()).await, ("resumed".into(), vec![], true));
    assert_eq!(both.run_jobs().await[2], ("run_e5".into(), i64::MIN, None));
    // A position past i64::MAX is kept as i64::MAX here (as PostgreSQL's ingest keeps it);
    // SQLite's writer casts it (`as i64`) to -1. Not a position a flow has.
    assert_eq!(
        both.pg_rows("SELECT pc, resume_pc FROM runs WHERE id = 'run_e5'")
            .await,
        [vec![int(i64::MAX), int(i64::MAX)]]
    );
    assert_eq!(
        both.sqlite_rows("SELECT pc, resume_pc FROM runs WHERE id = 'run_e5'"),
        [vec![int(-1), int(-1)]]
    );
    refuses_nul(both.pg.replay_run(replay("run\0", 1, true)).await);
    both.ingest(one_run("e6", 1_000, "failed", None)).await;
    let mut nul = replay("run_e6", 1, true);
    nul.flow_version = "\0".into();
    refuses_nul(both.pg.replay_run(nul).await);
    assert_eq!(
        both.pg_count("SELECT count(*) FROM run_jobs WHERE run_id = 'run_e6'")
            .await,
        0,
        "nothing of the refused replay"
    );
    assert_eq!(
        replayed(
            &both
                .pg
                .replay_run(replay("run_e6", 7_000, true))
                .await
                .unwrap()
        ),
        ("resumed".into(), vec![], true),
        "the store replays normally afterwards"
    );
}

/// Two nodes replaying one failed run at once: one of them restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_replaying_a_run_at_once_restart_it_once() {
    let both = Both::new().await;
    let other = both.other_node().await;
    for i in 0..20 {
        let id = format!("e{i}");
        let made = one_run(&id, 1_000, "failed", None)();
        both.pg
            .ingest_batch(&[made], NODE, LEASE_MS)
            .await
            .pop()
            .unwrap()
            .unwrap();
        let run_id = format!("run_{id}");
        let (a, b) = tokio::join!(
            both.pg.replay_run(replay(&run_id, 2_000, false)),
            other.replay_run(replay(&run_id, 2_000, false)),
        );
        let mut kinds = [replayed(&a.unwrap()).0, replayed(&b.unwrap()).0];
        kinds.sort();
        assert_eq!(kinds, ["not failed: running", "resumed"], "run {i}");
    }
    assert_eq!(both.run_jobs().await.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_is_retried_alike_with_its_job() {
    let both = Both::new().await;
    let both = &both;
    let leases = both.ingest(waiting("e1", 1_000, 11)).await;
    both.attempt(&leases, outcome("e1", "crm", AttemptNext::Dead, 2_000))
        .await;
    assert_eq!(
        both.attempt(&leases, outcome("e1", "erp", AttemptNext::Dead, 3_000))
            .await,
        Some(("run_e1".into(), "failed"))
    );
    let retry = |id: &'static str, now| async move {
        let sqlite = both.sqlite.retry_delivery(id, now).await.unwrap();
        let pg = both.pg.retry_delivery(id, now).await.unwrap();
        assert_eq!(sqlite.as_ref().map(job), pg.as_ref().map(job));
        pg.as_ref().map(job)
    };
    assert_eq!(
        retry("e1_crm", 4_000).await.as_deref(),
        Some("e1_crm of e1 (run run_e1) to crm, made 1000, round 0, due 4000, payload false")
    );
    assert_eq!(both.delivery_jobs().await, [("e1_crm".into(), 4_000, None)]);
    let run = both
        .same("SELECT status, pending, dead, error, failed_on FROM runs")
        .await;
    assert_eq!(
        run,
        [vec![text("waiting"), int(1), int(1), Val::Null, Val::Null]]
    );
    assert_eq!(retry("e1_crm", 4_100).await, None, "pending, not dead");
    assert_eq!(retry("nope", 4_100).await, None);
    assert!(retry("e1_erp", 5_000).await.is_some());
    assert_eq!(
        both.same("SELECT status, pending, dead FROM runs").await,
        [vec![text("waiting"), int(2), int(0)]]
    );
    assert_eq!(both.delivery_jobs().await.len(), 2);
    assert!(both.run_jobs().await.is_empty());
    let delivery = both
        .same("SELECT status, attempts, round_attempts, next_attempt_at, updated_at FROM deliveries WHERE id = 'e1_erp'")
        .await;
    assert_eq!(
        delivery,
        [vec![
            text("pending"),
            int(1),
            int(0),
            int(5_000),
            int(5_000)
        ]]
    );

    // Not when the event's bodies are gone.
    let leases = both.ingest(waiting("e2", 10_000, 12)).await;
    both.attempt(&leases, outcome("e2", "crm", AttemptNext::Dead, 11_000))
        .await;
    both.attempt(
        &leases,
        outcome("e2", "erp", AttemptNext::Succeeded, 11_000),
    )
    .await;
    let (scope, cutoffs) = drop_bodies_before(20_000, 30_000);
    let report = prune_both(both, scope, cutoffs).await;
    assert_eq!(report.payloads, 1, "{report:?}");
    assert_eq!(retry("e2_crm", 31_000).await, None);
    both.same_everywhere().await;

    // Hostile: the earliest time; a NUL refused; an id of 1 MB.
    refuses_nul(both.pg.retry_delivery("e1\0", 1).await);
    assert!(
        both.pg
            .retry_delivery(&"d".repeat(MB), 1)
            .await
            .unwrap()
            .is_none()
    );
    let leases = both.ingest(waiting("e3", 40_000, 13)).await;
    both.attempt(&leases, outcome("e3", "crm", AttemptNext::Dead, 41_000))
        .await;
    assert_eq!(
        retry("e3_crm", i64::MIN).await.as_deref(),
        Some(
            format!(
                "e3_crm of e3 (run run_e3) to crm, made 40000, round 0, due {}, payload false",
                i64::MIN
            )
            .as_str()
        )
    );
}

fn rejection(source: &str, at: Millis) -> Rejection {
    Rejection {
        source: source.into(),
        received_at: at,
        status: 401,
        error: "invalid_signature".into(),
        reason: format!("{source} signed it wrong"),
        body: Bytes::from_static(b"{\"partial\":"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rejected_log_keeps_its_size_and_is_pruned_alike() {
    let both = Both::with(StoreOptions {
        rejected_log_size: 3,
        ..StoreOptions::default()
    })
    .await;
    for i in 0..5 {
        both.sqlite
            .record_rejection(rejection(&format!("s{i}"), i * 10));
        both.pg
            .add_rejection(&rejection(&format!("s{i}"), i * 10), 3)
            .await
            .unwrap();
    }
    // Committed once a write queued after them is.
    both.sqlite.set_paused("flush", None).await.unwrap();
    let kept = both.same("SELECT source FROM rejections ORDER BY id").await;
    assert_eq!(kept, [vec![text("s2")], vec![text("s3")], vec![text("s4")]]);
    both.same_everywhere().await;
    assert_eq!(both.sqlite.prune_rejections(35, 1).await.unwrap(), 1);
    assert_eq!(both.pg.prune_rejections(35, 1).await.unwrap(), 1);
    assert_eq!(both.sqlite.prune_rejections(i64::MAX, 10).await.unwrap(), 2);
    assert_eq!(both.pg.prune_rejections(i64::MAX, 10).await.unwrap(), 2);
    both.sqlite.record_rejection(rejection("s5", i64::MAX));
    both.pg
        .add_rejection(&rejection("s5", i64::MAX), 3)
        .await
        .unwrap();
    both.sqlite.set_paused("flush", None).await.unwrap();
    assert_eq!(
        both.sqlite
            .prune_rejections(i64::MAX, usize::MAX)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        both.pg
            .prune_rejections(i64::MAX, usize::MAX)
            .await
            .unwrap(),
        0
    );
    both.same_everywhere().await;

    // Hostile: a 1 MB reason, a body and a source that are not UTF-8, extreme times; a NUL
    // refused, and the log written afterwards.
    let odd = || Rejection {
        reason: "r".repeat(MB),
        body: Bytes::from(vec![0xff, 0x00, 0xfe]),
        status: u16::MAX,
        ..rejection(&lossy(), i64::MIN)
    };
    both.sqlite.record_rejection(odd());
    both.pg.add_rejection(&odd(), 3).await.unwrap();
    both.sqlite.set_paused("flush", None).await.unwrap();
    both.same_everywhere().await;
    refuses_nul(both.pg.add_rejection(&rejection("s\0", 1), 3).await);
    let mut nul = rejection("s", 1);
    nul.reason = "\0".into();
    refuses_nul(both.pg.add_rejection(&nul, 3).await);
    // Best effort, without waiting: a refused one is dropped (and logged); the next is written.
    both.pg.record_rejection(rejection("s\0", 2));
    both.pg.record_rejection(rejection("late", 3));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while both
        .pg_count("SELECT count(*) FROM rejections WHERE source = 'late'")
        .await
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        both.pg_count("SELECT count(*) FROM rejections WHERE source = 's'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_and_drops_bodies_alike_and_leaves_pending_work() {
    let both = Both::new().await;
    let now: Millis = 100_000_000;
    let hour: Millis = 3_600_000;
    // Finished long ago: no runs.
    both.ingest(alone("old", now - 10 * hour)).await;
    // Finished long ago, with an http step's attempts, a context and bodies.
    both.ingest(one_run("steps", now - 10 * hour, "running", Some(0)))
        .await;
    let finish = || RunSave {
        context: Some(r#"{"secret":1}"#.into()),
        payload_body: Some(31),
        bodies: vec![body(31)],
        ..save("run_steps", "steps", "completed", now - 9 * hour)
    };
    let http = || {
        Some(step_attempt(
            "run_steps/0",
            "succeeded",
            200,
            now - 9 * hour,
        ))
    };
    assert!(
        both.sqlite
            .save_run(finish(), vec![], http())
            .await
            .unwrap()
    );
    assert!(both.pg.save_run(finish(), vec![], http()).await.unwrap());
    // Dead letters five hours old: kept (dead letters stay a day), their bodies dropped.
    let leases = both.ingest(waiting("dead", now - 6 * hour, 41)).await;
    both.attempt(
        &leases,
        outcome("dead", "crm", AttemptNext::Dead, now - 5 * hour),
    )
    .await;
    both.attempt(
        &leases,
        outcome("dead", "erp", AttemptNext::Succeeded, now - 5 * hour),
    )
    .await;
    // Pending work, old: never touched.
    both.ingest(waiting("pending", now - 8 * hour, 51)).await;
    // Finished recently, received three hours ago: kept, its bodies later.
    both.ingest(one_run("recent", now - 3 * hour, "completed", None))
        .await;
    let recent = || RunSave {
        expect_status: "completed",
        ..save("run_recent", "recent", "completed", now - hour / 2)
    };
    assert!(both.sqlite.save_run(recent(), vec![], None).await.unwrap());
    assert!(both.pg.save_run(recent(), vec![], None).await.unwrap());
    // Young.
    both.ingest(alone("young", now - 60_000)).await;

    let cutoffs = PruneCutoffs {
        now,
        finished: now - hour,
        dead: now - 24 * hour,
        payloads: Some(now - 2 * hour),
    };
    let removal = PruneScope::After {
        seq: 0,
        received_before: cutoffs.finished,
        max: 128,
        bodies_only: false,
    };
    let report = prune_both(&both, removal, cutoffs).await;
    assert_eq!(
        report,
        PruneReport {
            last_seq: Some(5),
            reached_end: true,
            events: 2,
            runs: 1,
            deliveries: 0,
            attempts: 1,
            payloads: 1,
            waiting: vec![4, 5],
        }
    );
    let events = both
        .same("SELECT id, length(payload), payload_expired_at IS NOT NULL FROM events ORDER BY seq")
        .await;
    assert_eq!(
        events,
        [
            vec![text("dead"), int(0), int(1)],
            vec![text("pending"), int(16), int(0)],
            vec![text("recent"), int(15), int(0)],
            vec![text("young"), int(14), int(0)]
        ]
    );
    assert_eq!(
        both.same("SELECT count(*) FROM bodies").await,
        [vec![int(1)]],
        "only the pending event's body is left"
    );
    assert_eq!(
        both.same("SELECT body_id IS NULL, count(*) FROM deliveries GROUP BY 1 ORDER BY 1")
            .await,
        [vec![int(0), int(1)], vec![int(1), int(3)]]
    );
    assert_eq!(
        both.delivery_jobs().await.len(),
        2,
        "the pending deliveries keep their jobs"
    );
    both.same_everywhere().await;

    // The waiting events again, later: the recent one's bodies go.
    let later = PruneCutoffs {
        now: now + 2 * hour,
        finished: now - hour,
        dead: now - 24 * hour,
        payloads: Some(now),
    };
    let report = prune_both(&both, PruneScope::Again(vec![4, 5, 99]), later).await;
    assert_eq!((report.payloads, report.waiting.clone()), (1, vec![4]));
    // The scan for bodies passes over those gone, and takes the young event's now.
    let (scope, cutoffs) = drop_bodies_before(now, now + 2 * hour);
    let report = prune_both(&both, scope, cutoffs).await;
    assert_eq!(
        (report.last_seq, report.payloads, report.waiting.clone()),
        (Some(6), 1, vec![4])
    );
    both.same_everywhere().await;
    both.pg.incremental_vacuum(256).await.unwrap();

    // Hostile cutoffs and scopes: extreme times and sizes, the same answers, no panic.
    for (scope, cutoffs) in [
        (
            PruneScope::After {
                seq: i64::MIN,
                received_before: i64::MIN,
                max: usize::MAX,
                bodies_only: false,
            },
            PruneCutoffs {
                now: i64::MAX,
                finished: i64::MIN,
                dead: i64::MIN,
                payloads: Some(i64::MIN),
            },
        ),
        (
            PruneScope::After {
                seq: i64::MAX,
                received_before: i64::MAX,
                max: 0,
                bodies_only: true,
            },
            PruneCutoffs {
                now: i64::MIN,
                finished: i64::MAX,
                dead: i64::MAX,
                payloads: None,
            },
        ),
        (
            PruneScope::Again(vec![i64::MIN, -1, 0, i64::MAX]),
            PruneCutoffs {
                now: 0,
                finished: 0,
                dead: 0,
                payloads: Some(i64::MAX),
            },
        ),
    ] {
        prune_both(&both, scope, cutoffs).await;
    }
    both.same_everywhere().await;
}

/// Retention waits for a transaction adding work to an event (holding the event's row, as
/// `add_runs`, `replay_run` and `retry_delivery` do) and then sees that work: the event stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_waits_for_work_being_added_and_keeps_it() {
    let both = Both::new().await;
    both.ingest(alone("old", 1_000)).await;
    let mut adder = both.schema.client().await;
    let tx = adder.transaction().await.unwrap();
    tx.query_one("SELECT seq FROM events WHERE id = 'old' FOR SHARE", &[])
        .await
        .unwrap();
    tx.execute(
        "INSERT INTO runs (id, event_id, flow_id, flow_version, status, pc, steps, created_at, updated_at)
         VALUES ('late', 'old', 'f', 'v1', 'running', 0, '[]', 2000, 2000)",
        &[],
    )
    .await
    .unwrap();
    let pg = both.pg.clone();
    let pruning = tokio::spawn(async move {
        pg.prune_events(
            PruneScope::After {
                seq: 0,
                received_before: i64::MAX,
                max: 10,
                bodies_only: false,
            },
            PruneCutoffs {
                now: 10_000_000,
                finished: 9_000_000,
                dead: 9_000_000,
                payloads: None,
            },
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pruning.is_finished(),
        "retention waits for the event's row"
    );
    tx.commit().await.unwrap();
    let report = pruning.await.unwrap().unwrap();
    assert_eq!((report.events, report.runs), (0, 0), "{report:?}");
    assert_eq!(both.pg_count("SELECT count(*) FROM events").await, 1);

    // And the other way: work added while retention removes the event finds it gone.
    both.ingest(alone("older", 500)).await;
    let mut pruner = both.schema.client().await;
    let tx = pruner.transaction().await.unwrap();
    tx.query("SELECT seq FROM events WHERE id = 'older' FOR UPDATE", &[])
        .await
        .unwrap();
    tx.execute("DELETE FROM events WHERE id = 'older'", &[])
        .await
        .unwrap();
    let pg = both.pg.clone();
    let adding = tokio::spawn(async move {
        pg.add_runs("older", 3_000, vec![run("r", "running", None)], vec![])
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!adding.is_finished(), "the new run waits for retention");
    tx.commit().await.unwrap();
    assert!(!adding.await.unwrap().unwrap(), "the event is gone");
    assert_eq!(
        both.pg_count("SELECT count(*) FROM runs WHERE id = 'r'")
            .await,
        0
    );
    assert!(both.run_jobs().await.is_empty());
}
