//! `ferry demo`: the shop story on one machine. Starts three local receivers (fulfillment,
//! crm, accounting; crm fails now and then), serves Ferry with an example config pointing at
//! them, and prints what to send and where to look.

use crate::app::ServeOptions;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The demo's config. `${..._URL}` and the signing secret are filled in by [`run`].
pub const DEMO_CONFIG: &str = r#"
settings:
  allow_private_destinations: true   # the demo receivers run on 127.0.0.1
  alert_interval: 5s
sources:
  - id: shop
    kind: webhook
    verify: { scheme: none }          # a real shop would sign: { scheme: standard-webhooks, secret: ... }
    event_type: { from: body, path: ".type" }
    idempotency_key: { from: header, name: Idempotency-Key }
event_types:
  - name: user.created
    schema:
      type: object
      required: [type, data]
      properties:
        data:
          type: object
          required: [user_id, email, plan]
          properties:
            user_id: { type: string }
            email: { type: string, format: email }
            plan: { enum: [free, pro, enterprise] }
  - name: order.created
    schema:
      type: object
      required: [type, data]
      properties:
        data:
          type: object
          required: [order_id, email, total, currency]
          properties:
            order_id: { type: string }
            email: { type: string }
            total: { type: number, minimum: 0 }
            currency: { type: string, pattern: "^[A-Z]{3}$" }
destinations:
  - id: fulfillment
    kind: http
    url: "${FULFILLMENT_URL}"
    signing: { secret: "${DEMO_SECRET}" }
  - id: crm
    kind: http
    url: "${CRM_URL}"
    signing: { secret: "${DEMO_SECRET}" }
    retry: { max_attempts: 4, initial: 2s, max: 30s, jitter: full }
  - id: accounting
    kind: http
    url: "${ACCOUNTING_URL}"
    signing: { secret: "${DEMO_SECRET}" }
flows:
  - id: orders-everywhere
    on: { source: shop, event_types: [order.created] }
    steps:
      - deliver:                      # fan-out; crm and accounting get their own shape
          - fulfillment
          - { to: crm, body: '{email: .data.email, last_order: .data.order_id}' }
          - { to: accounting, body: '{invoice: .data.order_id, amount: .data.total, currency: .data.currency, at: $event.received_at}' }
  - id: paying-users-to-crm
    on: { source: shop, event_types: [user.created] }
    steps:
      - filter: '.data.plan != "free"'
      - transform: '{user: .data.user_id, email: .data.email, tier: (if .data.plan == "enterprise" then "gold" else "silver" end)}'
      - deliver: crm
channels:
  - id: ops
    kind: webhook
    url: "${ALERTS_URL}"
    signing: { secret: "${DEMO_SECRET}" }
alerts:
  - id: crm-flaky
    when: { failure_ratio: { destination: crm, above: 0.2, window: 1m, min_attempts: 3 } }
    notify: [ops]
    severity: warning
    cooldown: 2m
  - id: dead-letters
    when: { dead_letters: { above: 0 } }
    notify: [ops]
    severity: critical
"#;

const DEMO_SECRET: &str = "whsec_ZGVtby1zZWNyZXQtZm9yLWZlcnJ5LWRlbW8tb25seQ==";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the demo config is invalid (a bug): {0}")]
    Config(crate::config::ConfigErrors),
    #[error(transparent)]
    Serve(#[from] crate::app::ServeError),
    #[error("the secret key: {0}")]
    Key(String),
}

