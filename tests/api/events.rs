//! The events list filtered by status (from the event's runs) and by the payload: a jq
//! expression or a `path=value` match.

use crate::helpers::*;
use serde_json::json;

async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let (status, page) = app.api_get(&format!("/api/v1/events?{query}")).await;
    assert_eq!(status, 200, "{query}: {page}");
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn events_filter_by_status_and_by_payload() {
    let (ok, gone) = (
        Receiver::start().await,
        Receiver::start_with(Reply::status(410)).await,
    );
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
event_types: [ {{ name: order.created }}, {{ name: refund.created }} ]
destinations:
  - {{ id: crm, kind: http, url: "{}" }}
  - {{ id: old, kind: http, url: "{}" }}
flows:
  - {{ id: orders, on: {{ source: shop, event_types: [order.created] }}, steps: [ {{ deliver: crm }} ] }}
  - {{ id: refunds, on: {{ source: shop, event_types: [refund.created] }}, steps: [ {{ deliver: old }} ] }}
"#,
        ok.url, gone.url
    ))
    .await;
    let mut orders = Vec::new();
    for (plan, amount, sku) in [("pro", 120, "A1"), ("free", 0, "B2"), ("pro", 80, "A1")] {
        let body = json!({"type": "order.created", "data": {"plan": plan, "amount": amount, "items": [{"sku": sku}]}});
        orders.push(app.accept("/in/shop", &body.to_string(), &[]).await);
    }
    let refund = app
        .accept(
            "/in/shop",
            r#"{"type": "refund.created", "data": {"amount": 5}}"#,
            &[],
        )
        .await;
    let ping = app.accept("/in/shop", r#"{"type": "ping"}"#, &[]).await;
    ok.wait_for(3).await;
    wait_until("the refund's run fails", || async {
        ids(&app, "status=failed").await == std::slice::from_ref(&refund)
    })
    .await;

    let newest_first = |v: &[&String]| v.iter().rev().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        ids(&app, "status=succeeded").await,
        newest_first(&orders.iter().collect::<Vec<_>>())
    );
    assert_eq!(
        ids(&app, "status=unrouted").await,
        std::slice::from_ref(&ping)
    );
    assert_eq!(ids(&app, "status=pending").await, Vec::<String>::new());
    let (_, page) = app.api_get("/api/v1/events?limit=1").await;
    assert_eq!(page["data"][0]["status"], "unrouted");

    assert_eq!(
        ids(&app, "match=data.plan=pro").await,
        newest_first(&[&orders[0], &orders[2]])
    );
    assert_eq!(
        ids(&app, "match=data.items.0.sku=B2").await,
        [orders[1].clone()]
    );
    assert_eq!(
        ids(&app, "match=data.amount=5").await,
        std::slice::from_ref(&refund)
    );
    assert_eq!(
        ids(&app, "match=data.amount=%225%22").await,
        Vec::<String>::new(),
        "\"5\" is a string, not 5"
    );
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("jq", ".data.amount > 50 and .type == \"order.created\"")
        .finish();
    assert_eq!(ids(&app, &q).await, newest_first(&[&orders[0], &orders[2]]));
    assert_eq!(
        ids(&app, "match=data.plan=pro&status=failed").await,
        Vec::<String>::new()
    );

    // A payload filter pages like the rest: every match once.
    let mut seen = Vec::new();
    let mut path = "/api/v1/events?limit=1&match=data.plan=pro".to_string();
    loop {
        let (_, page) = app.api_get(&path).await;
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/events?limit=1&match=data.plan=pro&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first(&[&orders[0], &orders[2]]));

    for bad in [
        "status=done",
        "jq=.a%20%3D%3D",
        "match=noequals",
        "jq=.a&match=a=1",
        "jq=input",
    ] {
        let (status, e) = app.api_get(&format!("/api/v1/events?{bad}")).await;
        assert_eq!(
            (status.as_u16(), e["error"].as_str()),
            (400, Some("invalid_query")),
            "{bad}: {e}"
        );
    }
}
