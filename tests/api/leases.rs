//! Cluster mode's leases on a real PostgreSQL: delivery jobs claimed with `SKIP LOCKED` by
//! several nodes at once, never one job twice; a lease that expires is taken over, and the
//! worker that lost it can no longer record anything; renewals hold a lease, a release gives
//! it back at once; a retry leaves the job to whoever claims it at its time.

use crate::postgres::TestSchema;
use ferry::store::postgres::{Fenced, Lease, PgOptions, PgStore};
use ferry::store::{AttemptNext, NewAttempt};
use std::collections::HashMap;
use std::time::Duration;

const LEASE_MS: i64 = 30_000;

/// `n` pending deliveries (to `crm` and `erp` in turn) of one event, each its own run waiting
/// for it, all due at 0 and leased to nobody.
async fn pending_jobs(schema: &TestSchema, n: usize) {
    let db = schema.client().await;
    db.execute(
        "INSERT INTO events (id, source, event_type, received_at, headers, payload)
         VALUES ('evt_1', 'shop', 'order', 0, '{}', '{\"n\":1}'::bytea)",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO runs (id, event_id, flow_id, flow_version, status, pc, steps, pending, created_at, updated_at)
         SELECT 'run_' || i, 'evt_1', 'f', 'v1', 'waiting', 1, '[]', 1, 0, 0 FROM generate_series(1, $1::bigint) i",
        &[&(n as i64)],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO deliveries (id, event_id, run_id, destination_id, status, next_attempt_at, created_at, updated_at)
         SELECT 'dlv_' || i, 'evt_1', 'run_' || i, CASE WHEN i % 2 = 0 THEN 'crm' ELSE 'erp' END, 'pending', 0, 0, 0
         FROM generate_series(1, $1::bigint) i",
        &[&(n as i64)],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO delivery_jobs (delivery_id, destination_id, due_at)
         SELECT id, destination_id, 0 FROM deliveries",
        &[],
    )
    .await
    .unwrap();
}

/// Ends the leases `tokens` now, as their time running out would (without waiting for it:
/// the machine may be slow).
async fn expire(schema: &TestSchema, tokens: &[i64]) {
    let db = schema.client().await;
    for table in ["delivery_jobs", "run_jobs"] {
        db.execute(
            &format!("UPDATE {table} SET lease_until = 0 WHERE lease_token = ANY($1)"),
            &[&tokens],
        )
        .await
        .unwrap();
    }
}

