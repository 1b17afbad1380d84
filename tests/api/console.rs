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
    // The one script is the console's own file: nothing inline.
    assert_eq!(
        overview.matches("<script").count(),
        overview
            .matches("<script src=\"/console/app.js\" defer></script>")
            .count(),
        "{overview}"
    );

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
    assert!(
        page.contains("orders") && page.contains("To <a href=\"/destinations/crm\">crm</a>"),
        "{page}"
    );
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
    assert_eq!(
        r.headers()[LOCATION],
        format!("/events/{id}#{delivery_id}").as_str()
    );
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

/// An app with two destinations (`crm` that succeeds, `books` that fails for good), a flow
/// from the file, an alert rule, and a session of each scope.
struct Shop {
    app: TestApp,
    admin: String,
    reader: String,
    good: Receiver,
    bad: Receiver,
    _alerts: Receiver,
}

async fn shop(flaky_attempts: u32) -> Shop {
    let good = Receiver::start().await;
    let bad = Receiver::start_with(Reply::status(500)).await;
    let alerts = Receiver::start().await;
    let yaml = format!(
        r#"
settings: {{ allow_private_destinations: true, public_url: "https://ferry.example.com/" }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }}, event_type: {{ from: body, path: .type }} }} ]
destinations:
  - {{ id: crm, kind: http, url: "{}" }}
  - {{ id: books, kind: http, url: "{}", retry: {{ max_attempts: {flaky_attempts}, initial: 10ms }} }}
flows: [ {{ id: orders, on: {{ source: shop }}, steps: [ {{ filter: '.total > 0' }}, {{ deliver: [crm, books] }} ] }} ]
channels: [ {{ id: ops, kind: webhook, url: "{}" }} ]
alerts: [ {{ id: books-dead, when: {{ dead_letters: {{ above: 0 }} }}, notify: [ops] }} ]
"#,
        good.url, bad.url, alerts.url
    );
    let app = spawn_app(&yaml).await;
    let admin = sign_in(&app, TOKEN).await;
    let (status, made) = app
        .api_post_json("/api/v1/tokens", json!({"name": "viewer", "scope": "read"}))
        .await;
    assert_eq!(status, 201);
    let reader = sign_in(&app, made["token"].as_str().unwrap()).await;
    Shop {
        app,
        admin,
        reader,
        good,
        bad,
        _alerts: alerts,
    }
}

/// Asserts the server still answers a page normally (after hostile input).
async fn still_answers(app: &TestApp, cookie: &str) {
    let (status, page) = get(app, cookie, "/destinations").await;
    assert_eq!(status, 200, "{page}");
}

