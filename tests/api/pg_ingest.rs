//! Ingest on a real PostgreSQL: a batch of events with their runs, bodies, deliveries and
//! jobs in one transaction, the jobs leased to the node that ingested them; repeated
//! idempotency keys answered with the first event, within a batch, across batches and across
//! nodes ingesting at once; one bad event failing alone.

use crate::postgres::TestSchema;
use bytes::Bytes;
use ferry::store::postgres::{Ingest, PgOptions, PgStore};
use ferry::store::{Body, IngestOutcome, NewDelivery, NewEvent, NewRun};

const LEASE_MS: i64 = 30_000;

fn event(id: &str, key: Option<&str>) -> NewEvent {
    NewEvent {
        id: id.into(),
        source: "shop".into(),
        event_type: "order.paid".into(),
        idempotency_key: key.map(str::to_string),
        received_at: 1_000,
        headers: "{}".into(),
        payload: Bytes::from(format!(r#"{{"id":"{id}"}}"#)),
    }
}

/// An event whose flow made one body and two deliveries (one sends the body, one the event).
fn with_run(id: &str, key: Option<&str>, body_id: i64) -> Ingest {
    let run_id = format!("run_{id}");
    let body = Body {
        id: body_id,
        data: Bytes::from_static(b"{\"shaped\":true}"),
    };
    Ingest {
        event: event(id, key),
        runs: vec![NewRun {
            id: run_id.clone(),
            flow_id: "f".into(),
            flow_version: "v1".into(),
            status: "waiting",
            pc: 2,
            resume_pc: None,
            next_at: None,
            error: None,
            context: None,
            payload_body: Some(body_id),
            bodies: vec![body.clone()],
            steps: "[]".into(),
        }],
        deliveries: vec![
            NewDelivery {
                id: format!("dlv_{id}_crm"),
                run_id: run_id.clone(),
                destination_id: "crm".into(),
                body: Some(body),
            },
            NewDelivery {
                id: format!("dlv_{id}_erp"),
                run_id,
                destination_id: "erp".into(),
                body: None,
            },
        ],
    }
}

async fn node(schema: &TestSchema) -> PgStore {
    PgStore::connect(
        &schema.url,
        PgOptions {
            pool_size: 4,
            ..PgOptions::default()
        },
    )
    .await
    .unwrap()
}

async fn count(schema: &TestSchema, sql: &str) -> i64 {
    schema
        .client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_commits_events_runs_bodies_deliveries_and_leased_jobs_together() {
    let schema = TestSchema::create().await;
    let a = node(&schema).await;
    let before = a
        .ingest_batch(&[with_run("e0", Some("k-stored"), 1)], "a", LEASE_MS)
        .await;
    assert_eq!(before[0].as_ref().unwrap().outcome, IngestOutcome::Accepted);

    let mut batch: Vec<Ingest> = (1..=50)
        .map(|i| with_run(&format!("e{i}"), Some(&format!("k{i}")), 100 + i))
        .collect();
    batch.push(with_run("again", Some("k7"), 500));
    batch.push(with_run("stored-again", Some("k-stored"), 501));
    batch.push(Ingest {
        event: event("plain", None),
        runs: vec![],
        deliveries: vec![],
    });
    let answers = a.ingest_batch(&batch, "a", LEASE_MS).await;
    assert_eq!(answers.len(), 53);
    for (i, answer) in answers.iter().take(50).enumerate() {
        let answer = answer.as_ref().unwrap();
        assert_eq!(answer.outcome, IngestOutcome::Accepted, "event {i}");
        assert_eq!(
            answer.leases.len(),
            2,
            "two jobs leased to the ingesting node"
        );
    }
    let repeat = answers[50].as_ref().unwrap();
    assert_eq!(
        repeat.outcome,
        IngestOutcome::Duplicate {
            event_id: "e7".into()
        },
        "a key repeated within the batch answers the first"
    );
    assert!(repeat.leases.is_empty());
    assert_eq!(
        answers[51].as_ref().unwrap().outcome,
        IngestOutcome::Duplicate {
            event_id: "e0".into()
        },
        "a key stored before answers the stored event"
    );
    assert_eq!(
        answers[52].as_ref().unwrap().outcome,
        IngestOutcome::Accepted
    );

    assert_eq!(count(&schema, "SELECT count(*) FROM events").await, 52);
    assert_eq!(count(&schema, "SELECT count(*) FROM runs").await, 51);
    assert_eq!(count(&schema, "SELECT count(*) FROM bodies").await, 51);
    assert_eq!(count(&schema, "SELECT count(*) FROM deliveries").await, 102);
    assert_eq!(
        count(
            &schema,
            "SELECT count(*) FROM runs WHERE pending = 2 AND status = 'waiting'"
        )
        .await,
        51
    );
    assert_eq!(
        count(
            &schema,
            "SELECT count(*) FROM bodies b JOIN events e ON e.seq = b.event_seq JOIN runs r ON r.payload_body = b.id AND r.event_id = e.id"
        )
        .await,
        51,
        "each body belongs to its event's row"
    );
    assert_eq!(
        count(
            &schema,
            "SELECT count(*) FROM delivery_jobs WHERE leased_by = 'a' AND lease_token IS NOT NULL"
        )
        .await,
        102
    );
    let b = node(&schema).await;
    let both = vec!["crm".to_string(), "erp".to_string()];
    assert!(
        b.claim_deliveries("b", i64::MAX, &both, 1000, LEASE_MS)
            .await
            .unwrap()
            .is_empty(),
        "the jobs are the ingesting node's while its leases hold"
    );
    let tokens: Vec<i64> = answers
        .iter()
        .flat_map(|a| a.as_ref().unwrap().leases.iter().map(|(_, t)| *t))
        .collect();
    assert_eq!(a.release_leases(&tokens).await.unwrap(), 100);
    assert_eq!(
        b.claim_deliveries("b", i64::MAX, &both, 1000, LEASE_MS)
            .await
            .unwrap()
            .len(),
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_event_fails_alone() {
    let schema = TestSchema::create().await;
    let a = node(&schema).await;
    let mut bad = with_run("bad", None, 2);
    // PostgreSQL refuses a NUL in text: the whole batch fails, then each is tried alone.
    bad.event.source = "sh\0p".into();
    let batch = vec![with_run("good1", None, 1), bad, with_run("good2", None, 3)];
    let answers = a.ingest_batch(&batch, "a", LEASE_MS).await;
    assert_eq!(
        answers[0].as_ref().unwrap().outcome,
        IngestOutcome::Accepted
    );
    let e = answers[1].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("0x00") || e.to_lowercase().contains("invalid"),
        "{e}"
    );
    assert_eq!(
        answers[2].as_ref().unwrap().outcome,
        IngestOutcome::Accepted
    );
    assert_eq!(count(&schema, "SELECT count(*) FROM events").await, 2);
    assert_eq!(count(&schema, "SELECT count(*) FROM runs").await, 2);
    assert_eq!(
        count(&schema, "SELECT count(*) FROM delivery_jobs").await,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_ingesting_one_key_at_once_accept_it_once() {
    let schema = TestSchema::create().await;
    let (a, b) = (node(&schema).await, node(&schema).await);
    for round in 0..20 {
        let key = format!("k{round}");
        let (ea, eb) = (format!("a{round}"), format!("b{round}"));
        let (batch_a, batch_b) = (
            [with_run(&ea, Some(&key), 1000 + round)],
            [with_run(&eb, Some(&key), 2000 + round)],
        );
        let (ra, rb) = tokio::join!(
            a.ingest_batch(&batch_a, "a", LEASE_MS),
            b.ingest_batch(&batch_b, "b", LEASE_MS),
        );
        let (ra, rb) = (
            &ra[0].as_ref().unwrap().outcome,
            &rb[0].as_ref().unwrap().outcome,
        );
        match (ra, rb) {
            (IngestOutcome::Accepted, IngestOutcome::Duplicate { event_id }) => {
                assert_eq!(event_id, &ea)
            }
            (IngestOutcome::Duplicate { event_id }, IngestOutcome::Accepted) => {
                assert_eq!(event_id, &eb)
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    assert_eq!(count(&schema, "SELECT count(*) FROM events").await, 20);
    assert_eq!(count(&schema, "SELECT count(*) FROM deliveries").await, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_batches_get_clear_errors_and_the_store_answers_afterwards() {
    let schema = TestSchema::create().await;
    let a = node(&schema).await;
    for lease in [0, -5, i64::MAX] {
        let answers = a.ingest_batch(&[with_run("x", None, 1)], "a", lease).await;
        let e = answers[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("lease of"), "{e}");
    }
    // Bytes that are not UTF-8 and an 8 MiB payload are kept as given; the longest key ingest
    // takes (1024 bytes) and extreme times too.
    let mut odd = with_run("odd", Some(&"k".repeat(1024)), 7);
    odd.event.payload = Bytes::from(vec![0xff; 8 << 20]);
    odd.event.received_at = i64::MIN;
    let answers = a.ingest_batch(&[odd], "a", LEASE_MS).await;
    assert_eq!(
        answers[0].as_ref().unwrap().outcome,
        IngestOutcome::Accepted
    );
    let stored: Vec<u8> = schema
        .client()
        .await
        .query_one("SELECT payload FROM events WHERE id = 'odd'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 8 << 20);
    let answers = a
        .ingest_batch(&[with_run("after", None, 8)], "a", LEASE_MS)
        .await;
    assert_eq!(
        answers[0].as_ref().unwrap().outcome,
        IngestOutcome::Accepted,
        "the store answers normally afterwards"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batches_holding_the_same_keys_in_opposite_orders_do_not_deadlock() {
    let schema = TestSchema::create().await;
    let (a, b) = (node(&schema).await, node(&schema).await);
    let db = schema.client().await;
    let deadlocks = || async {
        db.batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        let n: i64 = db
            .query_one(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    let before = deadlocks().await;
    for round in 0..3 {
        let forward: Vec<Ingest> = (0..200)
            .map(|i| {
                let body = 10_000 * round + i + 1;
                with_run(
                    &format!("a{round}-{i}"),
                    Some(&format!("k{round}-{i}")),
                    body,
                )
            })
            .collect();
        let backward: Vec<Ingest> = (0..200)
            .rev()
            .map(|i| {
                let body = 1_000_000 + 10_000 * round + i + 1;
                with_run(
                    &format!("b{round}-{i}"),
                    Some(&format!("k{round}-{i}")),
                    body,
                )
            })
            .collect();
        let (ra, rb) = tokio::join!(
            a.ingest_batch(&forward, "a", LEASE_MS),
            b.ingest_batch(&backward, "b", LEASE_MS),
        );
        let accepted = ra
            .iter()
            .chain(rb.iter())
            .filter(|r| r.as_ref().unwrap().outcome == IngestOutcome::Accepted)
            .count();
        assert_eq!(accepted, 200, "round {round}: each key accepted once");
    }
    // The statistics reach pg_stat_database when the sessions report them.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    drop((a, b));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(deadlocks().await, before, "no deadlock between the batches");
}
