//! The cluster's coordination on a real PostgreSQL: node numbers (the ranges of body ids),
//! singletons held by one node at a time and taken over when it goes, and hints between nodes
//! with LISTEN/NOTIFY.

use crate::postgres::TestSchema;
use ferry::store::postgres::{PgOptions, PgStore};
use std::time::Duration;

async fn node(schema: &TestSchema) -> PgStore {
    PgStore::connect(
        &schema.url,
        PgOptions {
            pool_size: 2,
            ..PgOptions::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_start_of_a_node_gets_a_number_of_its_own() {
    let schema = TestSchema::create().await;
    let (a, b) = (node(&schema).await, node(&schema).await);
    let first = a.join("node-a", 10).await.unwrap();
    let other = b.join("node-b", 20).await.unwrap();
    let again = a.join("node-a", 30).await.unwrap();
    assert_ne!(first.number, other.number);
    assert_ne!(first.number, again.number, "a restart draws a new number");
    assert_ne!(first.first_body_id(), again.first_body_id());
    assert!(again.first_body_id() > 0);
    b.heartbeat("node-b", 40).await.unwrap();
    let listed: Vec<(String, Option<i64>)> = a
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.id, n.seen_at))
        .collect();
    assert_eq!(
        listed,
        vec![("node-b".into(), Some(40)), ("node-a".into(), Some(30))]
    );
    // Hostile ids: a NUL is refused by PostgreSQL, a huge or empty one by Ferry, clearly.
    assert!(a.join("a\0b", 1).await.is_err());
    let e = a
        .join(&"n".repeat(1 << 20), 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("node id of 1048576 bytes"), "{e}");
    assert!(a.join("", 1).await.is_err());
    assert!(
        a.join("node-c", i64::MIN).await.is_ok(),
        "the store answers afterwards"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singleton_runs_on_one_node_and_moves_when_it_goes() {
    let schema = TestSchema::create().await;
    let (a, b) = (node(&schema).await, node(&schema).await);
    let mut lead = a
        .try_lead("alerts")
        .await
        .unwrap()
        .expect("the first node leads");
    assert!(lead.holds());
    assert!(
        b.try_lead("alerts").await.unwrap().is_none(),
        "one node at a time"
    );
    assert!(
        b.try_lead("pollers").await.unwrap().is_some(),
        "another singleton is another lock"
    );
    // The leader's session ends (its node died, or the server ended it): its lock is free,
    // and it knows it lost the lead.
    let db = schema.client().await;
    db.execute(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.objid::bigint = (hashtext('ferry.singleton.' || $1 || '.alerts')::bigint & 4294967295)",
        &[&schema.name],
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), lead.lost())
        .await
        .expect("the leader learns it lost the lead");
    assert!(!lead.holds());
    let mut taken = None;
    for _ in 0..100 {
        if let Some(l) = b.try_lead("alerts").await.unwrap() {
            taken = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let taken = taken.expect("another node takes the singleton over");
    drop(taken);
    let mut back = None;
    for _ in 0..100 {
        if let Some(l) = a.try_lead("alerts").await.unwrap() {
            back = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back.is_some(), "a dropped leadership frees the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_reaches_every_listening_node() {
    let schema = TestSchema::create().await;
    let (a, b, c) = (
        node(&schema).await,
        node(&schema).await,
        node(&schema).await,
    );
    let mut on_b = b.listen(&["ferry_jobs", "ferry_config"]).await.unwrap();
    let mut on_c = c.listen(&["ferry_config"]).await.unwrap();
    a.notify("ferry_config").await.unwrap();
    for hints in [&mut on_b, &mut on_c] {
        let got = tokio::time::timeout(Duration::from_secs(5), hints.recv())
            .await
            .expect("a hint within 5 s");
        assert_eq!(got.as_deref(), Some("ferry_config"));
    }
    a.notify("ferry_jobs").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), on_b.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("ferry_jobs"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), on_c.recv())
            .await
            .is_err(),
        "c does not listen on ferry_jobs"
    );
    // A hostile channel name is quoted, not run.
    let mut odd = b.listen(&["x\"; DROP TABLE events; --"]).await.unwrap();
    a.notify("x\"; DROP TABLE events; --").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), odd.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("x\"; DROP TABLE events; --"));
    let events: i64 = schema
        .client()
        .await
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_listener_gives_its_connection_back() {
    let schema = TestSchema::create().await;
    let a = node(&schema).await;
    let db = schema.client().await;
    let open = || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND pid != pg_backend_pid()",
                &[&schema.name],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    let before = open().await;
    for _ in 0..5 {
        drop(a.listen(&["ferry_jobs"]).await.unwrap());
    }
    let mut now = open().await;
    for _ in 0..100 {
        if now <= before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = open().await;
    }
    assert!(
        now <= before,
        "{now} connections open, {before} before the listeners"
    );
}
