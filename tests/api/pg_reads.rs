//! The PostgreSQL store's reads (`store/postgres/reads.rs`), at the store's level: a small
//! realistic fixture (events of two sources, runs in every status with their steps and
//! context, deliveries pending, succeeded and dead with their attempts, bodies, the rejected
//! log, paused destinations, tokens, alert states with their history, config objects and
//! schema versions) written with raw SQL into a fresh PostgreSQL schema and, the same rows,
//! into a SQLite store. Each of `Store`'s named reads (`store/queries.rs`) answers on
//! PostgreSQL what the test expects, and the same as SQLite. Hostile filters and cursors
//! (1 MB, lossy UTF-8, `%`, `_`, `\`, NUL, extreme numbers, garbage) answer what SQLite
//! answers (mostly nothing), never an error or a panic, and the pool answers normally
//! afterwards; rows a reader cannot take are corrupt data, not a panic.

use crate::postgres::TestSchema;
use ferry::store::postgres::{PgOptions, PgStore};
use ferry::store::{
    DeadFilter, DeadLetter, DeliveryFilter, DeliveryStatus, EventFilter, FailedRunFilter,
    RunFilter, Store, StoreError,
};
use std::collections::BTreeMap;
use std::fmt::Debug;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// The fixture's clock: 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000;

/// `T0 + ms` as the views show times.
fn at(ms: i64) -> String {
    ferry::clock::rfc3339(T0 + ms)
}

/// An id as Ferry makes them (a prefix and 26 ULID characters), numbered: ids of one kind
/// sort by `n`, and so do dead letters of both kinds by the part after the prefix.
fn id(prefix: &str, n: u32) -> String {
    format!("{prefix}_01HV{n:022}")
}

/// A value of a fixture row, written the same to both databases.
#[derive(Debug, Clone)]
enum V {
    I(i64),
    T(String),
    B(Vec<u8>),
    Null,
}

fn i(n: i64) -> V {
    V::I(n)
}

fn t(s: impl Into<String>) -> V {
    V::T(s.into())
}

fn b(bytes: impl Into<Vec<u8>>) -> V {
    V::B(bytes.into())
}

impl ToSql for V {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            V::I(n) if <i64 as ToSql>::accepts(ty) => n.to_sql(ty, out),
            V::T(s) if <String as ToSql>::accepts(ty) => s.to_sql(ty, out),
            V::B(b) if <Vec<u8> as ToSql>::accepts(ty) => b.to_sql(ty, out),
            V::Null => Ok(IsNull::Yes),
            _ => Err(format!("{self:?} does not go in a column of type {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl rusqlite::ToSql for V {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value};
        Ok(match self {
            V::I(n) => ToSqlOutput::Owned(Value::Integer(*n)),
            V::T(s) => ToSqlOutput::Owned(Value::Text(s.clone())),
            V::B(b) => ToSqlOutput::Owned(Value::Blob(b.clone())),
            V::Null => ToSqlOutput::Owned(Value::Null),
        })
    }
}

/// The two stores on the same rows.
struct Both {
    pg: PgStore,
    lite: Store,
    pg_client: tokio_postgres::Client,
    sqlite: rusqlite::Connection,
    _schema: TestSchema,
    _dir: tempfile::TempDir,
}

impl Both {
    async fn new() -> Both {
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
        let pg_client = schema.client().await;
        let dir = tempfile::tempdir().unwrap();
        let lite = Store::open(
            dir.path(),
            ferry::store::StoreOptions::default(),
            std::sync::Arc::new(ferry::telemetry::Metrics::new()),
        )
        .unwrap();
        let sqlite = rusqlite::Connection::open(dir.path().join("ferry.db")).unwrap();
        sqlite
            .busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        Both {
            pg,
            lite,
            pg_client,
            sqlite,
            _schema: schema,
            _dir: dir,
        }
    }

    /// Both stores with [`fixture`]'s rows.
    async fn with_fixture() -> Both {
        let both = Both::new().await;
        fixture(&both).await;
        both
    }