/// A demo receiver: prints what arrives; `fail_every` > 0 answers 503 to every n-th request.
async fn start_receiver(name: &'static str, fail_every: u64) -> Result<SocketAddr, DemoError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| DemoError::Listen {
            addr: "127.0.0.1:0".into(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DemoError::Listen {
        addr: "127.0.0.1:0".into(),
        source,
    })?;
    let count = Arc::new(AtomicU64::new(0));
    let key = crate::deliver::signing::decode_secret(DEMO_SECRET).unwrap_or_default();
    let app = axum::Router::new().route(
        "/",
        post(move |headers: HeaderMap, body: Bytes| {
            let count = count.clone();
            let key = key.clone();
            async move {
                let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
                let now = crate::clock::system_now_ms() / 1000;
                let signed = crate::deliver::signing::verify(&key, h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"), &body, now, 300).is_ok();
                let id = h("webhook-id").unwrap_or("?").to_string();
                if fail_every > 0 && n.is_multiple_of(fail_every) {
                    println!("[{name:<11}] {id} -> 503 (this receiver fails now and then; Ferry will retry)");
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let preview: String = String::from_utf8_lossy(&body).chars().take(90).collect();
                println!("[{name:<11}] {id} -> 200 signature {} {preview}", if signed { "ok" } else { "BAD" });
                StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// The demo config with the receivers' addresses filled in.
fn demo_config(
    fulfillment: SocketAddr,
    crm: SocketAddr,
    accounting: SocketAddr,
    alerts: SocketAddr,
) -> Result<crate::config::Config, crate::config::ConfigErrors> {
    let env = move |name: &str| match name {
        "FULFILLMENT_URL" => Some(format!("http://{fulfillment}/")),
        "CRM_URL" => Some(format!("http://{crm}/")),
        "ACCOUNTING_URL" => Some(format!("http://{accounting}/")),
        "ALERTS_URL" => Some(format!("http://{alerts}/")),
        "DEMO_SECRET" => Some(DEMO_SECRET.to_string()),
        _ => None,
    };
    crate::config::load_str(
        DEMO_CONFIG,
        "(demo config)",
        std::path::Path::new("."),
        &env,
    )
}

/// Runs the demo until `stop` resolves (the CLI's: Ctrl-C or `SIGTERM`). `api_token` is the API's token when the caller has one (from
/// `FERRY_API_TOKEN`): it is used and never printed; without one the demo's token is
/// `demo-token`, printed in the examples.
pub async fn run(
    listen: SocketAddr,
    data: Option<PathBuf>,
    database_url: Option<String>,
    api_token: Option<String>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    let fulfillment = start_receiver("fulfillment", 0).await?;
    let crm = start_receiver("crm", 3).await?;
    let accounting = start_receiver("accounting", 0).await?;
    let alerts = start_receiver("alerts", 0).await?;
    let config = demo_config(fulfillment, crm, accounting, alerts).map_err(DemoError::Config)?;
    let data = data
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id())));
    let mut options = ServeOptions::new(config, data.clone());
    // On PostgreSQL the secrets' key comes from FERRY_SECRET_KEY, or a fresh one for this
    // demo (the demo's own objects hold no sealed secret).
    let stored_in = match &database_url {
        Some(url) => {
            options.database_url = Some(url.clone());
            options.secret_key = Some(
                match crate::secrets::key_from_env(crate::secrets::KEY_ENV)
                    .map_err(|e| DemoError::Key(e.to_string()))?
                {
                    Some(key) => key,
                    None => crate::secrets::SecretKey::generate()
                        .map_err(|e| DemoError::Key(e.to_string()))?,
                },
            );
            crate::store::postgres::parse_url(url)
                .map(|c| crate::store::postgres::describe_target(&c))
                .unwrap_or_default()
        }
        None => data.display().to_string(),
    };
    let (token, token_note) = match api_token {
        Some(given) => {
            options.api_token = Some(given);
            ("$FERRY_API_TOKEN".to_string(), "from FERRY_API_TOKEN")
        }
        None => {
            options.api_token = Some("demo-token".to_string());
            ("demo-token".to_string(), "demo-token")
        }
    };
    let listener = crate::server::bind(listen).map_err(|source| DemoError::Listen {
        addr: listen.to_string(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| DemoError::Listen {
        addr: listen.to_string(),
        source,
    })?;
    let state = crate::app::prepare(options).await?;
    println!(
        r#"
Ferry demo on http://{addr}  (data in {stored_in}; API token: {token_note})
Three receivers stand in for the shop's systems: fulfillment, crm (fails every third request) and accounting.
A fourth, `alerts`, gets Ferry's alert notices (crm failing more than 20% of the time, dead letters).

Send an order (it fans out to all three):
  curl -sS http://{addr}/in/shop -H 'content-type: application/json' -H "Idempotency-Key: order-$RANDOM" \
    -d '{{"type":"order.created","data":{{"order_id":"o-1001","email":"ada@example.com","total":42.5,"currency":"EUR"}}}}'

Send a user (free plans are filtered out; paying ones go to the crm):
  curl -sS http://{addr}/in/shop -H 'content-type: application/json' \
    -d '{{"type":"user.created","data":{{"user_id":"u-7","email":"ada@example.com","plan":"pro"}}}}'

Send something malformed (refused with 422 and every violation listed):
  curl -sS http://{addr}/in/shop -H 'content-type: application/json' -d '{{"type":"order.created","data":{{"total":-1}}}}'

Look at what happened in the console: http://{addr}/ (sign in with the API token), or through the API
(an event lists its runs; a run shows each step's input and output):
  curl -sS -H "authorization: Bearer {token}" http://{addr}/api/v1/events/<event_id>
  curl -sS -H "authorization: Bearer {token}" http://{addr}/api/v1/runs/<run_id>
  curl -sS -H "authorization: Bearer {token}" http://{addr}/api/v1/dead-letters
  curl -sS -H "authorization: Bearer {token}" http://{addr}/api/v1/rejections
  curl -sS -H "authorization: Bearer {token}" http://{addr}/api/v1/destinations     # circuits and pauses
  curl -sS -H "authorization: Bearer {token}" http://{addr}/api/v1/alerts
  curl -sS http://{addr}/metrics
Stop with Ctrl-C.
"#
    );
    crate::app::serve(listener, state, stop).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo's config must stay valid: `ferry demo` is the first thing a person runs.
    #[test]
    fn the_demo_config_loads_with_the_shop_story() {
        let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
        let config = demo_config(addr, addr, addr, addr).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.alerts.len(), 2);
        assert!(config.sources.contains_key("shop"));
        let destinations: Vec<&str> = config.destinations.keys().map(String::as_str).collect();
        assert_eq!(destinations, ["accounting", "crm", "fulfillment"]);
        assert!(
            config.event_types.values().all(|t| t.validator.is_some()),
            "both demo event types have schemas"
        );
        assert_eq!(config.flows.len(), 2);
        // Accounting gets its own shape of an order.
        let order = Bytes::from_static(br#"{"type":"order.created","data":{"order_id":"o-1","email":"a@x.io","total":42.5,"currency":"EUR"}}"#);
        let event = Arc::new(crate::engine::EventInfo {
            id: "evt_1".into(),
            event_type: "order.created".into(),
            source: "shop".into(),
            received_at: 0,
            headers: serde_json::json!({}),
        });
        let flows = crate::engine::matching_flows(&config, "shop", "order.created");
        let plan = crate::engine::plan_with(
            &mut crate::engine::jq::Programs::default(),
            &crate::store::BodyIds::starting_at(1),
            &flows,
            &event,
            &order,
            0,
        );
        let accounting = plan
            .deliveries
            .iter()
            .find(|d| d.destination_id == "accounting")
            .unwrap();
        assert_eq!(
            accounting.body.as_ref().map(|b| &b.data[..]),
            Some(&br#"{"invoice":"o-1","amount":42.5,"currency":"EUR","at":"1970-01-01T00:00:00.000Z"}"#[..])
        );
        assert!(crate::deliver::signing::decode_secret(DEMO_SECRET).is_ok());
    }
}
