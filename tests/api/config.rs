//! Config through the API: sources, event types, destinations and flows created, replaced and
//! deleted while Ferry runs, checked exactly like the file, read-only when the file has them,
//! kept across a restart.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};

fn file_config(file_receiver: &Receiver) -> String {
    format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources:
  - id: shop
    kind: webhook
    verify: {{ scheme: none }}
    event_type: {{ from: body, path: ".type" }}
destinations:
  - id: warehouse
    kind: http
    url: {}
"#,
        file_receiver.url
    )
}

fn order(id: Option<u32>) -> String {
    match id {
        Some(id) => json!({"type": "order.created", "data": {"id": id}}).to_string(),
        None => json!({"type": "order.created", "data": {}}).to_string(),
    }
}

#[tokio::test]
async fn objects_made_through_the_api_run_at_once_and_survive_a_restart() {
    let (warehouse, crm) = (Receiver::start().await, Receiver::start().await);
    let yaml = file_config(&warehouse);
    let dir = tempfile::tempdir().unwrap();
    let clock = ferry::clock::ManualClock::new(ferry::clock::system_now_ms());
    let app = spawn_app_at(&yaml, dir.path(), clock.clone(), None).await;

    let (status, made) = app
        .api_post_json(
            "/api/v1/destinations",
            json!({"id": "crm", "kind": "http", "url": crm.url.clone(),
                   "signing": {"secret": SECRET}, "retry": {"max_attempts": 2}}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["provisioned"], false);
    assert_eq!(made["changed"], true);
    assert!(
        !made.to_string().contains(SECRET),
        "secrets are masked: {made}"
    );
    assert_eq!(made["spec"]["signing"]["secret"], "********");

    let (status, _) = app
        .api_post_json(
            "/api/v1/event-types",
            json!({"name": "order.created", "schema": {"type": "object", "required": ["data"],
                   "properties": {"data": {"type": "object", "required": ["id"]}}}}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, flow) = app
        .api_post_json(
            "/api/v1/flows",
            json!({"id": "orders", "on": {"source": "shop", "event_types": ["order.created"]},
                   "steps": [{"transform": "{order: .data.id}"}, {"deliver": ["crm"]}]}),
        )
        .await;
    assert_eq!(status, 201, "{flow}");

    // The new schema and flow apply to the next event.
    let refused = app.post_json("/in/shop", &order(None), &[]).await;
    assert_eq!(refused.status(), 422);
    app.accept("/in/shop", &order(Some(7)), &[]).await;
    crm.wait_for(1).await;
    let body: Value = serde_json::from_slice(&crm.requests()[0].body).unwrap();
    assert_eq!(body, json!({"order": 7}));
    assert!(crm.requests()[0].headers.contains_key("webhook-signature"));

    // Replacing the flow sends the next event elsewhere.
    let (status, replaced) = app
        .api_send(
            Method::PUT,
            "/api/v1/flows/orders",
            Some(json!({"on": {"source": "shop"}, "steps": [{"deliver": ["warehouse"]}]})),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    let (status, same) = app
        .api_send(
            Method::PUT,
            "/api/v1/flows/orders",
            Some(json!({"id": "orders", "on": {"source": "shop"}, "steps": [{"deliver": ["warehouse"]}]})),
        )
        .await;
    assert_eq!((status.as_u16(), &same["changed"]), (200, &json!(false)));
    app.accept("/in/shop", &order(Some(8)), &[]).await;
    warehouse.wait_for(1).await;
    assert_eq!(crm.count(), 1);

    // A new schema is a new version; the old one is kept.
    let (status, _) = app
        .api_send(
            Method::PUT,
            "/api/v1/event-types/order.created",
            Some(json!({"schema": {"type": "object"}})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, et) = app.api_get("/api/v1/event-types/order.created").await;
    let versions = et["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{et}");
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[1]["schema"], json!({"type": "object"}));
    app.accept("/in/shop", &order(None), &[]).await;

    // After a restart on the same data, the API's objects are still there and still run.
    drop(app);
    let app = spawn_app_at(&yaml, dir.path(), clock, None).await;
    let (_, flows) = app.api_get("/api/v1/flows").await;
    assert_eq!(flows["data"][0]["id"], "orders");
    assert_eq!(flows["data"][0]["provisioned"], false);
    let (_, dests) = app.api_get("/api/v1/destinations").await;
    let ids: Vec<&str> = dests["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["crm", "warehouse"]);
    assert_eq!(dests["data"][1]["provisioned"], true);
    assert_eq!(dests["data"][1]["circuit"]["state"], "closed");
    let before = warehouse.count();
    app.accept("/in/shop", &order(Some(9)), &[]).await;
    warehouse.wait_for(before + 1).await;
    let (_, et) = app.api_get("/api/v1/event-types/order.created").await;
    assert_eq!(
        et["versions"].as_array().unwrap().len(),
        2,
        "no new version on restart"
    );
}

#[tokio::test]
async fn the_api_refuses_what_the_file_refuses_and_never_changes_the_files_objects() {
    let warehouse = Receiver::start().await;
    let yaml = file_config(&warehouse);
    let app = spawn_app(&yaml).await;

    // Provisioned objects are listed, and read-only.
    let (_, sources) = app.api_get("/api/v1/sources").await;
    assert_eq!(sources["data"][0]["id"], "shop");
    assert_eq!(sources["data"][0]["provisioned"], true);
    for (method, body) in [
        (
            Method::PUT,
            Some(json!({"kind": "webhook", "verify": {"scheme": "none"}})),
        ),
        (Method::DELETE, None),
    ] {
        let (status, e) = app.api_send(method, "/api/v1/sources/shop", body).await;
        assert_eq!(
            (status.as_u16(), e["error"].as_str()),
            (409, Some("provisioned")),
            "{e}"
        );
    }
    let (status, e) = app
        .api_post_json(
            "/api/v1/destinations",
            json!({"id": "warehouse", "kind": "http", "url": "https://x.example"}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), e["error"].as_str()),
        (409, Some("provisioned"))
    );

    // An invalid object: the same messages as the file's, placed `api (kind id)`.
    let bad = json!({"id": "crm", "kind": "http", "url": "ftp://crm.example/x", "retry": {"initial": "soon"}});
    let (status, e) = app.api_post_json("/api/v1/destinations", bad).await;
    assert_eq!(
        (status.as_u16(), e["error"].as_str()),
        (422, Some("invalid_object")),
        "{e}"
    );
    let file_errors = ferry::config::load_str(
        "destinations:\n  - id: crm\n    kind: http\n    url: ftp://crm.example/x\n    retry: { initial: soon }\n",
        "f.yaml",
        std::path::Path::new("."),
        &|_| None,
    )
    .unwrap_err();
    let api_messages: Vec<&str> = e["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["place"], "api (destination crm)");
            d["message"].as_str().unwrap()
        })
        .collect();
    let file_messages: Vec<&str> = file_errors.0.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(api_messages, file_messages);
    let (status, _) = app.api_get("/api/v1/destinations/crm").await;
    assert_eq!(status, 404, "nothing was made");

    // Unknown fields, wrong shapes, a wrong reference, a bad jq program.
    for (path, body, code) in [
        (
            "/api/v1/sources",
            json!({"id": "s2", "kind": "webhook", "verify": {"scheme": "none"}, "colour": 1}),
            "invalid_object",
        ),
        (
            "/api/v1/sources",
            json!(["not", "an", "object"]),
            "invalid_body",
        ),
        (
            "/api/v1/sources",
            json!({"kind": "webhook"}),
            "invalid_body",
        ),
        (
            "/api/v1/flows",
            json!({"id": "f", "on": {"source": "ghost"}, "steps": [{"deliver": "warehouse"}]}),
            "invalid_object",
        ),
        (
            "/api/v1/flows",
            json!({"id": "f", "on": {"source": "shop"}, "steps": [{"filter": ".a =="}]}),
            "invalid_object",
        ),
        (
            "/api/v1/event-types",
            json!({"name": "x", "schema_file": "/etc/passwd"}),
            "invalid_object",
        ),
        (
            "/api/v1/event-types",
            json!({"name": "x", "schema": {"type": "nope"}}),
            "invalid_object",
        ),
    ] {
        let (status, e) = app.api_post_json(path, body.clone()).await;
        assert_eq!(
            (status.as_u16(), e["error"].as_str()),
            (422, Some(code)),
            "{body} -> {e}"
        );
    }
    let (status, e) = app
        .api_send(
            Method::PUT,
            "/api/v1/sources/s3",
            Some(json!({"id": "other", "kind": "webhook", "verify": {"scheme": "none"}})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), e["error"].as_str()),
        (422, Some("invalid_body")),
        "{e}"
    );

    // A destination a flow uses cannot be deleted: the config would not hold.
    app.api_post_json(
        "/api/v1/destinations",
        json!({"id": "crm", "kind": "http", "url": warehouse.url.clone()}),
    )
    .await;
    let (status, e) = app
        .api_post_json(
            "/api/v1/flows",
            json!({"id": "f", "on": {"source": "shop"}, "steps": [{"deliver": "crm"}]}),
        )
        .await;
    assert_eq!(status, 201, "{e}");
    let (status, e) = app
        .api_send(Method::DELETE, "/api/v1/destinations/crm", None)
        .await;
    assert_eq!(
        (status.as_u16(), e["error"].as_str()),
        (422, Some("invalid_object")),
        "{e}"
    );
    assert!(
        e["details"][0]["place"]
            .as_str()
            .unwrap()
            .contains("flow f"),
        "{e}"
    );
    let (status, e) = app
        .api_post_json(
            "/api/v1/flows",
            json!({"id": "f", "on": {"source": "shop"}, "steps": []}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), e["error"].as_str()),
        (409, Some("already_exists"))
    );
    let (status, _) = app.api_send(Method::DELETE, "/api/v1/flows/f", None).await;
    assert_eq!(status, 204);
    let (status, _) = app
        .api_send(Method::DELETE, "/api/v1/destinations/crm", None)
        .await;
    assert_eq!(status, 204);
    let (status, e) = app
        .api_send(Method::DELETE, "/api/v1/destinations/crm", None)
        .await;
    assert_eq!(
        (status.as_u16(), e["error"].as_str()),
        (404, Some("not_found"))
    );

    // A kind that does not exist is a JSON 404 like every other.
    let (status, e) = app.api_get("/api/v1/widgets").await;
    assert_eq!(
        (status.as_u16(), e["error"].as_str()),
        (404, Some("not_found")),
        "{e}"
    );

    // A read token may list but not change.
    let (_, read) = app
        .api_post_json("/api/v1/tokens", json!({"name": "r", "scope": "read"}))
        .await;
    let read = read["token"].as_str().unwrap();
    let r = app
        .http
        .post(app.url("/api/v1/sources"))
        .bearer_auth(read)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = app
        .http
        .get(app.url("/api/v1/sources"))
        .bearer_auth(read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .get(app.url("/api/v1/sources"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_destination_with_pending_deliveries_is_not_deleted_and_lists_page() {
    let warehouse = Receiver::start_with(Reply::status(503)).await;
    let app = spawn_app(&file_config(&warehouse)).await;
    app.api_post_json(
        "/api/v1/destinations",
        json!({"id": "crm", "kind": "http", "url": warehouse.url.clone()}),
    )
    .await;
    app.api_post_json(
        "/api/v1/flows",
        json!({"id": "f", "on": {"source": "shop"}, "steps": [{"deliver": "crm"}]}),
    )
    .await;
    app.accept("/in/shop", &order(Some(1)), &[]).await;
    warehouse.wait_for(1).await;
    // The run waits for its delivery, and the delivery for its retry: neither can go.
    let (status, e) = app.api_send(Method::DELETE, "/api/v1/flows/f", None).await;
    assert_eq!(
        (status.as_u16(), e["error"].as_str()),
        (409, Some("in_use")),
        "{e}"
    );
    let (status, e) = app
        .api_send(Method::DELETE, "/api/v1/destinations/crm", None)
        .await;
    assert_eq!(
        (status.as_u16(), e["error"].as_str()),
        (409, Some("in_use")),
        "{e}"
    );
    // Pointing the destination elsewhere: its waiting delivery goes to the new URL.
    let fixed = Receiver::start().await;
    let (status, e) = app
        .api_send(
            Method::PUT,
            "/api/v1/destinations/crm",
            Some(json!({"kind": "http", "url": fixed.url})),
        )
        .await;
    assert_eq!(status, 200, "{e}");
    app.clock.advance(std::time::Duration::from_secs(3600));
    fixed.wait_for(1).await;
    wait_until("the run is done", || async {
        let (status, _) = app.api_send(Method::DELETE, "/api/v1/flows/f", None).await;
        status == 204
    })
    .await;
    let (status, e) = app
        .api_send(Method::DELETE, "/api/v1/destinations/crm", None)
        .await;
    assert_eq!(status, 204, "{e}");

    // Twelve sources (one from the file) walked two at a time: each once, in id order.
    for i in 0..11 {
        let (status, _) = app
            .api_post_json(
                "/api/v1/sources",
                json!({"id": format!("s{i:02}"), "kind": "webhook", "verify": {"scheme": "none"}}),
            )
            .await;
        assert_eq!(status, 201);
    }
    let mut seen: Vec<String> = Vec::new();
    let mut path = "/api/v1/sources?limit=2".to_string();
    loop {
        let (status, page) = app.api_get(&path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/sources?limit=2&after={next}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..11).map(|i| format!("s{i:02}")).collect();
    expected.push("shop".into());
    assert_eq!(seen, expected);
    // A source made through the API takes events at once.
    let r = app.post_json("/in/s05", &order(Some(2)), &[]).await;
    assert_eq!(r.status(), 202);
    let _: Value = r.json().await.unwrap();
}

fn ferry_apply(app: &TestApp, file: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("apply")
        .arg("-f")
        .arg(file)
        .args(extra)
        .args(["--url", &app.url(""), "--token", TOKEN])
        .env_remove("FERRY_API_TOKEN")
        .env("CRM_SECRET", SECRET)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_shows_its_plan_is_a_no_op_the_second_time_and_prunes() {
    let crm = Receiver::start().await;
    let app = spawn_app(&file_config(&crm)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("order.json"),
        r#"{"type": "object", "required": ["data"]}"#,
    )
    .unwrap();
    let file = dir.path().join("objects.yaml");
    let objects = format!(
        r#"
sources:
  - {{ id: web, kind: webhook, verify: {{ scheme: none }} }}
  - {{ id: legacy, kind: webhook, verify: {{ scheme: none }} }}
event_types:
  - {{ name: order.created, schema_file: order.json }}
destinations:
  - id: crm
    kind: http
    url: {}
    signing: {{ secret: "${{CRM_SECRET}}" }}
flows:
  - id: web-orders
    on: {{ source: web, event_types: [order.created] }}
    steps:
      - deliver: crm
"#,
        crm.url
    );
    std::fs::write(&file, &objects).unwrap();

    let (ok, out, err) = ferry_apply(&app, &file, &["--dry-run"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("+ source web\n") && out.contains("+ flow web-orders\n"),
        "{out}"
    );
    assert!(
        out.contains("5 to create, 0 to change, 0 to delete, 0 unchanged"),
        "{out}"
    );
    let (_, flows) = app.api_get("/api/v1/flows").await;
    assert_eq!(flows["data"], json!([]), "a dry run changes nothing");

    let (ok, out, err) = ferry_apply(&app, &file, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("applied 5 change(s)"), "{out}");
    let (_, et) = app.api_get("/api/v1/event-types/order.created").await;
    assert_eq!(
        et["spec"]["schema"]["required"],
        json!(["data"]),
        "the schema file is sent inline"
    );
    app.accept("/in/web", r#"{"type": "order.created", "data": {}}"#, &[])
        .await;
    crm.wait_for(1).await;
    assert!(crm.requests()[0].headers.contains_key("webhook-signature"));

    let (ok, out, err) = ferry_apply(&app, &file, &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("0 to create, 0 to change, 0 to delete, 5 unchanged"),
        "{out}"
    );
    assert!(out.contains("applied 0 change(s)"), "{out}");

    // A changed flow and a source gone from the file: changed, and deleted only with --prune.
    let changed = objects
        .replace(
            "  - { id: legacy, kind: webhook, verify: { scheme: none } }\n",
            "",
        )
        .replace(
            "      - deliver: crm",
            "      - filter: '.data != null'\n      - deliver: crm",
        );
    std::fs::write(&file, &changed).unwrap();
    let (ok, out, err) = ferry_apply(&app, &file, &["--dry-run"]);
    assert!(ok, "{err}");
    assert!(out.contains("~ flow web-orders (steps)"), "{out}");
    assert!(
        out.contains("    - steps: [{\"deliver\":\"crm\"}]\n    + steps: [{\"filter\":\".data != null\"},{\"deliver\":\"crm\"}]\n"),
        "{out}"
    );
    assert!(!out.contains("- source legacy"), "{out}");
    let (ok, out, err) = ferry_apply(&app, &file, &["--prune"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("- source legacy\n") && out.contains("1 to change, 1 to delete"),
        "{out}"
    );
    let (status, _) = app.api_get("/api/v1/sources/legacy").await;
    assert_eq!(status, 404);
    let (ok, out, _) = ferry_apply(&app, &file, &["--prune"]);
    assert!(
        ok && out.contains("0 to create, 0 to change, 0 to delete, 4 unchanged"),
        "{out}"
    );

    // The server's own file objects cannot be changed this way; a missing variable stops it.
    std::fs::write(&file, "sources:\n  - { id: shop, kind: webhook, verify: { scheme: none }, event_type: { from: header, name: x-type } }\n").unwrap();
    let (ok, _, err) = ferry_apply(&app, &file, &[]);
    assert!(!ok);
    assert!(
        err.contains("source `shop` is in the server's config file"),
        "{err}"
    );
    std::fs::write(
        &file,
        "destinations:\n  - { id: d, kind: http, url: \"${NOT_SET_ANYWHERE}\" }\n",
    )
    .unwrap();
    let (ok, _, err) = ferry_apply(&app, &file, &[]);
    assert!(!ok);
    assert!(
        err.contains("objects.yaml:2: environment variable `NOT_SET_ANYWHERE` is not set"),
        "{err}"
    );
}

#[tokio::test]
async fn a_file_that_no_longer_fits_the_api_objects_stops_the_start_with_the_reason() {
    let crm = Receiver::start().await;
    let yaml = file_config(&crm);
    let dir = tempfile::tempdir().unwrap();
    let clock = ferry::clock::ManualClock::new(ferry::clock::system_now_ms());
    let app = spawn_app_at(&yaml, dir.path(), clock.clone(), None).await;
    let (status, _) = app
        .api_post_json(
            "/api/v1/destinations",
            json!({"id": "crm", "kind": "http", "url": crm.url}),
        )
        .await;
    assert_eq!(status, 201);
    drop(app);

    // The file now defines `crm` too.
    let clash = format!(
        "{yaml}  - {{ id: crm, kind: http, url: \"{}\" }}\n",
        crm.url
    );
    let config =
        ferry::config::load_str(&clash, "ferry.yaml", std::path::Path::new("."), &|_| None)
            .unwrap();
    let (mut options, _schema) = crate::helpers::serve_options(config, dir.path()).await;
    options.clock = clock;
    let error = match ferry::app::prepare(options).await {
        Ok(_) => panic!("started with two definitions of `crm`"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("api (destination crm): the config file `ferry.yaml` defines this destination too; delete one of them"),
        "{error}"
    );
}