    /// Inserts one row into `table` of both databases.
    async fn insert(&self, table: &str, columns: &[&str], values: &[V]) {
        let marks: Vec<String> = (1..=values.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            columns.join(", "),
            marks.join(", ")
        );
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        self.pg_client
            .execute(&sql, &params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        self.sqlite
            .execute(
                &sql.replace('$', "?"),
                rusqlite::params_from_iter(values.iter()),
            )
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// A read's answer, to compare the backends: its `Debug`, or its error's message.
fn shown<T: Debug>(answer: &Result<T, StoreError>) -> String {
    match answer {
        Ok(v) => format!("{v:?}"),
        Err(e) => format!("error: {e}"),
    }
}

/// Calls a read on both stores, asserts that they answer the same, and answers PostgreSQL's.
macro_rules! same {
    ($both:expr, $read:ident ( $($arg:expr),* $(,)? )) => {{
        let pg = $both.pg.$read($($arg),*).await;
        let lite = $both.lite.$read($($arg),*).await;
        assert_eq!(
            shown(&pg),
            shown(&lite),
            "{} on PostgreSQL (left) and SQLite (right)",
            stringify!($read($($arg),*))
        );
        pg
    }};
}

const EVENT: &[&str] = &[
    "id",
    "source",
    "event_type",
    "idempotency_key",
    "received_at",
    "headers",
    "payload",
    "payload_expired_at",
];
const RUN: &[&str] = &[
    "id",
    "event_id",
    "flow_id",
    "flow_version",
    "status",
    "pc",
    "resume_pc",
    "next_at",
    "step_attempts",
    "pending",
    "dead",
    "context",
    "steps",
    "error",
    "failed_on",
    "created_at",
    "updated_at",
    "payload_body",
];
const DELIVERY: &[&str] = &[
    "id",
    "event_id",
    "run_id",
    "destination_id",
    "status",
    "attempts",
    "round_attempts",
    "next_attempt_at",
    "created_at",
    "updated_at",
    "last_error",
    "body_id",
];
const ATTEMPT: &[&str] = &[
    "delivery_id",
    "destination_id",
    "attempt",
    "started_at",
    "duration_ms",
    "status_code",
    "response_headers",
    "response_body",
    "error",
    "outcome",
];

/// A run's row: `(id n, event n, flow, status, pc, next_at, error, failed_on, steps,
/// payload_body, created)`; the rest as the writer leaves them.
struct RunRowSpec<'a> {
    n: u32,
    event: u32,
    flow: &'a str,
    status: &'a str,
    pc: i64,
    resume_pc: Option<i64>,
    next_at: Option<i64>,
    step_attempts: i64,
    context: Option<&'a str>,
    steps: String,
    error: Option<&'a str>,
    failed_on: Option<&'a str>,
    created: i64,
    payload_body: Option<i64>,
}

fn opt_i(n: Option<i64>) -> V {
    n.map_or(V::Null, V::I)
}

fn opt_t(s: Option<&str>) -> V {
    s.map_or(V::Null, |s| V::T(s.to_string()))
}

/// An event: `(n, source, type, idempotency key, received, headers, payload, expired)`.
type EventRow = (
    u32,
    &'static str,
    &'static str,
    Option<&'static str>,
    i64,
    &'static str,
    Vec<u8>,
    Option<i64>,
);
/// A delivery: `(n, event n, run n, destination, status, attempts, next attempt, created,
/// updated, last error, body)`.
type DeliveryRow = (
    u32,
    u32,
    u32,
    &'static str,
    &'static str,
    i64,
    Option<i64>,
    i64,
    i64,
    Option<&'static str>,
    Option<i64>,
);
/// An attempt: `(delivery or step, destination, attempt, started, duration, status, headers,
/// body, error, outcome)`.
type AttemptRow = (
    String,
    Option<&'static str>,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<&'static str>,
    Option<Vec<u8>>,
    Option<&'static str>,
    &'static str,
);

/// The fixture, the same in both databases (see the module's comment). Times are ms after
/// `T0`. Laid out as tables, one row a line.
#[rustfmt::skip]
async fn fixture(f: &Both) {
    // Events, in arrival order (`seq` 1 to 6).
    let events: Vec<EventRow> = vec![
        (1, "shop", "order.created", Some("ord-1"), 1_000, r#"{"x-request-id":"r1"}"#, br#"{"order":1}"#.to_vec(), None),
        (2, "shop", "order.created", None, 2_000, "{}", br#"{"order":2,"items":[1,2]}"#.to_vec(), None),
        (3, "crm", "contact.updated", None, 3_000, r#"{"x-crm":"yes"}"#, br#"{"contact":"c-3"}"#.to_vec(), None),
        (4, "crm", "contact.updated", None, 4_000, "{}", Vec::new(), Some(90_000)),
        (5, "shop", "order.deleted", None, 5_000, "not json", vec![0xff, 0xfe, b'{'], None),
        (6, "shop", "order.created", None, 6_000, "{}", br#"{"order":6}"#.to_vec(), None),
    ];
    for (n, source, kind, key, received, headers, payload, expired) in events {
        f.insert("events", EVENT, &[
            t(id("evt", n)), t(source), t(kind), opt_t(key), i(T0 + received), t(headers), b(payload),
            opt_i(expired.map(|e| T0 + e)),
        ]).await;
    }
    for (body, event_seq, data) in [
        (1, 2, r#"{"order":2,"total":30}"#),
        (2, 2, r#"{"to":"warehouse","order":2}"#),
        (3, 6, r#"{"enriched":true}"#),
    ] {
        f.insert("bodies", &["id", "event_seq", "data"], &[i(body), i(event_seq), b(data)]).await;
    }
    let deliver = |index: u32, at: i64, deliveries: &[u32]| {
        let ids: Vec<String> = deliveries.iter().map(|&n| format!("\"{}\"", id("del", n))).collect();
        format!(
            r#"{{"index":{index},"path":"/steps/{index}","kind":"deliver","status":"sent","started_at":{},"duration_ms":0.4,"deliveries":[{}]}}"#,
            T0 + at,
            ids.join(",")
        )
    };
    let runs = vec![
        RunRowSpec {
            n: 1, event: 1, flow: "orders", status: "completed", pc: 1, resume_pc: None, next_at: None,
            step_attempts: 0, context: None, steps: format!("[{}]", deliver(0, 1_000, &[3, 4])),
            error: None, failed_on: None, created: 1_000, payload_body: None,
        },
        RunRowSpec {
            n: 2, event: 2, flow: "orders", status: "waiting", pc: 1, resume_pc: None, next_at: None,
            step_attempts: 0, context: None,
            steps: format!(
                r#"[{{"index":0,"path":"/steps/0","name":"total","kind":"transform","status":"succeeded","output_body":1,"started_at":{},"duration_ms":0.2}},{}]"#,
                T0 + 2_000,
                deliver(1, 2_001, &[7, 8, 17, 99])
            ),
            error: None, failed_on: None, created: 2_000, payload_body: Some(1),
        },
        RunRowSpec {
            n: 5, event: 3, flow: "contacts-sync", status: "failed", pc: 0, resume_pc: None, next_at: None,
            step_attempts: 2, context: None,
            steps: format!(
                r#"[{{"index":0,"path":"/steps/0","kind":"http","status":"failed","error":"500 from https://api.example/contacts","started_at":{},"duration_ms":12.5}}]"#,
                T0 + 3_000
            ),
            error: Some("http step 0: 500 from https://api.example/contacts (100% _done\\)"),
            failed_on: Some("step"), created: 3_000, payload_body: None,
        },
        RunRowSpec {
            n: 6, event: 3, flow: "contacts-hooks", status: "failed", pc: 0, resume_pc: None, next_at: None,
            step_attempts: 0, context: None, steps: format!("[{}]", deliver(0, 3_000, &[12])),
            error: Some("1 delivery dead"), failed_on: Some("deliveries"), created: 3_000, payload_body: None,
        },
        RunRowSpec {
            n: 8, event: 4, flow: "contacts-hooks", status: "completed", pc: 1, resume_pc: None, next_at: None,
            step_attempts: 0, context: None, steps: "[]".into(),
            error: None, failed_on: None, created: 4_000, payload_body: None,
        },
        RunRowSpec {
            n: 9, event: 6, flow: "orders", status: "running", pc: 1, resume_pc: Some(3), next_at: Some(7_000),
            step_attempts: 2, context: Some(r#"{"steps":{"enrich":{"ok":true}}}"#),
            steps: format!(
                r#"[{{"index":0,"path":"/steps/0","kind":"transform","status":"succeeded","output_body":3,"started_at":{},"duration_ms":0.1}},{{"index":1,"path":"/steps/1","kind":"http","status":"retrying","started_at":{},"duration_ms":30.0}}]"#,
                T0 + 6_000,
                T0 + 6_010
            ),
            error: None, failed_on: None, created: 6_000, payload_body: Some(3),
        },
        // Its payload is a body that is not there.
        RunRowSpec {
            n: 10, event: 6, flow: "audit", status: "running", pc: 0, resume_pc: None, next_at: None,
            step_attempts: 0, context: None, steps: "[]".into(),
            error: None, failed_on: None, created: 6_000, payload_body: Some(98),
        },
        // Its step records do not parse.
        RunRowSpec {
            n: 13, event: 6, flow: "orders", status: "failed", pc: 2, resume_pc: None, next_at: None,
            step_attempts: 0, context: None, steps: "not json".into(),
            error: Some("timeout after 30s"), failed_on: Some("step"), created: 6_500, payload_body: None,
        },
    ];
    for r in runs {
        f.insert("runs", RUN, &[
            t(id("run", r.n)), t(id("evt", r.event)), t(r.flow), t("v1"), t(r.status), i(r.pc),
            opt_i(r.resume_pc), opt_i(r.next_at.map(|n| T0 + n)), i(r.step_attempts), i(0), i(0),
            opt_t(r.context), t(r.steps), opt_t(r.error), opt_t(r.failed_on), i(T0 + r.created),
            i(T0 + r.created + 500), opt_i(r.payload_body),
        ]).await;
    }
    let deliveries: Vec<DeliveryRow> = vec![
        (3, 1, 1, "crm_api", "succeeded", 1, None, 1_000, 1_100, None, None),
        (4, 1, 1, "warehouse", "succeeded", 2, None, 1_000, 1_220, Some("503 Service Unavailable"), None),
        (7, 2, 2, "crm_api", "pending", 1, Some(5_000), 2_001, 2_150, Some("connection refused"), None),
        (8, 2, 2, "warehouse", "pending", 0, Some(2_001), 2_001, 2_001, None, Some(2)),
        (12, 3, 6, "hooks", "dead", 3, None, 3_000, 3_900, Some("100% _done\\ then gave up"), None),
        (14, 4, 8, "hooks", "succeeded", 1, None, 3_250, 3_330, None, None),
        // Its body is not there.
        (15, 6, 9, "crm_api", "pending", 0, None, 6_000, 6_000, None, Some(99)),
        (16, 6, 13, "warehouse", "dead", 1, None, 6_500, 6_600, None, None),
        (17, 2, 2, "crm_api", "pending", 0, Some(2_001), 2_001, 2_001, None, None),
    ];
    for (n, event, run, destination, status, attempts, next, created, updated, error, body) in deliveries {
        f.insert("deliveries", DELIVERY, &[
            t(id("del", n)), t(id("evt", event)), t(id("run", run)), t(destination), t(status),
            i(attempts), i(attempts), opt_i(next.map(|n| T0 + n)), i(T0 + created), i(T0 + updated),
            opt_t(error), opt_i(body),
        ]).await;
    }
    // Attempts, in the order they were made (their ids).
    let step = |run: u32, index: u32| format!("{}/{index}", id("run", run));
    let attempts: Vec<AttemptRow> = vec![
        (id("del", 3), Some("crm_api"), 1, 1_050, 40, Some(200), Some(r#"{"content-type":"text/plain"}"#), Some(b"ok".to_vec()), None, "succeeded"),
        (id("del", 4), Some("warehouse"), 1, 1_060, 10, Some(503), None, Some(vec![0xc3, 0x28]), Some("503 Service Unavailable"), "retry"),
        (id("del", 4), Some("warehouse"), 2, 1_200, 15, Some(204), Some("not json"), Some(Vec::new()), None, "succeeded"),
        (id("del", 7), Some("crm_api"), 1, 2_100, 50, None, None, None, Some("connection refused"), "retry"),
        (step(5, 0), None, 1, 3_000, 12, Some(500), None, Some(b"oops".to_vec()), Some("500"), "retry"),
        (step(5, 0), None, 2, 3_010, 11, Some(500), None, None, Some("500"), "failed"),
        (id("del", 12), Some("hooks"), 1, 3_100, 20, Some(500), None, None, Some("500"), "retry"),
        (id("del", 12), Some("hooks"), 2, 3_200, 20, Some(502), None, None, Some("502"), "retry"),
        (id("del", 12), Some("hooks"), 3, 3_300, 25, None, None, None, Some("100% _done\\ then gave up"), "failed"),
        // At the same time as the one before: newer by id.
        (id("del", 14), Some("hooks"), 1, 3_300, 30, Some(200), None, None, None, "succeeded"),
        (step(9, 1), None, 1, 6_010, 30, None, None, None, Some("timed out"), "retry"),
        (id("del", 16), Some("warehouse"), 1, 6_550, 5, Some(410), None, None, None, "failed"),
    ];
    for (delivery, destination, attempt, started, duration, status, headers, body, error, outcome) in attempts {
        f.insert("attempts", ATTEMPT, &[
            t(delivery), opt_t(destination), i(attempt), i(T0 + started), i(duration), opt_i(status),
            opt_t(headers), body.map_or(V::Null, V::B), opt_t(error), t(outcome),
        ]).await;
    }
    for (source, received, status, error, reason, body) in [
        ("shop", 500, 400, "invalid_json", "expected value at line 1 column 1", b"{oops".to_vec()),
        ("crm", 2_500, 401, "invalid_signature", "no webhook-signature header", vec![0xff, 0x00, b'x']),
        ("shop", 5_500, 422, "schema_mismatch", "/order: expected integer", br#"{"order":"x"}"#.to_vec()),
    ] {
        f.insert("rejections", &["source", "received_at", "status", "error", "reason", "body"], &[
            t(source), i(T0 + received), i(status), t(error), t(reason), b(body),
        ]).await;
    }
    // Not in id order, so that an order by id shows.
    for (destination, by, reason, since) in [
        ("hooks", "api", "maintenance window", 100),
        ("crm_api", "auto", "circuit open for 10 minutes", 200),
    ] {
        f.insert("paused_destinations", &["destination_id", "paused_by", "reason", "since"], &[
            t(destination), t(by), t(reason), i(T0 + since),
        ]).await;
    }
    for (n, name, scope, hash, created, revoked) in [
        (1, "ci", "admin", vec![1u8; 32], 10, None),
        (2, "old", "read", vec![2u8; 32], 20, Some(30)),
        (3, "grafana", "read", vec![3u8; 32], 40, None),
    ] {
        f.insert("api_tokens", &["id", "name", "scope", "hash", "created_at", "revoked_at"], &[
            t(id("tok", n)), t(name), t(scope), b(hash), i(T0 + created), opt_i(revoked.map(|r| T0 + r)),
        ]).await;
    }
    for (alert, firing, since, message, subject, notice, notified) in [
        ("store_down", 0, 50, "the store writes again", "store", None, 0),
        ("dead_hooks", 1, 3_900, "1 dead delivery to hooks", "destination hooks", Some(3_900), 1),
    ] {
        f.insert("alert_states", &["alert_id", "firing", "since", "message", "subject", "last_notice_at", "notified"], &[
            t(alert), i(firing), i(T0 + since), t(message), t(subject), opt_i(notice.map(|n| T0 + n)), i(notified),
        ]).await;
    }
    for (alert, at, firing, notices) in [
        ("dead_hooks", 1_000, 1, r#"[{"channel":"ops","error":null}]"#),
        ("store_down", 60, 0, r#"[{"channel":"ops","error":"timeout"}]"#),
        ("dead_hooks", 2_000, 0, "[]"),
        ("dead_hooks", 3_900, 1, "not json"),
    ] {
        f.insert("alert_history", &["alert_id", "at", "firing", "subject", "message", "notices"], &[
            t(alert), i(T0 + at), i(firing), t("destination hooks"), t(format!("change at {at}")), t(notices),
        ]).await;
    }
    for (kind, object, spec, created) in [
        ("sources", "shop2", r#"{"verify":{"kind":"none"}}"#, 5),
        ("destinations", "crm_api", r#"{"url":"https://crm.example/hook"}"#, 6),
        ("flows", "orders", r#"{"source":"shop","steps":[]}"#, 7),
        ("destinations", "archive", r#"{"url":"https://archive.example/in"}"#, 8),
    ] {
        f.insert("config_objects", &["kind", "id", "spec", "created_at", "updated_at"], &[
            t(kind), t(object), t(spec), i(T0 + created), i(T0 + created + 1),
        ]).await;
    }
    for (event_type, version, schema, created) in [
        ("order.created", 2, r#"{"type":"object","required":["order"]}"#, 2),
        ("order.created", 1, r#"{"type":"object"}"#, 1),
        ("contact.updated", 1, "{bad json", 3),
    ] {
        f.insert("schema_versions", &["event_type", "version", "schema", "created_at"], &[
            t(event_type), i(version), t(schema), i(T0 + created),
        ]).await;
    }
}

fn evt(n: u32) -> String {
    id("evt", n)
}

fn run(n: u32) -> String {
    id("run", n)
}

fn del(n: u32) -> String {
    id("del", n)
}

fn ids<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|x| id(x).to_string()).collect()
}

/// The reads the deliverer and the run worker load (`pending_jobs` to `run_row`).
#[tokio::test]
async fn what_the_deliverer_and_the_run_worker_load_answers_the_same_on_both_backends() {
    let f = Both::with_fixture().await;
    // 1. ping
    same!(f, ping()).unwrap();

    // 2. pending_jobs: a NULL due time first, then by due time, a tie by id.
    let jobs = same!(f, pending_jobs(10)).unwrap();
    let order: Vec<(String, i64, u32)> = jobs
        .iter()
        .map(|j| (j.id.clone(), j.due_at, j.round_attempts))
        .collect();
    assert_eq!(
        order,
        [
            (del(15), 0, 0),
            (del(8), T0 + 2_001, 0),
            (del(17), T0 + 2_001, 0),
            (del(7), T0 + 5_000, 1)
        ]
    );
    assert_eq!(jobs[0].run_id, run(9));
    assert_eq!(jobs[0].event_id, evt(6));
    assert_eq!(jobs[1].destination_id, "warehouse");
    assert_eq!(jobs[1].created_at, T0 + 2_001);
    assert!(jobs.iter().all(|j| j.payload.is_none()));
    assert_eq!(
        ids(&same!(f, pending_jobs(2)).unwrap(), |j| &j.id),
        [del(15), del(8)]
    );
    assert_eq!(
        ids(&same!(f, pending_jobs(0)).unwrap(), |j| &j.id),
        Vec::<String>::new()
    );
    assert_eq!(same!(f, pending_jobs(usize::MAX)).unwrap().len(), 4);

    // 3, 4. delivery_payload_size, delivery_payload: the event's payload, or the delivery's
    // body; a body named but missing is corrupt data.
    assert_eq!(same!(f, delivery_payload_size(&del(3))).unwrap(), Some(11));
    assert_eq!(same!(f, delivery_payload_size(&del(8))).unwrap(), Some(28));
    assert_eq!(same!(f, delivery_payload_size(&del(14))).unwrap(), Some(0));
    assert_eq!(same!(f, delivery_payload_size("del_nope")).unwrap(), None);
    let missing = same!(f, delivery_payload_size(&del(15))).unwrap_err();
    assert!(matches!(missing, StoreError::Corrupt(_)), "{missing}");
    assert_eq!(
        same!(f, delivery_payload(&del(3))).unwrap().as_deref(),
        Some(&br#"{"order":1}"#[..])
    );
    assert_eq!(
        same!(f, delivery_payload(&del(8))).unwrap().as_deref(),
        Some(&br#"{"to":"warehouse","order":2}"#[..])
    );
    assert_eq!(same!(f, delivery_payload("del_nope")).unwrap(), None);
    let missing = same!(f, delivery_payload(&del(15))).unwrap_err();
    assert_eq!(
        missing.to_string(),
        format!(
            "stored data is corrupt: delivery {} names a body that is not in the store",
            del(15)
        )
    );

    // 5. paused_destinations, by id.
    let paused = same!(f, paused_destinations()).unwrap();
    assert_eq!(ids(&paused, |(d, _)| d), ["crm_api", "hooks"]);
    assert_eq!(paused[1].1.by, "api");
    assert_eq!(paused[1].1.reason, "maintenance window");
    assert_eq!(paused[1].1.since, T0 + 100);

    // 6. due_runs: a NULL due time first (as 0).
    assert_eq!(
        same!(f, due_runs()).unwrap(),
        [(run(10), 0), (run(9), T0 + 7_000)]
    );

    // 7. run_row
    let row = same!(f, run_row(&run(9))).unwrap().unwrap();
    assert_eq!(
        (
            row.event_id.as_str(),
            row.event_type.as_str(),
            row.source.as_str()
        ),
        (evt(6).as_str(), "order.created", "shop")
    );
    assert_eq!(
        (row.pc, row.resume_pc, row.step_attempts, row.next_at),
        (1, Some(3), 2, Some(T0 + 7_000))
    );
    assert_eq!(&row.payload[..], br#"{"order":6}"#);
    let body = row.payload_body.unwrap();
    assert_eq!((body.id, &body.data[..]), (3, &br#"{"enriched":true}"#[..]));
    assert_eq!(
        row.context.as_deref(),
        Some(r#"{"steps":{"enrich":{"ok":true}}}"#)
    );
    assert!(!row.payload_expired);
    let expired = same!(f, run_row(&run(8))).unwrap().unwrap();
    assert!(expired.payload_expired && expired.payload.is_empty());
    assert!(expired.payload_body.is_none());
    assert!(same!(f, run_row("run_nope")).unwrap().is_none());
    let missing = same!(f, run_row(&run(10))).unwrap_err();
    assert_eq!(
        missing.to_string(),
        format!(
            "stored data is corrupt: run {}: its payload is body 98, which is not in the store",
            run(10)
        )
    );
}

/// An event, with its runs, deliveries, attempts and steps; event lists.
#[tokio::test]
async fn events_as_the_api_and_the_console_show_them_answer_the_same_on_both_backends() {
    let f = Both::with_fixture().await;
    // 8. event: its runs by id, each with its deliveries (with their attempts).
    let event = same!(f, event(&evt(1))).unwrap().unwrap();
    assert_eq!(event.source, "shop");
    assert_eq!(event.idempotency_key.as_deref(), Some("ord-1"));
    assert_eq!(event.received_at, "2023-11-14T22:13:21.000Z");
    assert_eq!(event.headers, serde_json::json!({"x-request-id": "r1"}));
    assert_eq!(event.payload, serde_json::json!({"order": 1}));
    assert_eq!(ids(&event.runs, |r| &r.id), [run(1)]);
    let deliveries = &event.runs[0].deliveries;
    assert_eq!(ids(deliveries, |d| &d.id), [del(3), del(4)]);
    assert_eq!(deliveries[1].status, DeliveryStatus::Succeeded);
    let attempts = deliveries[1].attempts.as_ref().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].response_body.as_deref(), Some("\u{fffd}("));
    assert_eq!(attempts[0].status_code, Some(503));
    assert_eq!(
        attempts[1].response_headers,
        Some(serde_json::json!("not json"))
    );
    let odd = same!(f, event(&evt(5))).unwrap().unwrap();
    assert_eq!(odd.headers, serde_json::json!("not json"));
    assert_eq!(odd.payload, serde_json::json!("\u{fffd}\u{fffd}{"));
    assert!(odd.runs.is_empty());
    let gone = same!(f, event(&evt(4))).unwrap().unwrap();
    assert!(gone.payload_expired);
    assert_eq!(gone.payload, serde_json::Value::Null);
    assert!(gone.runs[0].deliveries[0].payload_expired);
    for n in [2, 3, 6] {
        same!(f, event(&evt(n))).unwrap().unwrap();
    }
    assert!(same!(f, event("evt_nope")).unwrap().is_none());

    // 9. event_with_attempts_and_steps: run 13's step records do not parse.
    let (event, details) = same!(f, event_with_attempts_and_steps(&evt(2)))
        .unwrap()
        .unwrap();
    assert_eq!(ids(&event.runs, |r| &r.id), [run(2)]);
    assert_eq!(details.len(), 1);
    let steps = &details[0].steps;
    assert_eq!(
        steps[0]["output"],
        serde_json::json!({"order": 2, "total": 30})
    );
    assert_eq!(
        steps[0]["input"],
        serde_json::json!({"order": 2, "items": [1, 2]})
    );
    assert_eq!(
        steps[1]["input"],
        serde_json::json!({"order": 2, "total": 30})
    );
    let shown: Vec<&str> = steps[1]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(shown, [del(7), del(8), del(17)]);
    assert!(steps[1]["deliveries"][0].get("attempts").is_none());
    let (_, details) = same!(f, event_with_attempts_and_steps(&evt(3)))
        .unwrap()
        .unwrap();
    assert_eq!(ids(&details, |d| &d.summary.id), [run(5), run(6)]);
    let corrupt = same!(f, event_with_attempts_and_steps(&evt(6))).unwrap_err();
    assert!(corrupt.to_string().contains("step records"), "{corrupt}");
    for n in [1, 4, 5] {
        same!(f, event_with_attempts_and_steps(&evt(n)))
            .unwrap()
            .unwrap();
    }
    assert!(
        same!(f, event_with_attempts_and_steps("evt_nope"))
            .unwrap()
            .is_none()
    );

    // 10. stored_event
    let stored = same!(f, stored_event(&evt(3))).unwrap().unwrap();
    assert_eq!(
        (
            stored.source.as_str(),
            stored.event_type.as_str(),
            stored.received_at,
            stored.runs
        ),
        ("crm", "contact.updated", T0 + 3_000, 2)
    );
    assert_eq!(stored.headers, r#"{"x-crm":"yes"}"#);
    assert_eq!(
        stored.payload.as_deref(),
        Some(&br#"{"contact":"c-3"}"#[..])
    );
    assert_eq!(
        same!(f, stored_event(&evt(4))).unwrap().unwrap().payload,
        None
    );
    assert!(same!(f, stored_event("evt_nope")).unwrap().is_none());

    // 11, 12. events, events_with_payload: newest first, their status from their runs.
    let all = same!(f, events(&EventFilter::default(), None, 10)).unwrap();
    let listed: Vec<(String, &str)> = all
        .iter()
        .map(|e| (e.id.clone(), e.status.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            (evt(6), "pending"),
            (evt(5), "unrouted"),
            (evt(4), "succeeded"),
            (evt(3), "failed"),
            (evt(2), "pending"),
            (evt(1), "succeeded")
        ]
    );
    assert!(all[2].payload_expired && !all[3].payload_expired);
    let page = same!(f, events(&EventFilter::default(), Some(&evt(4)), 2)).unwrap();
    assert_eq!(ids(&page, |e| &e.id), [evt(3), evt(2)]);
    let shop = EventFilter {
        source: Some("shop".into()),
        event_type: Some("order.created".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(&same!(f, events(&shop, None, 10)).unwrap(), |e| &e.id),
        [evt(6), evt(2), evt(1)]
    );
    let window = EventFilter {
        since: Some(T0 + 2_000),
        until: Some(T0 + 5_000),
        ..Default::default()
    };
    assert_eq!(
        ids(&same!(f, events(&window, None, 10)).unwrap(), |e| &e.id),
        [evt(4), evt(3), evt(2)]
    );
    let pending = EventFilter {
        status: Some("pending".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(&same!(f, events(&pending, None, 1)).unwrap(), |e| &e.id),
        [evt(6)]
    );
    assert!(
        same!(f, events(&EventFilter::default(), Some("evt_nope"), 10))
            .unwrap()
            .is_empty()
    );
    let with = same!(f, events_with_payload(&shop, None, 10)).unwrap();
    assert_eq!(with[2].1, br#"{"order":1}"#);
    let with = same!(
        f,
        events_with_payload(&EventFilter::default(), Some(&evt(6)), 10)
    )
    .unwrap();
    assert_eq!(with[0].1, [0xff, 0xfe, b'{']);
    assert!(with[1].1.is_empty());
}

/// Deliveries and runs, one or listed, filtered and paged.
#[tokio::test]
async fn deliveries_and_runs_as_the_api_shows_them_answer_the_same_on_both_backends() {
    let f = Both::with_fixture().await;
    // 13. delivery, with its attempts.
    let d = same!(f, delivery(&del(12))).unwrap().unwrap();
    assert_eq!(d.status, DeliveryStatus::Dead);
    assert_eq!((d.attempt_count, d.next_attempt_at.as_deref()), (3, None));
    assert_eq!(
        d.attempts
            .as_ref()
            .unwrap()
            .iter()
            .map(|a| a.attempt)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let d = same!(f, delivery(&del(7))).unwrap().unwrap();
    assert_eq!(d.next_attempt_at, Some(at(5_000)));
    assert_eq!(d.last_error.as_deref(), Some("connection refused"));
    assert!(same!(f, delivery("del_nope")).unwrap().is_none());

    // 14. deliveries: newest first (id order), filtered, paged.
    let all = same!(f, deliveries(&DeliveryFilter::default(), None, 100)).unwrap();
    assert_eq!(
        ids(&all, |d| &d.id),
        [17, 16, 15, 14, 12, 8, 7, 4, 3].map(del)
    );
    assert!(all.iter().all(|d| d.attempts.is_none()));
    let crm_pending = DeliveryFilter {
        destination_id: Some("crm_api".into()),
        status: Some("pending".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(
            &same!(f, deliveries(&crm_pending, None, 100)).unwrap(),
            |d| &d.id
        ),
        [17, 15, 7].map(del)
    );
    assert_eq!(
        ids(
            &same!(f, deliveries(&crm_pending, Some(&del(17)), 1)).unwrap(),
            |d| &d.id
        ),
        [del(15)]
    );
    let of_event = DeliveryFilter {
        event_id: Some(evt(1)),
        ..Default::default()
    };
    assert_eq!(
        ids(&same!(f, deliveries(&of_event, None, 100)).unwrap(), |d| &d
            .id),
        [del(4), del(3)]
    );

    // 15, 16. run_detail, run_summary
    let detail = same!(f, run_detail(&run(9))).unwrap().unwrap();
    assert_eq!(detail.next_at, Some(at(7_000)));
    assert_eq!(detail.summary.step_index, 1);
    assert_eq!(
        detail.steps[0]["output"],
        serde_json::json!({"enriched": true})
    );
    assert_eq!(detail.steps[0]["started_at"], serde_json::json!(at(6_000)));
    assert_eq!(
        detail.steps[1]["input"],
        serde_json::json!({"enriched": true})
    );
    let tried = detail.steps[1]["attempts"].as_array().unwrap();
    assert_eq!(tried.len(), 1);
    assert_eq!(tried[0]["error"], "timed out");
    let detail = same!(f, run_detail(&run(5))).unwrap().unwrap();
    assert_eq!(detail.next_at, None);
    let tried = detail.steps[0]["attempts"].as_array().unwrap();
    assert_eq!(tried.len(), 2);
    assert_eq!(tried[0]["response_body"], "oops");
    let detail = same!(f, run_detail(&run(1))).unwrap().unwrap();
    assert_eq!(detail.steps[0]["deliveries"].as_array().unwrap().len(), 2);
    for n in [2, 6, 8, 10] {
        same!(f, run_detail(&run(n))).unwrap().unwrap();
    }
    assert!(matches!(
        same!(f, run_detail(&run(13))),
        Err(StoreError::Corrupt(_))
    ));
    assert!(same!(f, run_detail("run_nope")).unwrap().is_none());
    let summary = same!(f, run_summary(&run(8))).unwrap().unwrap();
    assert_eq!(
        (
            summary.flow_id.as_str(),
            summary.status.as_str(),
            summary.payload_expired
        ),
        ("contacts-hooks", "completed", true)
    );
    assert_eq!(summary.created_at, at(4_000));
    assert_eq!(summary.updated_at, at(4_500));
    assert!(same!(f, run_summary("run_nope")).unwrap().is_none());

    // 17. runs
    let all = same!(f, runs(&RunFilter::default(), None, 100)).unwrap();
    assert_eq!(ids(&all, |r| &r.id), [13, 10, 9, 8, 6, 5, 2, 1].map(run));
    let orders = RunFilter {
        flow_id: Some("orders".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(&same!(f, runs(&orders, Some(&run(13)), 2)).unwrap(), |r| &r
            .id),
        [run(9), run(2)]
    );
    let failed_of_3 = RunFilter {
        event_id: Some(evt(3)),
        status: Some("failed".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(&same!(f, runs(&failed_of_3, None, 100)).unwrap(), |r| &r.id),
        [run(6), run(5)]
    );

    // 18. failed_runs: oldest first, after a cursor; the error as a plain substring.
    let all = same!(f, failed_runs(&FailedRunFilter::default(), None, 100)).unwrap();
    assert_eq!(ids(&all, |r| &r.id), [5, 6, 13].map(run));
    assert_eq!(
        ids(
            &same!(
                f,
                failed_runs(&FailedRunFilter::default(), Some(&run(5)), 1)
            )
            .unwrap(),
            |r| &r.id
        ),
        [run(6)]
    );
    for (needle, expected) in [
        ("100% _done\\", vec![run(5)]),
        ("%", vec![run(5)]),
        ("_", vec![run(5)]),
        ("\\", vec![run(5)]),
        ("timeout", vec![run(13)]),
        ("1 delivery", vec![run(6)]),
        ("100%_", vec![]),
        ("", vec![run(5), run(6), run(13)]),
    ] {
        let filter = FailedRunFilter {
            error: Some(needle.into()),
            ..Default::default()
        };
        assert_eq!(
            ids(&same!(f, failed_runs(&filter, None, 100)).unwrap(), |r| &r
                .id),
            expected,
            "{needle}"
        );
    }
    let windowed = FailedRunFilter {
        flow_id: Some("orders".into()),
        since: Some(T0 + 6_500),
        until: Some(T0 + 6_501),
        ..Default::default()
    };
    assert_eq!(
        ids(&same!(f, failed_runs(&windowed, None, 100)).unwrap(), |r| {
            &r.id
        }),
        [run(13)]
    );
}

/// Dead letters of both kinds, dead deliveries, the rejected log.
#[tokio::test]
async fn dead_letters_and_the_rejected_log_answer_the_same_on_both_backends() {
    let f = Both::with_fixture().await;
    // 19. dead_letters: dead deliveries and runs failed on a step, interleaved by time.
    let letters = same!(f, dead_letters(None, 100)).unwrap();
    let kinds: Vec<(&str, String)> = letters
        .iter()
        .map(|l| match l {
            DeadLetter::Delivery(d) => ("delivery", d.id.clone()),
            DeadLetter::Run(r) => ("run", r.id.clone()),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("delivery", del(16)),
            ("run", run(13)),
            ("delivery", del(12)),
            ("run", run(5))
        ]
    );
    assert_eq!(
        ids(&same!(f, dead_letters(Some(&del(16)), 2)).unwrap(), |l| l
            .id()),
        [run(13), del(12)]
    );
    assert_eq!(
        ids(&same!(f, dead_letters(Some(&run(12)), 100)).unwrap(), |l| l
            .id()),
        [run(5)]
    );

    // 20, 21. dead_deliveries, dead_delivery_page
    assert_eq!(
        same!(f, dead_deliveries(&DeadFilter::default(), None, 100)).unwrap(),
        [del(12), del(16)]
    );
    assert_eq!(
        same!(
            f,
            dead_deliveries(&DeadFilter::default(), Some(&del(12)), 100)
        )
        .unwrap(),
        [del(16)]
    );
    for (needle, expected) in [
        ("%", vec![del(12)]),
        ("_", vec![del(12)]),
        ("\\", vec![del(12)]),
        ("%_d", vec![]),
        ("", vec![del(12), del(16)]),
    ] {
        let filter = DeadFilter {
            error: Some(needle.into()),
            ..Default::default()
        };
        assert_eq!(
            same!(f, dead_deliveries(&filter, None, 100)).unwrap(),
            expected,
            "{needle}"
        );
        let page = same!(f, dead_delivery_page(&filter, None, 100)).unwrap();
        let mut newest_first = expected.clone();
        newest_first.reverse();
        assert_eq!(ids(&page, |d| &d.id), newest_first, "{needle}");
    }
    let hooks = DeadFilter {
        destination_id: Some("hooks".into()),
        since: Some(T0 + 3_000),
        until: Some(T0 + 3_001),
        ..Default::default()
    };
    assert_eq!(
        same!(f, dead_deliveries(&hooks, None, 100)).unwrap(),
        [del(12)]
    );
    let page = same!(
        f,
        dead_delivery_page(&DeadFilter::default(), Some(&del(16)), 100)
    )
    .unwrap();
    assert_eq!(ids(&page, |d| &d.id), [del(12)]);
    assert_eq!(page[0].attempt_count, 3);
    assert!(page[0].attempts.is_none());

    // 22. rejections: newest first, paged by entry id.
    let log = same!(f, rejections(None, 10)).unwrap();
    assert_eq!(ids(&log, |r| &r.id), ["3", "2", "1"]);
    assert_eq!(log[1].body, "\u{fffd}\u{0}x");
    assert_eq!(
        (
            log[0].status,
            log[0].error.as_str(),
            log[0].received_at.as_str()
        ),
        (422, "schema_mismatch", at(5_500).as_str())
    );
    assert_eq!(
        ids(&same!(f, rejections(Some(3), 1)).unwrap(), |r| &r.id),
        ["2"]
    );

    // 23. events_and_rejections_of
    let (events, refused) = same!(f, events_and_rejections_of("shop", 2)).unwrap();
    assert_eq!(ids(&events, |e| &e.id), [evt(6), evt(5)]);
    assert_eq!(ids(&refused, |r| &r.id), ["3", "1"]);
    let (events, refused) = same!(f, events_and_rejections_of("crm", 10)).unwrap();
    assert_eq!(ids(&events, |e| &e.id), [evt(4), evt(3)]);
    assert_eq!(ids(&refused, |r| &r.id), ["2"]);
}

/// The API's config objects, schema versions, what is unfinished, tokens.
#[tokio::test]
async fn config_objects_and_tokens_answer_the_same_on_both_backends() {
    let f = Both::with_fixture().await;
    // 24, 25. api_objects (by kind, then id), schema_versions (oldest first).
    let objects = same!(f, api_objects()).unwrap();
    let keys: Vec<(&str, &str)> = objects
        .iter()
        .map(|o| (o.kind.as_str(), o.id.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("destinations", "archive"),
            ("destinations", "crm_api"),
            ("flows", "orders"),
            ("sources", "shop2")
        ]
    );
    assert_eq!(objects[3].spec, r#"{"verify":{"kind":"none"}}"#);
    assert_eq!(
        (objects[3].created_at, objects[3].updated_at),
        (T0 + 5, T0 + 6)
    );
    let versions = same!(f, schema_versions("order.created")).unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        versions[1].schema,
        serde_json::json!({"type": "object", "required": ["order"]})
    );
    assert_eq!(versions[0].created_at, T0 + 1);
    assert_eq!(
        same!(f, schema_versions("contact.updated")).unwrap()[0].schema,
        serde_json::Value::Null
    );
    assert!(same!(f, schema_versions("nope")).unwrap().is_empty());

    // 26, 27. pending_deliveries_to, unfinished_runs_of
    assert_eq!(same!(f, pending_deliveries_to("crm_api")).unwrap(), 3);
    assert_eq!(same!(f, pending_deliveries_to("hooks")).unwrap(), 0);
    assert_eq!(same!(f, unfinished_runs_of("orders")).unwrap(), 2);
    assert_eq!(same!(f, unfinished_runs_of("audit")).unwrap(), 1);
    assert_eq!(same!(f, unfinished_runs_of("contacts-sync")).unwrap(), 0);

    // 28, 29. tokens (live, oldest first), token_scope
    let tokens = same!(f, tokens()).unwrap();
    assert_eq!(ids(&tokens, |t| &t.id), [id("tok", 1), id("tok", 3)]);
    assert_eq!(
        (tokens[1].name.as_str(), tokens[1].scope.as_str()),
        ("grafana", "read")
    );
    assert_eq!(tokens[0].created_at, at(10));
    assert_eq!(
        same!(f, token_scope(&[1u8; 32])).unwrap().as_deref(),
        Some("admin")
    );
    assert_eq!(same!(f, token_scope(&[2u8; 32])).unwrap(), None);
    assert_eq!(same!(f, token_scope(&[])).unwrap(), None);
}

/// What metrics, alert rules and the console's health views read.
#[tokio::test]
async fn health_reads_answer_the_same_on_both_backends() {
    let f = Both::with_fixture().await;
    // 30 to 33. backlog and the reads that take it with other things.
    let backlog = same!(f, backlog(T0 + 3_000)).unwrap();
    let lines: Vec<(&str, i64, Option<i64>)> = backlog
        .iter()
        .map(|b| (b.destination_id.as_str(), b.pending, b.oldest_due))
        .collect();
    assert_eq!(
        lines,
        [
            ("crm_api", 3, Some(T0 + 2_001)),
            ("warehouse", 1, Some(T0 + 2_001))
        ]
    );
    let early = same!(f, backlog(T0)).unwrap();
    assert_eq!(
        early.iter().map(|b| b.oldest_due).collect::<Vec<_>>(),
        [None, None]
    );
    let (backlog, dead, failed) = same!(f, backlog_dead_and_failed_runs(T0 + 10_000)).unwrap();
    assert_eq!(backlog[0].oldest_due, Some(T0 + 2_001));
    assert_eq!(
        dead,
        [("hooks".to_string(), 1), ("warehouse".to_string(), 1)]
    );
    assert_eq!(failed, 2);
    let (rejected, _, _, alerts) = same!(f, rejected_backlog_dead_and_alerts(T0)).unwrap();
    assert_eq!(rejected, 3);
    assert_eq!(ids(&alerts, |a| &a.alert_id), ["dead_hooks", "store_down"]);
    assert!(alerts[0].firing && alerts[0].notified && !alerts[1].firing);
    let wanted = vec![
        "hooks".to_string(),
        "nowhere".to_string(),
        "crm_api".to_string(),
    ];
    let (_, _, recent) = same!(f, recent_attempts_backlog_and_dead(wanted.clone(), 2, T0)).unwrap();
    let recent: Vec<Vec<(String, i64)>> = recent
        .iter()
        .map(|list| {
            list.iter()
                .map(|a| (a.delivery_id.clone(), a.attempt))
                .collect()
        })
        .collect();
    assert_eq!(
        recent,
        [
            vec![(del(14), 1), (del(12), 3)],
            vec![],
            vec![(del(7), 1), (del(3), 1)]
        ]
    );

    // 34, 35. recent_attempts, last_attempts: newest first, a tie in time by id.
    let recent = same!(f, recent_attempts("hooks", 10)).unwrap();
    assert_eq!(
        recent
            .iter()
            .map(|a| (a.delivery_id.clone(), a.started_at))
            .collect::<Vec<_>>(),
        [
            (del(14), T0 + 3_300),
            (del(12), T0 + 3_300),
            (del(12), T0 + 3_200),
            (del(12), T0 + 3_100)
        ]
    );
    assert_eq!((recent[1].status_code, recent[1].duration_ms), (None, 25));
    assert_eq!(
        same!(f, last_attempts("hooks", 2)).unwrap(),
        [
            ("succeeded".to_string(), None, T0 + 3_300),
            (
                "failed".to_string(),
                Some("100% _done\\ then gave up".to_string()),
                T0 + 3_300
            )
        ]
    );
    assert!(same!(f, last_attempts("warehouse", 0)).unwrap().is_empty());

    // 36, 37. attempt_counts, attempt_counts_of
    assert_eq!(same!(f, attempt_counts("hooks", T0)).unwrap(), (4, 3));
    assert_eq!(
        same!(f, attempt_counts("hooks", T0 + 3_250)).unwrap(),
        (2, 1)
    );
    assert_eq!(same!(f, attempt_counts("nowhere", T0)).unwrap(), (0, 0));
    let of = vec![
        "warehouse".to_string(),
        "crm_api".to_string(),
        "nowhere".to_string(),
    ];
    let pg: BTreeMap<_, _> =
        f.pg.attempt_counts_of(of.clone(), T0)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let lite: BTreeMap<_, _> = f
        .lite
        .attempt_counts_of(of, T0)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(pg, lite);
    assert_eq!(
        pg.into_iter().collect::<Vec<_>>(),
        [
            ("crm_api".to_string(), (2, 1)),
            ("nowhere".to_string(), (0, 0)),
            ("warehouse".to_string(), (3, 2))
        ]
    );

    // 38. delivery_latencies: from the delivery's creation to its success's end.
    assert_eq!(
        same!(f, delivery_latencies("warehouse", T0)).unwrap(),
        [1_200 + 15 - 1_000]
    );
    assert_eq!(
        same!(f, delivery_latencies("hooks", T0)).unwrap(),
        [3_300 + 30 - 3_250]
    );
    assert_eq!(
        same!(f, delivery_latencies("crm_api", T0 + 1_051)).unwrap(),
        Vec::<i64>::new()
    );

    // 39. dead_count
    assert_eq!(same!(f, dead_count(None)).unwrap(), 2);
    assert_eq!(same!(f, dead_count(Some("hooks"))).unwrap(), 1);
    assert_eq!(same!(f, dead_count(Some("crm_api"))).unwrap(), 0);

    // 40. last_event_per_source, by source.
    assert_eq!(
        same!(f, last_event_per_source()).unwrap(),
        [
            ("crm".to_string(), T0 + 4_000),
            ("shop".to_string(), T0 + 6_000)
        ]
    );

    // 41, 42. alert_states, alert_states_and_history
    let states = same!(f, alert_states()).unwrap();
    assert_eq!(states[0].last_notice_at, Some(T0 + 3_900));
    assert_eq!(states[1].message, "the store writes again");
    let rules = vec![
        "dead_hooks".to_string(),
        "nope".to_string(),
        "store_down".to_string(),
    ];
    let (states, histories) = same!(f, alert_states_and_history(rules.clone(), 2)).unwrap();
    assert_eq!(states.len(), 2);
    let at_of = |h: &Vec<ferry::store::AlertChange>| {
        h.iter()
            .map(|c| (c.at, c.firing, c.notices.len()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        at_of(&histories[0]),
        [(T0 + 3_900, true, 0), (T0 + 2_000, false, 0)]
    );
    assert!(histories[1].is_empty());
    assert_eq!(histories[2][0].notices[0].error.as_deref(), Some("timeout"));
    assert_eq!(histories[2][0].alert_id, "store_down");
    let (_, histories) = same!(f, alert_states_and_history(rules.clone(), 10)).unwrap();
    assert_eq!(histories[0][2].notices[0].channel, "ops");
}

/// Retention's reads (space is PostgreSQL's own) and the counts.
#[tokio::test]
async fn retention_reads_and_counts_answer_on_both_backends() {
    let f = Both::with_fixture().await;
    // 43. space: PostgreSQL's own figures, not SQLite's.
    let space = f.pg.space().await.unwrap();
    assert_eq!(space.page_size, 8192);
    assert!(space.pages > 10, "{space:?}");
    assert_eq!((space.free_pages, space.incremental), (0, false));
    let size: i64 = f
        .pg_client
        .query_one("SELECT pg_total_relation_size('events')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(space.pages * space.page_size > size, "{space:?} {size}");

    // 44 to 47. oldest_event and the counts.
    assert_eq!(same!(f, oldest_event()).unwrap(), Some(T0 + 1_000));
    assert_eq!(same!(f, count_events()).unwrap(), 6);
    assert_eq!(same!(f, count_rejections()).unwrap(), 3);
    assert_eq!(
        same!(f, attempt_times(&del(12))).unwrap(),
        [T0 + 3_100, T0 + 3_200, T0 + 3_300]
    );
    assert_eq!(
        same!(f, attempt_times("del_nope")).unwrap(),
        Vec::<i64>::new()
    );
}

#[tokio::test]
async fn an_empty_store_answers_nothing_on_both_backends() {
    let f = Both::new().await;
    same!(f, ping()).unwrap();
    assert!(same!(f, pending_jobs(10)).unwrap().is_empty());
    assert!(same!(f, due_runs()).unwrap().is_empty());
    assert!(
        same!(f, events(&EventFilter::default(), None, 10))
            .unwrap()
            .is_empty()
    );
    assert!(same!(f, dead_letters(None, 10)).unwrap().is_empty());
    assert!(same!(f, rejections(None, 10)).unwrap().is_empty());
    assert!(same!(f, backlog(T0)).unwrap().is_empty());
    assert_eq!(same!(f, attempt_counts("x", 0)).unwrap(), (0, 0));
    assert_eq!(same!(f, oldest_event()).unwrap(), None);
    assert_eq!(same!(f, count_events()).unwrap(), 0);
    assert!(same!(f, alert_states()).unwrap().is_empty());
    let space = f.pg.space().await.unwrap();
    assert_eq!((space.free_pages, space.incremental), (0, false));
    assert!(
        space.pages > 0,
        "the empty tables' indexes take pages: {space:?}"
    );
}

/// Every read that takes text, with `text` as each filter, id and cursor in turn: the two
/// backends answer the same, and without an error.
#[rustfmt::skip]
async fn every_read_takes(f: &Both, text: &str) {
    let s = Some(text.to_string());
    let cursor = Some(text);
    let event_filters = [
        EventFilter { source: s.clone(), ..Default::default() },
        EventFilter { event_type: s.clone(), ..Default::default() },
        EventFilter { status: s.clone(), ..Default::default() },
        EventFilter::default(),
    ];
    for filter in &event_filters {
        same!(f, events(filter, cursor, 10)).unwrap();
        same!(f, events(filter, None, 10)).unwrap();
        same!(f, events_with_payload(filter, cursor, usize::MAX)).unwrap();
    }
    let delivery_filters = [
        DeliveryFilter { destination_id: s.clone(), ..Default::default() },
        DeliveryFilter { event_id: s.clone(), ..Default::default() },
        DeliveryFilter { status: s.clone(), ..Default::default() },
        DeliveryFilter::default(),
    ];
    for filter in &delivery_filters {
        same!(f, deliveries(filter, cursor, 10)).unwrap();
        same!(f, deliveries(filter, None, 10)).unwrap();
    }
    let run_filters = [
        RunFilter { flow_id: s.clone(), ..Default::default() },
        RunFilter { event_id: s.clone(), ..Default::default() },
        RunFilter { status: s.clone(), ..Default::default() },
        RunFilter::default(),
    ];
    for filter in &run_filters {
        same!(f, runs(filter, cursor, 10)).unwrap();
        same!(f, runs(filter, None, 10)).unwrap();
    }
    let failed_filters = [
        FailedRunFilter { flow_id: s.clone(), ..Default::default() },
        FailedRunFilter { error: s.clone(), ..Default::default() },
        FailedRunFilter::default(),
    ];
    for filter in &failed_filters {
        same!(f, failed_runs(filter, cursor, 10)).unwrap();
        same!(f, failed_runs(filter, None, 10)).unwrap();
    }
    let dead_filters = [
        DeadFilter { destination_id: s.clone(), ..Default::default() },
        DeadFilter { error: s.clone(), ..Default::default() },
        DeadFilter::default(),
    ];
    for filter in &dead_filters {
        same!(f, dead_deliveries(filter, cursor, 10)).unwrap();
        same!(f, dead_deliveries(filter, None, 10)).unwrap();
        same!(f, dead_delivery_page(filter, cursor, 10)).unwrap();
        same!(f, dead_delivery_page(filter, None, 10)).unwrap();
    }
    same!(f, dead_letters(cursor, 10)).unwrap();
    same!(f, events_and_rejections_of(text, 10)).unwrap();
    same!(f, event(text)).unwrap();
    same!(f, event_with_attempts_and_steps(text)).unwrap();
    same!(f, stored_event(text)).unwrap();
    same!(f, delivery(text)).unwrap();
    same!(f, delivery_payload(text)).unwrap();
    same!(f, delivery_payload_size(text)).unwrap();
    same!(f, run_row(text)).unwrap();
    same!(f, run_detail(text)).unwrap();
    same!(f, run_summary(text)).unwrap();
    same!(f, schema_versions(text)).unwrap();
    same!(f, pending_deliveries_to(text)).unwrap();
    same!(f, unfinished_runs_of(text)).unwrap();
    same!(f, token_scope(text.as_bytes())).unwrap();
    same!(f, recent_attempts(text, usize::MAX)).unwrap();
    same!(f, last_attempts(text, 10)).unwrap();
    same!(f, attempt_counts(text, i64::MIN)).unwrap();
    same!(f, delivery_latencies(text, i64::MIN)).unwrap();
    same!(f, dead_count(Some(text))).unwrap();
    same!(f, attempt_times(text)).unwrap();
    let destinations = vec![text.to_string(), "hooks".to_string()];
    same!(f, recent_attempts_backlog_and_dead(destinations.clone(), 3, i64::MAX)).unwrap();
    same!(f, alert_states_and_history(destinations.clone(), usize::MAX)).unwrap();
    let counts = f.pg.attempt_counts_of(destinations, i64::MIN).await.unwrap();
    assert_eq!(counts.get(text), Some(&(0, 0)));
}

#[tokio::test]
async fn hostile_filters_and_cursors_answer_as_sqlite_does_and_the_pool_goes_on() {
    let f = Both::with_fixture().await;
    let megabyte = "%_\\".repeat(350_000);
    let lossy =
        String::from_utf8_lossy(&[b'd', b'e', b'l', 0xff, 0xc3, b'_', 0xf0, 0x9f]).into_owned();
    let nul_in_id = format!("{}\0tail", id("del", 8));
    let hostile: Vec<String> = vec![
        megabyte,
        lossy,
        "%".into(),
        "_".into(),
        "\\".into(),
        "' OR 1=1 --".into(),
        "\0".into(),
        nul_in_id.clone(),
        "not-a-cursor".into(),
        String::new(),
        "del_".into(),
        "\u{10ffff}".into(),
    ];
    let numbers = [i64::MIN, -1, 0, i64::MAX];
    for text in &hostile {
        every_read_takes(&f, text).await;
    }
    // A cursor with a NUL pages as SQLite pages it (bytes after the NUL compare too).
    let before = same!(
        f,
        deliveries(&DeliveryFilter::default(), Some(&nul_in_id), 100)
    )
    .unwrap();
    assert_eq!(before.first().map(|d| d.id.clone()), Some(id("del", 8)));
    let after = same!(
        f,
        dead_deliveries(
            &DeadFilter::default(),
            Some(&format!("{}\0", id("del", 12))),
            100
        )
    )
    .unwrap();
    assert_eq!(after, [id("del", 16)]);
    let letters = same!(f, dead_letters(Some(&format!("{}\0", id("run", 13))), 100)).unwrap();
    // (SQLite's `substr` reads a text up to its first NUL: the cursor is `run_..13`.)
    assert_eq!(ids(&letters, |l| l.id()), [id("del", 12), id("run", 5)]);
    // A percent sign, an underscore and a backslash are plain characters of an error.
    let percent = DeadFilter {
        error: Some("0% _".into()),
        ..Default::default()
    };
    assert_eq!(
        same!(f, dead_deliveries(&percent, None, 10)).unwrap(),
        [id("del", 12)]
    );

    for n in numbers {
        let window = EventFilter {
            since: Some(n),
            until: Some(n),
            ..Default::default()
        };
        same!(f, events(&window, None, 10)).unwrap();
        let open = EventFilter {
            since: Some(n),
            ..Default::default()
        };
        same!(f, events(&open, None, usize::MAX)).unwrap();
        same!(f, rejections(Some(n), 10)).unwrap();
        same!(f, rejections(Some(n), usize::MAX)).unwrap();
        same!(f, backlog(n)).unwrap();
        same!(f, backlog_dead_and_failed_runs(n)).unwrap();
        same!(f, rejected_backlog_dead_and_alerts(n)).unwrap();
        same!(f, attempt_counts("hooks", n)).unwrap();
        same!(f, delivery_latencies("hooks", n)).unwrap();
        let dead = DeadFilter {
            since: Some(n),
            until: Some(i64::MAX),
            ..Default::default()
        };
        same!(f, dead_deliveries(&dead, None, usize::MAX)).unwrap();
        same!(f, dead_delivery_page(&dead, None, i64::MAX as usize)).unwrap();
        let failed = FailedRunFilter {
            since: Some(n),
            ..Default::default()
        };
        same!(f, failed_runs(&failed, None, (i64::MAX as usize) + 1)).unwrap();
    }
    assert_eq!(same!(f, rejections(Some(i64::MIN), 10)).unwrap().len(), 0);
    assert_eq!(
        same!(f, rejections(Some(i64::MAX), usize::MAX))
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        same!(f, events(&EventFilter::default(), None, usize::MAX))
            .unwrap()
            .len(),
        6
    );
    assert_eq!(same!(f, pending_jobs(i64::MAX as usize)).unwrap().len(), 4);
    assert_eq!(
        same!(f, recent_attempts("hooks", usize::MAX))
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        same!(f, last_attempts("hooks", usize::MAX - 1))
            .unwrap()
            .len(),
        4
    );

    // The pool answers normally afterwards, on every connection it holds.
    let answers = futures_util::future::join_all((0..8).map(|_| f.pg.count_events())).await;
    for answer in answers {
        assert_eq!(answer.unwrap(), 6);
    }
    f.pg.ping().await.unwrap();
}

#[tokio::test]
async fn rows_a_reader_cannot_take_are_errors_not_panics() {
    let f = Both::with_fixture().await;
    // A step index and a round's attempts out of the range Rust holds them in.
    f.pg_client
        .batch_execute(&format!(
            "UPDATE runs SET pc = -1 WHERE id = '{run}';
             UPDATE deliveries SET round_attempts = 5000000000, status = 'pending' WHERE id = '{del}';
             UPDATE deliveries SET status = 'lost' WHERE id = '{lost}'",
            run = id("run", 9),
            del = id("del", 3),
            lost = id("del", 4),
        ))
        .await
        .unwrap();
    let e = f.pg.run_row(&id("run", 9)).await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
    assert!(e.to_string().contains("its step index is -1"), "{e}");
    let e = f.pg.run_summary(&id("run", 9)).await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
    let e = f.pg.pending_jobs(10).await.unwrap_err();
    assert!(e.to_string().contains("is 5000000000"), "{e}");
    let e = f.pg.delivery(&id("del", 4)).await.unwrap_err();
    assert!(
        e.to_string().contains("unknown delivery status `lost`"),
        "{e}"
    );
    f.pg.ping().await.unwrap();
}
