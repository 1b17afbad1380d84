//! API tokens: made with a scope, shown once, stored hashed, revoked; 401 without a valid
//! token, 403 for a read token on a write route.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn tokens_have_scopes_are_stored_hashed_and_can_be_revoked() {
    let app = spawn_app("sources: [ { id: shop, kind: webhook, verify: { scheme: none } } ]").await;
    let (status, admin) = app
        .api_post_json(
            "/api/v1/tokens",
            json!({"name": "deploy-bot", "scope": "admin"}),
        )
        .await;
    assert_eq!(status, 201, "{admin}");
    let (status, read) = app
        .api_post_json(
            "/api/v1/tokens",
            json!({"name": "dashboard", "scope": "read"}),
        )
        .await;
    assert_eq!(status, 201, "{read}");
    let (admin_token, read_token) = (
        admin["token"].as_str().unwrap().to_string(),
        read["token"].as_str().unwrap().to_string(),
    );
    assert!(read_token.starts_with("fry_"));
    let call = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut r = app.http.request(method, app.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    use reqwest::Method;
    assert_eq!(
        call(Method::GET, "/api/v1/dead-letters", Some(&read_token)).await,
        200
    );
    assert_eq!(
        call(Method::GET, "/api/v1/dead-letters", Some(&admin_token)).await,
        200
    );
    assert_eq!(
        call(
            Method::POST,
            "/api/v1/deliveries/dlv_x/retry",
            Some(&read_token)
        )
        .await,
        403
    );
    assert_eq!(
        call(
            Method::POST,
            "/api/v1/deliveries/dlv_x/retry",
            Some(&admin_token)
        )
        .await,
        404
    );
    assert_eq!(
        call(Method::GET, "/api/v1/tokens", Some(&read_token)).await,
        403
    );
    assert_eq!(call(Method::GET, "/api/v1/dead-letters", None).await, 401);
    assert_eq!(
        call(Method::GET, "/api/v1/dead-letters", Some("fry_wrong")).await,
        401
    );

    // Listed without their values; the store keeps only digests.
    let (_, list) = app.api_get("/api/v1/tokens").await;
    let listed = list.to_string();
    assert!(
        listed.contains("dashboard") && listed.contains("deploy-bot"),
        "{listed}"
    );
    assert!(
        !listed.contains(&read_token) && !listed.contains("\"token\""),
        "{listed}"
    );
    // At rest: neither the rows of either backend nor SQLite's files hold a token in clear.
    let rows = app.store_query("SELECT * FROM api_tokens").await;
    assert!(rows.len() >= 2, "{rows:?}");
    let mut stored: Vec<u8> = rows
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(String::into_bytes)
        .collect();
    for entry in std::fs::read_dir(app.data_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ferry.db")
        {
            stored.extend(std::fs::read(path).unwrap());
        }
    }
    let needle = read_token.as_bytes();
    assert!(
        !stored.windows(needle.len()).any(|w| w == needle),
        "a token is stored in clear"
    );

    // Revoked: it stops working at once.
    let id = read["id"].as_str().unwrap();
    assert_eq!(
        call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(&admin_token)
        )
        .await,
        204
    );
    assert_eq!(
        call(Method::GET, "/api/v1/dead-letters", Some(&read_token)).await,
        401
    );
    assert_eq!(
        call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(&admin_token)
        )
        .await,
        404
    );

    let (status, bad) = app
        .api_post_json("/api/v1/tokens", json!({"name": "x", "scope": "owner"}))
        .await;
    assert_eq!(status, 422, "{bad}");
    assert_eq!(bad["error"], "invalid_body");
}