#[tokio::test]
async fn destinations_sources_flows_and_alerts_pages_show_their_state_escaped() {
    let Shop {
        app,
        admin,
        reader,
        good,
        ..
    } = shop(1).await;
    let id = app
        .accept("/in/shop", r#"{"type": "order", "total": 5}"#, &[])
        .await;
    good.wait_for(1).await;
    wait_until("the books delivery is dead", || async {
        let (_, d) = app
            .api_get(&format!("/api/v1/deliveries?event_id={id}"))
            .await;
        d["data"]
            .as_array()
            .is_some_and(|all| all.iter().any(|d| d["status"] == "dead"))
    })
    .await;
    // A refused request with a hostile body is in the source's rejected log, escaped.
    let r = client()
        .post(app.url("/in/shop"))
        .body(format!("{{\"type\": \"{HOSTILE}\" not json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let (status, page) = get(&app, &admin, "/destinations").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("crm") && page.contains("books") && page.contains("100.0%"),
        "{page}"
    );
    let (status, page) = get(&app, &admin, "/destinations/books").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Recent attempts") && page.contains("500"),
        "{page}"
    );
    assert!(
        page.contains("Pause deliveries"),
        "an admin may pause: {page}"
    );
    let (_, page) = get(&app, &reader, "/destinations/books").await;
    assert!(
        !page.contains("Pause deliveries"),
        "a read session may not: {page}"
    );
    let (status, _) = get(&app, &admin, "/destinations/%3Cscript%3E").await;
    assert_eq!(status, 404);

    let (_, page) = get(&app, &admin, "/sources").await;
    assert!(page.contains("https://ferry.example.com/in/shop"), "{page}");
    let (status, page) = get(&app, &admin, "/sources/shop").await;
    assert_eq!(status, 200);
    assert!(page.contains(&id), "its recent events: {page}");
    assert!(
        page.contains("invalid_json") || page.contains("not JSON"),
        "{page}"
    );
    assert!(
        !page.contains(HOSTILE) && page.contains("&#60;script&#62;")
            || page.contains("&lt;script&gt;"),
        "{page}"
    );
    let (status, _) = get(&app, &admin, "/sources/nope").await;
    assert_eq!(status, 404);

    let (_, page) = get(&app, &admin, "/flows").await;
    assert!(
        page.contains("orders") && page.contains("config file"),
        "{page}"
    );
    let (status, page) = get(&app, &admin, "/flows/orders").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<svg") && page.contains("on shop") && page.contains(".total &gt; 0")
            || page.contains(".total &#62; 0"),
        "{page}"
    );
    assert!(
        page.contains("read-only") && !page.contains("Edit in the builder"),
        "{page}"
    );
    let r = browser()
        .get(app.url("/flows/orders/edit"))
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "a file flow is not edited here"
    );

    wait_until("the alert fires", || async {
        app.state.alerts.evaluate_now().await;
        let (_, page) = get(&app, &admin, "/alerts").await;
        page.contains("Firing since")
    })
    .await;
    let (_, page) = get(&app, &admin, "/alerts").await;
    assert!(
        page.contains("fired") && page.contains("dead letters"),
        "its history: {page}"
    );
    let (_, page) = get(&app, &admin, "/").await;
    assert!(
        page.contains("alerts firing") && page.contains("books-dead"),
        "{page}"
    );
    assert!(
        page.contains("<svg") && page.contains("Events in"),
        "the charts: {page}"
    );

    // Pause and resume from the page (an admin, with the CSRF token); a read session cannot.
    let (_, page) = get(&app, &admin, "/destinations/crm").await;
    let csrf = csrf_of(&page);
    let (_, read_page) = get(&app, &reader, "/destinations/crm").await;
    let r = post(&app, "/destinations/crm/pause")
        .header("cookie", &reader)
        .form_body(&[("csrf", csrf_of(&read_page).as_str()), ("reason", "no")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post(&app, "/destinations/crm/pause")
        .header("cookie", &admin)
        .form_body(&[("csrf", csrf.as_str()), ("reason", HOSTILE)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, page) = get(&app, &admin, "/destinations/crm").await;
    assert!(
        page.contains("paused") && page.contains("Resume") && !page.contains(HOSTILE),
        "{page}"
    );
    let (_, shown) = app.api_get("/api/v1/destinations/crm").await;
    assert!(shown["paused"].is_object(), "the API sees it: {shown}");
    let r = post(&app, "/destinations/crm/resume")
        .header("cookie", &admin)
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, shown) = app.api_get("/api/v1/destinations/crm").await;
    assert!(shown["paused"].is_null(), "{shown}");
    still_answers(&app, &admin).await;
}

#[tokio::test]
async fn dead_letters_are_filtered_and_replayed_selected_or_all_after_a_count() {
    let Shop {
        app,
        admin,
        reader,
        bad,
        ..
    } = shop(1).await;
    let mut ids = Vec::new();
    for total in 1..=3 {
        ids.push(
            app.accept(
                "/in/shop",
                &json!({"type": "order", "total": total}).to_string(),
                &[],
            )
            .await,
        );
    }
    wait_until("three dead letters", || async {
        let (_, page) = get(&app, &admin, "/dead-letters?destination=books").await;
        ids.iter().all(|id| page.contains(id.as_str()))
    })
    .await;
    let (_, page) = get(&app, &admin, "/dead-letters?destination=crm").await;
    assert!(page.contains("No dead letter matches"), "{page}");
    let (_, page) = get(
        &app,
        &admin,
        "/dead-letters?error=%3Cscript%3E&since=yesterday",
    )
    .await;
    assert!(
        page.contains("is not a time") && !page.contains("<script>"),
        "{page}"
    );
    let (_, page) = get(&app, &reader, "/dead-letters").await;
    assert!(
        !page.contains("Replay selected") && !page.contains("Replay every"),
        "{page}"
    );

    // Replay one selected: it is tried again (and dies again: the receiver still fails).
    let (_, page) = get(&app, &admin, "/dead-letters?destination=books").await;
    assert!(
        page.contains("Replay selected") && page.contains("Replay every"),
        "{page}"
    );
    let csrf = csrf_of(&page);
    let (_, deliveries) = app
        .api_get(&format!("/api/v1/deliveries?event_id={}", ids[0]))
        .await;
    let first = deliveries["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination_id"] == "books")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = bad.count();
    let r = post(&app, "/dead-letters/replay-selected")
        .header("cookie", &admin)
        .form_body(&[
            ("csrf", csrf.as_str()),
            ("id", first.as_str()),
            ("id", "dlv_nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let back = r.headers()[LOCATION].to_str().unwrap().to_string();
    assert!(
        back.contains("replayed=1") && back.contains("skipped=1"),
        "{back}"
    );
    bad.wait_for(before + 1).await;

    // Replay everything matching: the confirmation states the count first.
    wait_until("the replayed one is dead again", || async {
        let (_, page) = get(&app, &admin, "/dead-letters/confirm?destination=books").await;
        page.contains("<strong>3</strong> dead letters")
    })
    .await;
    let r = post(&app, "/dead-letters/replay")
        .header("cookie", &reader)
        .form_body(&[
            (
                "csrf",
                csrf_of(&get(&app, &reader, "/dead-letters").await.1).as_str(),
            ),
            ("destination", "books"),
            ("expected", "3"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a read session replays nothing"
    );
    // More matching now than the count confirmed: nothing is replayed.
    let r = post(&app, "/dead-letters/replay")
        .header("cookie", &admin)
        .form_body(&[
            ("csrf", csrf.as_str()),
            ("destination", "books"),
            ("expected", "2"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.unwrap().contains("3 dead letters match now"));
    bad.set_fallback(Reply::status(200));
    let r = post(&app, "/dead-letters/replay")
        .header("cookie", &admin)
        .form_body(&[
            ("csrf", csrf.as_str()),
            ("destination", "books"),
            ("error", ""),
            ("since", ""),
            ("until", ""),
            ("expected", "3"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()[LOCATION]
            .to_str()
            .unwrap()
            .contains("replayed=3")
    );
    wait_until("no dead letter left", || async {
        let (_, page) = get(&app, &admin, "/dead-letters").await;
        page.contains("No dead letter matches")
    })
    .await;
    // Hostile forms: a huge, non-UTF-8 or repeated one is refused or bounded; the server goes on.
    let many: Vec<(&str, &str)> = std::iter::once(("csrf", csrf.as_str()))
        .chain(std::iter::repeat_n(("id", "dlv_x"), 5_000))
        .collect();
    let r = post(&app, "/dead-letters/replay-selected")
        .header("cookie", &admin)
        .form_body(&many)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "at most one page of ids at a time"
    );
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("5000 dead letters were selected")
    );
    let r = post(&app, "/dead-letters/replay")
        .header("cookie", &admin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(b"csrf=\xff\xfe&destination=%FF".to_vec())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    still_answers(&app, &admin).await;
}

#[tokio::test]
async fn the_builder_checks_jq_tests_a_draft_on_a_stored_event_and_saves_it() {
    let Shop {
        app,
        admin,
        reader,
        good,
        ..
    } = shop(1).await;
    let event = app
        .accept(
            "/in/shop",
            r#"{"type": "refund", "total": 7, "email": "a@b.example"}"#,
            &[],
        )
        .await;
    let (status, page) = get(&app, &admin, "/flows/new").await;
    assert_eq!(status, 200, "{page}");
    let csrf = csrf_of(&page);
    let (status, _) = get(&app, &reader, "/flows/new").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // jq as it is typed: the console's check and the API's answer alike, with the position.
    let check = |code: &'static str| {
        let (app, admin, csrf) = (&app, &admin, &csrf);
        async move {
            let r = post(app, "/console/check-jq")
                .header("cookie", admin)
                .form_body(&[("csrf", csrf.as_str()), ("expression", code)])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    assert_eq!(check(".total > 1").await["valid"], true);
    let bad = check(".total >").await;
    assert_eq!(bad["valid"], false, "{bad}");
    assert!(bad["position"].as_u64().is_some(), "{bad}");
    let (status, api) = app
        .api_post_json(
            "/api/v1/expressions/check",
            json!({"expression": "nosuchfn(1)"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(api["valid"], false);
    assert_eq!(api["position"], 1, "{api}");
    // Hostile expressions: deep, huge, overflowing; answered, and the server goes on.
    for code in [
        "[".repeat(10_000),
        "1".repeat(20_000),
        "1e1000 * 1e1000".to_string(),
        format!("{}1{}", "[".repeat(300), "]".repeat(300)),
    ] {
        let (status, answer) = app
            .api_post_json("/api/v1/expressions/check", json!({"expression": code}))
            .await;
        assert!(status == 200 || status == 503, "{status}: {answer}");
    }
    let r = post(&app, "/console/check-jq")
        .header("cookie", &admin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&expression=%FF%FE").into_bytes())
        .send()
        .await
        .unwrap();
    // Bytes that are not UTF-8 are refused, or read as replacement characters, which are
    // not jq: either way, a clear answer.
    let status = r.status();
    assert!(
        status.is_client_error() || r.json::<serde_json::Value>().await.unwrap()["valid"] == false,
        "{status}"
    );
    let r = post(&app, "/console/check-jq")
        .header("cookie", &admin)
        .form_body(&[("csrf", "wrong"), ("expression", ".")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A two-step draft: a filter and a deliver, tested on the stored event, then saved.
    let draft = |action: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("id", "refunds".to_string()),
            ("source", "shop".to_string()),
            ("event_types", String::new()),
            ("0.kind", "filter".to_string()),
            ("0.expr", ".total > 5".to_string()),
            ("1.kind", "deliver".to_string()),
            ("1.to", "crm".to_string()),
            ("event_id", event.clone()),
            ("sample", "{}".to_string()),
            ("action", action.to_string()),
        ]
    };
    let send = |fields: Vec<(&'static str, String)>| {
        let (app, admin) = (&app, &admin);
        async move {
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post(app, "/flows/builder")
                .header("cookie", admin)
                .form_body(&pairs)
                .send()
                .await
                .unwrap()
        }
    };
    let r = send(draft("add:transform")).await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("2.kind") && page.contains("value=\"transform\""),
        "a third step: {page}"
    );
    let r = send(draft("test")).await;
    let status = r.status();
    let page = r.text().await.unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Test:") && page.contains("completed") && page.contains("crm"),
        "{page}"
    );
    assert!(
        page.contains("a@b.example"),
        "the stored event's payload is the input: {page}"
    );
    let (_, flows) = app.api_get("/api/v1/flows/refunds").await;
    assert_eq!(flows["error"], "not_found", "a test saves nothing");
    // A draft whose jq does not compile is refused with its place, and nothing is saved.
    let mut broken = draft("save");
    broken[5].1 = ".total >".into();
    let r = send(broken).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().await.unwrap().contains("filter"));
    let r = send(draft("save")).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/flows/refunds");
    let (status, saved) = app.api_get("/api/v1/flows/refunds").await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["spec"]["steps"][1]["deliver"], "crm");
    let (status, page) = get(&app, &admin, "/flows/refunds/edit").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(".total &#62; 5") || page.contains(".total &gt; 5"),
        "{page}"
    );
    // The next event goes through it.
    let before = good.count();
    app.accept("/in/shop", r#"{"type": "refund", "total": 9}"#, &[])
        .await;
    good.wait_for(before + 1).await;

    // The draft test through the API, on a payload; hostile builder forms are bounded.
    let (status, report) = app
        .api_post_json(
            "/api/v1/flows/another/test",
            json!({"event": {"total": 1}, "flow": {"on": {"source": "shop"}, "steps": [{"filter": ".total > 5"}]}}),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["outcome"], "filtered");
    // A branch in the builder's test says which case it took.
    let r = send(vec![
        ("csrf", csrf.clone()),
        ("id", "routes".to_string()),
        ("source", "shop".to_string()),
        ("0.kind", "branch".to_string()),
        ("0.expr", ".total > 100".to_string()),
        ("0.to", "crm".to_string()),
        ("0.else", "books".to_string()),
        ("sample", r#"{"total": 5}"#.to_string()),
        ("action", "test".to_string()),
    ])
    .await;
    let page = r.text().await.unwrap();
    assert!(page.contains("/steps/0 branch → else"), "{page}");
    let mut hostile = draft("test");
    hostile.push(("99999999999999999999.kind", "filter".into()));
    hostile.push(("2.kind", "json".into()));
    hostile.push((
        "2.json",
        format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000)),
    ));
    let r = send(hostile).await;
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = post(&app, "/flows/builder")
        .header("cookie", &admin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&id=%FF&0.kind=filter&action=save").into_bytes())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    still_answers(&app, &admin).await;
}

#[tokio::test]
async fn a_failed_run_and_a_whole_event_are_replayed_from_the_event_page() {
    let Shop {
        app,
        admin,
        reader,
        good,
        ..
    } = shop(1).await;
    let id = app
        .accept("/in/shop", r#"{"type": "order", "total": 3}"#, &[])
        .await;
    good.wait_for(1).await;
    let (_, page) = get(&app, &reader, &format!("/events/{id}")).await;
    assert!(!page.contains("Replay the whole event"), "{page}");
    assert!(
        page.contains("Steps (2)") && page.contains("/steps/0"),
        "each step: {page}"
    );
    let (_, page) = get(&app, &admin, &format!("/events/{id}")).await;
    let r = post(&app, &format!("/events/{id}/replay"))
        .header("cookie", &admin)
        .form_body(&[("csrf", csrf_of(&page).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    good.wait_for(2).await;
    let (_, runs) = app.api_get(&format!("/api/v1/runs?event_id={id}")).await;
    assert_eq!(
        runs["data"].as_array().unwrap().len(),
        2,
        "a second run: {runs}"
    );
    let (status, answer) = app.api_post(&format!("/api/v1/events/{id}/replay")).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["deliveries"], 2);
    let (status, _) = app.api_post("/api/v1/events/evt_nope/replay").await;
    assert_eq!(status, 404);
    let r = post(&app, &format!("/events/{id}/replay"))
        .header("cookie", &reader)
        .form_body(&[("csrf", csrf_of(&get(&app, &reader, "/").await.1).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_live_tail_streams_each_accepted_event() {
    let Shop { app, admin, .. } = shop(1).await;
    let mut tail = browser()
        .get(app.url("/events/tail"))
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 200);
    assert!(
        tail.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let id = app
        .accept(
            "/in/shop",
            &json!({"type": HOSTILE, "total": 1}).to_string(),
            &[],
        )
        .await;
    let mut seen = String::new();
    while !seen.contains(&id) {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), tail.chunk())
            .await
            .expect("the tail speaks within 10 s")
            .unwrap()
            .expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: accepted"), "{seen}");
    // The type is data for the script, which writes it as text; in the stream it is JSON.
    assert!(
        seen.contains("\\u003cscript") || seen.contains("<script>"),
        "{seen}"
    );
    let r = browser().get(app.url("/events/tail")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "no session, no tail");

    // A session keeps at most 4 tails open.
    let mut more = Vec::new();
    for _ in 0..3 {
        let r = browser()
            .get(app.url("/events/tail"))
            .header("cookie", &admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        more.push(r);
    }
    let r = browser()
        .get(app.url("/events/tail"))
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(more);

    // Signing out ends the open tail: the next event closes it rather than reaching it.
    let (_, page) = get(&app, &admin, "/").await;
    let r = post(&app, "/sign-out")
        .header("cookie", &admin)
        .form_body(&[("csrf", csrf_of(&page).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let after = app
        .accept("/in/shop", r#"{"type": "after-sign-out", "total": 1}"#, &[])
        .await;
    let mut rest = String::new();
    loop {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(15), tail.chunk())
            .await
            .expect("the tail ends within 15 s");
        match chunk {
            Ok(Some(bytes)) => rest.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(None) | Err(_) => break,
        }
    }
    assert!(!rest.contains(&after), "{rest}");
}

#[tokio::test]
async fn the_builder_keeps_each_steps_secret_when_steps_move() {
    let Shop {
        app, admin, good, ..
    } = shop(1).await;
    let call = |n: &str, token: &str| json!({"http": {"method": "POST", "url": good.url.clone(), "auth": {"bearer": token}, "body": format!("\"{n}\"")}});
    let (status, made) = app
        .api_post_json(
            "/api/v1/flows",
            json!({"id": "calls", "on": {"source": "shop", "event_types": []}, "steps": [call("one", "SECRET-ONE"), call("two", "SECRET-TWO")]}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let (status, page) = get(&app, &admin, "/flows/calls/edit").await;
    assert_eq!(status, 200);
    assert!(
        !page.contains("SECRET-ONE") && page.contains("********"),
        "masked: {page}"
    );
    let csrf = csrf_of(&page);
    let masked = |n: &str| call(n, "********").to_string();
    // The steps swapped places, as the builder's buttons do: each keeps where it came from.
    let (two, one) = (masked("two"), masked("one"));
    let r = post(&app, "/flows/builder")
        .header("cookie", &admin)
        .form_body(&[
            ("csrf", csrf.as_str()),
            ("editing", "calls"),
            ("id", "calls"),
            ("source", "shop"),
            ("0.kind", "json"),
            ("0.json", two.as_str()),
            ("0.from", "1"),
            ("1.kind", "json"),
            ("1.json", one.as_str()),
            ("1.from", "0"),
            ("action", "save"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "{}",
        r.text().await.unwrap()
    );
    let before = good.count();
    let event = app
        .accept("/in/shop", r#"{"type": "call", "total": 0}"#, &[])
        .await;
    let (_, runs) = app
        .api_get(&format!("/api/v1/runs?event_id={event}&flow=calls"))
        .await;
    let run = runs["data"][0]["id"].as_str().unwrap().to_string();
    let done = app.wait_run(&run, "completed").await;
    assert_eq!(done["status"], "completed", "{done}");
    good.wait_for(before + 2).await;
    let mut checked = 0;
    for request in good.requests() {
        let body = String::from_utf8_lossy(&request.body).to_string();
        let auth = request
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        match body.as_str() {
            "\"one\"" => assert_eq!(auth.as_deref(), Some("Bearer SECRET-ONE")),
            "\"two\"" => assert_eq!(auth.as_deref(), Some("Bearer SECRET-TWO")),
            _ => continue,
        }
        checked += 1;
    }
    assert_eq!(checked, 2, "both calls were made");
}

#[tokio::test]
async fn a_failing_poller_and_a_schedule_show_on_the_sources_pages() {
    // Port 9 (discard) refuses connections on loopback: every poll fails.
    let app = spawn_app(
        r#"
settings: { allow_private_destinations: true }
sources:
  - { id: tickets, kind: poll, request: { url: "http://127.0.0.1:9/tickets" }, every: 1m, item_id: .id }
  - { id: nightly, kind: schedule, cron: "0 2 * * *", timezone: Europe/Paris, emit: { event_type: report } }
"#,
    )
    .await;
    let admin = sign_in(&app, TOKEN).await;
    wait_until("the first poll failed", || async {
        get(&app, &admin, "/sources/tickets").await.1.contains("failing: 1 poll in a row")
    })
    .await;
    let (_, page) = get(&app, &admin, "/sources/tickets").await;
    assert!(page.contains("polls http://127.0.0.1:9/tickets every 1m"), "{page}");
    assert!(page.contains("last worked: never"), "{page}");
    let (_, page) = get(&app, &admin, "/sources").await;
    assert!(page.contains("failing: 1 poll in a row"), "{page}");
    assert!(
        page.contains("ticks on cron `0 2 * * *` in Europe/Paris, emits `report`"),
        "{page}"
    );
    assert!(!page.contains("/in/nightly"), "a schedule has no ingest URL: {page}");
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"ferry_source_failing{source="tickets"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"ferry_source_poll_failures_total{source="tickets"} 1"#), "{metrics}");
}
