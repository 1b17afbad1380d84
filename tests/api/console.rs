//! The console in-process: sign-in with a token and its session cookie, CSRF and cross-origin
//! refusals, the security headers of every page, the pages' content, and hostile payloads,
//! ids and query parameters shown escaped while the server goes on answering.

use crate::helpers::*;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use serde_json::json;

const HOSTILE: &str = "<script>alert('x')</script>";

/// `pairs` as a form body.
fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

trait FormBody {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(form(pairs))
    }
}

/// A `POST` as the console's own pages send it (with this server as its `Origin`).
fn post(app: &TestApp, path: &str) -> reqwest::RequestBuilder {
    browser()
        .post(app.url(path))
        .header("origin", format!("http://{}", app.addr))
        .header("origin", format!("http://{}", app.addr))
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`; the session cookie (`name=value`).
async fn sign_in(app: &TestApp, token: &str) -> String {
    let r = post(app, "/sign-in")
        .form_body(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    cookie.split(';').next().unwrap().to_string()
}

async fn get(app: &TestApp, cookie: &str, path: &str) -> (StatusCode, String) {
    let r = browser()
        .get(app.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let csp = r.headers().get(CONTENT_SECURITY_POLICY).cloned();
    let body = r.text().await.unwrap();
    if status.is_success() {
        let csp = csp.expect("every page has a CSP");
        assert!(csp.to_str().unwrap().contains("default-src 'none'"));
    }
    (status, body)
}

/// The CSRF token in a page's sign-out form.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn sign_in_shows_the_pages_escapes_what_it_shows_and_refuses_forged_posts() {
    let receiver = Receiver::start().await;
    let yaml = format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: crm, kind: http, url: "{}" }} ]
flows: [ {{ id: orders, on: {{ source: shop }}, steps: [ {{ deliver: crm }} ] }} ]
"#,
        receiver.url
    );
    let app = spawn_app(&yaml).await;

    // Signed out: every page sends to the sign-in page, which has the headers too.
    let r = browser().get(app.url("/events")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/sign-in");
    let r = browser().get(app.url("/sign-in")).send().await.unwrap();
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(r.headers().contains_key(CONTENT_SECURITY_POLICY));
    let r = post(&app, "/sign-in")
        .form_body(&[("token", "not-a-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("not valid"));

    // Hostile sign-in forms: a huge token, bytes that are not UTF-8, a deep form: refused,
    // and the server goes on.
    let huge = "9".repeat(1 << 20);
    let r = post(&app, "/sign-in")
        .form_body(&[("token", huge.as_str())])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    for body in [
        &b"token=%FF%FE%00"[..],
        &b"token=\xff\xfe"[..],
        "token[a][b][c]=1".as_bytes(),
    ] {
        let r = post(&app, "/sign-in")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
    }

    let cookie = sign_in(&app, TOKEN).await;
    let (status, overview) = get(&app, &cookie, "/").await;
    assert_eq!(status, 200, "{overview}");
    assert!(overview.contains("Overview") && overview.contains("crm"));
    assert!(overview.contains(">admin<"), "the scope is shown");
    assert!(!overview.contains("<script"), "no script at all");

    // A hostile payload, type and header are shown escaped in the list and on the event page.
    let body = json!({"type": HOSTILE, "note": HOSTILE}).to_string();
    let id = app
        .accept("/in/shop", &body, &[("x-note", HOSTILE.to_string())])
        .await;
    receiver.wait_for(1).await;
    let (_, list) = get(&app, &cookie, "/events").await;
    assert!(list.contains(&id));
    assert!(
        list.contains("&lt;script&gt;") || list.contains("&#60;script&#62;"),
        "{list}"
    );
    assert!(!list.contains(HOSTILE));
    let (status, page) = get(&app, &cookie, &format!("/events/{id}")).await;
    assert_eq!(status, 200);
    assert!(!page.contains(HOSTILE), "{page}");
    assert!(page.contains("orders") && page.contains("To crm"), "{page}");
    assert!(
        page.contains("succeeded"),
        "the delivery and its attempt: {page}"
    );
    let (status, _) = get(&app, &cookie, "/events/%3Cscript%3E").await;
    assert_eq!(status, 404);

    // Hostile filters: an error on the page, escaped, and the server answers after.
    let (status, page) = get(&app, &cookie, "/events?status=%3Cscript%3E").await;
    assert_eq!(status, 200);
    assert!(page.contains("is not one of") && !page.contains("<script>"));
    let (status, page) = get(&app, &cookie, "/events?source=%FF%FE&type=x").await;
    assert!(status == 200 || status == 400, "{status}: {page}");
    let deep = "%5B".repeat(3_000);
    let huge = "9".repeat(40);
    let (status, _) = get(
        &app,
        &cookie,
        &format!("/events?source={deep}&after={huge}"),
    )
    .await;
    assert!(status.as_u16() < 500, "{status}");
    let (status, _) = get(&app, &cookie, "/").await;
    assert_eq!(status, 200);

    // Forged posts: another site's form, no CSRF token, a wrong one.
    let csrf = csrf_of(&overview);
    let r = browser()
        .post(app.url("/sign-in"))
        .header("origin", "http://evil.example")
        .form_body(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Neither Origin nor Referer: refused too; behind a proxy, its X-Forwarded-Host counts.
    let r = browser()
        .post(app.url("/sign-in"))
        .form_body(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = browser()
        .post(app.url("/sign-in"))
        .header("origin", "https://ferry.example.com")
        .header("x-forwarded-host", "ferry.example.com")
        .form_body(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    for form in [vec![], vec![("csrf", "wrong")]] {
        let r = post(&app, "/sign-out")
            .header("cookie", &cookie)
            .form_body(&form)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{:?}: {}", form, r.status());
    }
    let (status, _) = get(&app, &cookie, "/").await;
    assert_eq!(status, 200, "still signed in");
    let r = post(&app, "/sign-out")
        .header("cookie", &cookie)
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, _) = get(&app, &cookie, "/").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "signed out");
}

#[tokio::test]
async fn a_read_token_signs_in_as_read_and_a_revoked_token_ends_its_sessions() {
    let app = spawn_app("sources: [ { id: shop, kind: webhook, verify: { scheme: none } } ]").await;
    let (status, made) = app
        .api_post_json(
            "/api/v1/tokens",
            json!({"name": "dashboard", "scope": "read"}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let token = made["token"].as_str().unwrap();
    let cookie = sign_in(&app, token).await;
    let (status, page) = get(&app, &cookie, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains(">read<"), "{page}");
    let (status, _) = app
        .api_send(
            reqwest::Method::DELETE,
            &format!("/api/v1/tokens/{}", made["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = get(&app, &cookie, "/").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "revoked");
}

#[tokio::test]
async fn a_dead_letter_is_retried_from_its_event_page_by_an_admin_only() {
    let receiver = Receiver::start_with(Reply::status(500)).await;
    let yaml = format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: crm, kind: http, url: "{}", retry: {{ max_attempts: 1 }} }} ]
flows: [ {{ id: orders, on: {{ source: shop }}, steps: [ {{ deliver: crm }} ] }} ]
"#,
        receiver.url
    );
    let app = spawn_app(&yaml).await;
    let id = app.accept("/in/shop", r#"{"type": "order"}"#, &[]).await;
    let delivery = app.only_delivery(&id).await;
    let delivery_id = delivery["id"].as_str().unwrap().to_string();
    wait_until("the delivery is dead", || async {
        app.only_delivery(&id).await["status"] == "dead"
    })
    .await;

    let (status, made) = app
        .api_post_json("/api/v1/tokens", json!({"name": "viewer", "scope": "read"}))
        .await;
    assert_eq!(status, 201);
    let reader = sign_in(&app, made["token"].as_str().unwrap()).await;
    let (_, page) = get(&app, &reader, &format!("/events/{id}")).await;
    assert!(
        page.contains("dead") && !page.contains("Retry this delivery"),
        "{page}"
    );
    let retry = format!("/deliveries/{delivery_id}/retry");
    let r = post(&app, &retry)
        .header("cookie", &reader)
        .form_body(&[("csrf", csrf_of(&page).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a read session acts on nothing"
    );

    let admin = sign_in(&app, TOKEN).await;
    let (_, page) = get(&app, &admin, &format!("/events/{id}")).await;
    assert!(page.contains("Retry this delivery"), "{page}");
    receiver.set_fallback(Reply::status(200));
    let before = receiver.count();
    let r = post(&app, &retry)
        .header("cookie", &admin)
        .form_body(&[("csrf", csrf_of(&page).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], format!("/events/{id}").as_str());
    receiver.wait_for(before + 1).await;
    wait_until("the delivery succeeded", || async {
        app.only_delivery(&id).await["status"] == "succeeded"
    })
    .await;
    let (_, page) = get(&app, &admin, &format!("/events/{id}")).await;
    assert!(
        !page.contains("Retry this delivery"),
        "no longer dead: {page}"
    );
}
