//! The OpenAPI document: generated from the code, served, committed, and internally sound.

use crate::helpers::*;

fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.push(x.as_str().unwrap_or_default().to_string());
                }
                refs(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_committed_document_is_the_generated_one_and_is_served() {
    let generated = ferry::api::openapi::document();
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let committed = std::fs::read_to_string(committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is not the document the code generates; refresh it with `cargo run -- openapi > docs/openapi.json`"
    );

    let app = spawn_app("{}").await;
    let served = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200, "served without a token");
    assert_eq!(served.text().await.unwrap(), generated);

    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/v1/events",
        "/api/v1/events/{id}",
        "/api/v1/deliveries/{id}/retry",
        "/api/v1/dead-letters",
        "/api/v1/runs/{id}",
        "/api/v1/runs/replay",
        "/api/v1/flows/{id}/test",
        "/api/v1/destinations/{id}/pause",
        "/api/v1/{kind}",
        "/api/v1/{kind}/{id}",
        "/api/v1/tokens/{id}",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    // Every response has a description, every operation id is unique, and every reference
    // resolves.
    let mut ids = std::collections::BTreeSet::new();
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_string()),
                "operationId {id} twice ({method} {path})"
            );
            for (code, response) in op["responses"].as_object().unwrap() {
                assert!(
                    response["description"].is_string(),
                    "{method} {path} {code}"
                );
            }
        }
    }
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for r in found {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} does not resolve"
        );
    }
}
