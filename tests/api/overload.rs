//! Overload: when the write queue is full, ingest answers 503 with Retry-After at once, and
//! every 202 it gave is stored.

use crate::helpers::*;
use ferry::app::ServeOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_answers_503_and_loses_no_accepted_event() {
    let yaml = "sources: [ { id: s, kind: webhook, verify: { scheme: none } } ]";
    let config =
        ferry::config::load_str(yaml, "t.yaml", std::path::Path::new("."), &|_| None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServeOptions::new(config, dir.path().to_path_buf());
    options.api_token = Some(TOKEN.into());
    options.expression_worker = Some(crate::helpers::expression_worker());
    options.store.write_queue = 1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = ferry::app::prepare(options).await.unwrap();
    tokio::spawn(ferry::app::serve(
        listener,
        state.clone(),
        std::future::pending(),
    ));

    let http = client();
    let mut sends = Vec::new();
    for i in 0..400 {
        let http = http.clone();
        sends.push(tokio::spawn(async move {
            let r = http
                .post(format!("http://{addr}/in/s"))
                .body(format!(r#"{{"type":"t","n":{i}}}"#))
                .send()
                .await
                .unwrap();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), retry_after)
        }));
    }
    let (mut accepted, mut refused) = (0, 0);
    for s in sends {
        match s.await.unwrap() {
            (202, _) => accepted += 1,
            (503, retry_after) => {
                assert_eq!(retry_after.as_deref(), Some("1"));
                refused += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(
        refused > 0,
        "a one-slot queue under 400 concurrent requests refuses some"
    );
    assert!(accepted > 0);
    assert_eq!(
        state.store.count_events().await.unwrap(),
        accepted,
        "every 202 is stored"
    );
}