/// When a delivery's lease ends (ms, the database's clock).
async fn lease_until(schema: &TestSchema, token: i64) -> i64 {
    schema
        .client()
        .await
        .query_one(
            "SELECT lease_until FROM delivery_jobs WHERE lease_token = $1",
            &[&token],
        )
        .await
        .unwrap()
        .get(0)
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

fn both() -> Vec<String> {
    vec!["crm".to_string(), "erp".to_string()]
}

fn attempt(delivery_id: &str, run_id: &str, next: AttemptNext) -> NewAttempt {
    NewAttempt {
        delivery_id: delivery_id.into(),
        event_id: "evt_1".into(),
        run_id: run_id.into(),
        destination_id: "crm".into(),
        started_at: 1,
        finished_at: 2,
        duration_ms: 1,
        status_code: Some(200),
        response_headers: None,
        response_body: None,
        error: None,
        outcome: "succeeded",
        next,
        lease: None,
    }
}

/// (status, attempts) of a delivery; the node and token of its job's lease, if it has a job.
async fn state(
    schema: &TestSchema,
    delivery_id: &str,
) -> ((String, i64), Option<(Option<String>, Option<i64>)>) {
    let db = schema.client().await;
    let d = db
        .query_one(
            "SELECT status, attempts FROM deliveries WHERE id = $1",
            &[&delivery_id],
        )
        .await
        .unwrap();
    let job = db
        .query_opt(
            "SELECT leased_by, lease_token FROM delivery_jobs WHERE delivery_id = $1",
            &[&delivery_id],
        )
        .await
        .unwrap();
    ((d.get(0), d.get(1)), job.map(|j| (j.get(0), j.get(1))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_claiming_at_once_never_take_a_job_twice() {
    let schema = TestSchema::create().await;
    let first = node(&schema).await;
    pending_jobs(&schema, 600).await;
    let mut nodes = vec![first, node(&schema).await, node(&schema).await];
    let mut tasks = Vec::new();
    for (i, store) in nodes.drain(..).enumerate() {
        tasks.push(tokio::spawn(async move {
            let name = format!("node-{i}");
            let mut mine = Vec::new();
            loop {
                let claimed = store
                    .claim_deliveries(&name, 0, &both(), 25, LEASE_MS)
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    break;
                }
                mine.extend(claimed.into_iter().map(|c| (c.job.id, c.token)));
            }
            mine
        }));
    }
    let mut by_job: HashMap<String, usize> = HashMap::new();
    let mut tokens = std::collections::HashSet::new();
    let mut per_node = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        per_node.push(mine.len());
        for (job, token) in mine {
            *by_job.entry(job).or_default() += 1;
            assert!(tokens.insert(token), "token {token} given twice");
        }
    }
    assert_eq!(by_job.len(), 600, "every job claimed");
    let twice: Vec<_> = by_job.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "claimed twice: {twice:?}");
    assert_eq!(per_node.iter().sum::<usize>(), 600, "{per_node:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_cannot_complete_retry_or_dead_letter_the_job() {
    let schema = TestSchema::create().await;
    let (a, b) = (node(&schema).await, node(&schema).await);
    pending_jobs(&schema, 1).await;
    let mine = a
        .claim_deliveries("a", 0, &both(), 10, LEASE_MS)
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    let (job, a_token) = (mine[0].job.clone(), mine[0].token);
    assert!(
        b.claim_deliveries("b", 0, &both(), 10, LEASE_MS)
            .await
            .unwrap()
            .is_empty(),
        "a live lease keeps the job from other nodes"
    );
    // Node a stalls (a GC pause, a frozen VM) past its lease; node b takes the job over.
    expire(&schema, &[a_token]).await;
    let theirs = b
        .claim_deliveries("b", 0, &both(), 10, LEASE_MS)
        .await
        .unwrap();
    assert_eq!(theirs.len(), 1, "an expired lease is taken over");
    assert_eq!(theirs[0].job.id, job.id);
    let b_token = theirs[0].token;
    assert_ne!(a_token, b_token);

    let a_lease = Lease {
        node: "a".into(),
        token: a_token,
    };
    for next in [
        AttemptNext::Succeeded,
        AttemptNext::RetryAt(5),
        AttemptNext::Dead,
    ] {
        let late = a
            .record_leased_attempt(&attempt(&job.id, &job.run_id, next), &a_lease)
            .await
            .unwrap();
        assert!(matches!(late, Fenced::LeaseLost), "{next:?}: {late:?}");
    }
    assert!(matches!(
        a.hold_delivery(&job.id, a_token, 10).await.unwrap(),
        Fenced::LeaseLost
    ));
    assert!(
        a.renew_leases(&[a_token], LEASE_MS)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(a.release_leases(&[a_token]).await.unwrap(), 0);
    assert_eq!(
        state(&schema, &job.id).await,
        (
            ("pending".to_string(), 0),
            Some((Some("b".to_string()), Some(b_token)))
        ),
        "the late answers changed nothing"
    );

    let b_lease = Lease {
        node: "b".into(),
        token: b_token,
    };
    let done = b
        .record_leased_attempt(
            &attempt(&job.id, &job.run_id, AttemptNext::Succeeded),
            &b_lease,
        )
        .await
        .unwrap();
    match done {
        Fenced::Recorded(Some(settled)) => {
            assert_eq!(
                (settled.status, settled.run_id.as_str()),
                ("completed", "run_1")
            )
        }
        other => panic!("b holds the lease: {other:?}"),
    }
    assert_eq!(
        state(&schema, &job.id).await,
        (("succeeded".to_string(), 1), None)
    );
    let db = schema.client().await;
    let log: Vec<(String, i64)> = db
        .query("SELECT node, lease_token FROM attempts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(log, vec![("b".to_string(), b_token)], "one attempt, b's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_hold_a_lease_and_a_release_gives_it_back_at_once() {
    let schema = TestSchema::create().await;
    let (a, b) = (node(&schema).await, node(&schema).await);
    pending_jobs(&schema, 2).await;
    let mine = a
        .claim_deliveries("a", 0, &both(), 10, 2_000)
        .await
        .unwrap();
    assert_eq!(mine.len(), 2);
    let tokens: Vec<i64> = mine.iter().map(|c| c.token).collect();
    for _ in 0..3 {
        let before = lease_until(&schema, tokens[0]).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut renewed = a.renew_leases(&tokens, 5_000).await.unwrap();
        renewed.sort();
        let mut want = tokens.clone();
        want.sort();
        assert_eq!(renewed, want);
        assert!(
            lease_until(&schema, tokens[0]).await > before,
            "a renewal moves the lease's end on"
        );
        assert!(
            b.claim_deliveries("b", 0, &both(), 10, LEASE_MS)
                .await
                .unwrap()
                .is_empty(),
            "a held lease keeps the jobs from other nodes"
        );
    }
    assert_eq!(a.release_leases(&tokens).await.unwrap(), 2);
    let theirs = b
        .claim_deliveries("b", 0, &both(), 10, LEASE_MS)
        .await
        .unwrap();
    assert_eq!(theirs.len(), 2, "released jobs are claimed at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_leaves_the_job_to_whoever_claims_it_at_its_time() {
    let schema = TestSchema::create().await;
    let a = node(&schema).await;
    pending_jobs(&schema, 1).await;
    let mine = a
        .claim_deliveries("a", 0, &both(), 10, LEASE_MS)
        .await
        .unwrap();
    let (job, token) = (mine[0].job.clone(), mine[0].token);
    let lease = Lease {
        node: "a".into(),
        token,
    };
    let retry = a
        .record_leased_attempt(
            &attempt(&job.id, &job.run_id, AttemptNext::RetryAt(5_000)),
            &lease,
        )
        .await
        .unwrap();
    assert!(matches!(retry, Fenced::Recorded(None)), "{retry:?}");
    assert_eq!(
        state(&schema, &job.id).await,
        (("pending".to_string(), 1), Some((None, None)))
    );
    assert!(
        a.claim_deliveries("a", 4_999, &both(), 10, LEASE_MS)
            .await
            .unwrap()
            .is_empty()
    );
    let again = a
        .claim_deliveries("a", 5_000, &both(), 10, LEASE_MS)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].job.round_attempts, 1);
    assert_ne!(again[0].token, token, "each claim has a fresh token");
    // Held by its destination: back to waiting, no attempt spent.
    assert!(matches!(
        a.hold_delivery(&job.id, again[0].token, 9_000)
            .await
            .unwrap(),
        Fenced::Recorded(())
    ));
    assert!(
        a.claim_deliveries("a", 8_999, &both(), 10, LEASE_MS)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        a.claim_deliveries("a", 9_000, &both(), 10, LEASE_MS)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(state(&schema, &job.id).await.0, ("pending".to_string(), 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_claims_get_clear_errors_and_the_store_answers_afterwards() {
    let schema = TestSchema::create().await;
    let a = node(&schema).await;
    pending_jobs(&schema, 3).await;
    for lease in [0, -1, i64::MIN, i64::MAX] {
        let e = a
            .claim_deliveries("a", 0, &both(), 10, lease)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("lease of"), "{e}");
        let e = a.renew_leases(&[1], lease).await.unwrap_err();
        assert!(e.to_string().contains("lease of"), "{e}");
    }
    // Huge and odd destination ids, a NUL byte (PostgreSQL refuses it in text), bytes that
    // were not UTF-8, extreme times and limits.
    let odd = vec![
        "x".repeat(1 << 20),
        "\0".to_string(),
        String::from_utf8_lossy(b"\xff\xfe%_\\").into_owned(),
    ];
    match a
        .claim_deliveries("a", i64::MIN, &odd, usize::MAX, LEASE_MS)
        .await
    {
        Ok(claimed) => assert!(claimed.is_empty()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    assert!(
        a.claim_deliveries("\0", i64::MAX, &both(), 1, LEASE_MS)
            .await
            .is_err()
    );
    assert!(
        a.renew_leases(&[i64::MIN, i64::MAX], LEASE_MS)
            .await
            .unwrap()
            .is_empty()
    );
    let all = a
        .claim_deliveries("a", i64::MAX, &both(), usize::MAX, LEASE_MS)
        .await
        .unwrap();
    assert_eq!(all.len(), 3, "the store answers normally afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_due_are_claimed_by_one_node_and_taken_over_when_its_lease_ends() {
    let schema = TestSchema::create().await;
    let (a, b) = (node(&schema).await, node(&schema).await);
    let db = schema.client().await;
    db.execute(
        "INSERT INTO run_jobs (run_id, due_at) SELECT 'run_' || i, i FROM generate_series(1, 40) i",
        &[],
    )
    .await
    .unwrap();
    let (mine, theirs) = tokio::join!(
        a.claim_runs("a", 100, 30, LEASE_MS),
        b.claim_runs("b", 100, 30, LEASE_MS)
    );
    let (mine, theirs) = (mine.unwrap(), theirs.unwrap());
    assert_eq!(mine.len() + theirs.len(), 40, "every due run claimed");
    let mut ids: Vec<&String> = mine.iter().chain(theirs.iter()).map(|c| &c.0).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40, "none twice");
    assert!(a.claim_runs("a", 4, 10, LEASE_MS).await.unwrap().is_empty());
    // a's leases run out (it renews none); b takes its runs over, with their times.
    expire(&schema, &mine.iter().map(|c| c.2).collect::<Vec<_>>()).await;
    let taken = b.claim_runs("b", 100, 100, LEASE_MS).await.unwrap();
    assert_eq!(taken.len(), mine.len());
    assert!(taken.windows(2).all(|w| w[0].1 <= w[1].1), "soonest first");
    // One renewal and one release cover delivery and run leases alike.
    let tokens: Vec<i64> = taken.iter().map(|c| c.2).collect();
    assert_eq!(
        b.renew_leases(&tokens, LEASE_MS).await.unwrap().len(),
        tokens.len()
    );
    assert_eq!(
        b.release_leases(&tokens).await.unwrap(),
        tokens.len() as u64
    );
    assert_eq!(
        a.claim_runs("a", 100, 100, LEASE_MS).await.unwrap().len(),
        tokens.len()
    );
    for lease in [0, i64::MAX] {
        assert!(a.claim_runs("a", 0, 1, lease).await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_after_the_lease_ran_out_counts_while_nobody_took_the_job() {
    let schema = TestSchema::create().await;
    let a = node(&schema).await;
    pending_jobs(&schema, 1).await;
    let mine = a
        .claim_deliveries("a", 0, &both(), 10, LEASE_MS)
        .await
        .unwrap();
    let (job, token) = (mine[0].job.clone(), mine[0].token);
    expire(&schema, &[token]).await;
    let lease = Lease {
        node: "a".into(),
        token,
    };
    let done = a
        .record_leased_attempt(
            &attempt(&job.id, &job.run_id, AttemptNext::Succeeded),
            &lease,
        )
        .await
        .unwrap();
    assert!(
        matches!(done, Fenced::Recorded(Some(_))),
        "the token still matches: no other claim came, so the outcome is the truth: {done:?}"
    );
    assert_eq!(
        state(&schema, &job.id).await,
        (("succeeded".to_string(), 1), None)
    );
}
