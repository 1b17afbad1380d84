//! Tests of the config: loading, every check and its message, and the objects of the API checked
//! as the file's.

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
        _ => None,
    }
}

/// Loads `text` and compiles its expressions here, as a worker would, reporting every error.
fn load(text: &str) -> Result<Config, ConfigErrors> {
    let mut programs = crate::engine::jq::Programs::default();
    match load_str(text, "ferry.yaml", Path::new("."), &env) {
        Ok(config) => {
            expression_errors(&config.expressions, |e| programs.check(e))?;
            Ok(config)
        }
        Err(ConfigErrors(mut errors, sites)) => {
            if let Err(more) = expression_errors(&sites, |e| programs.check(e)) {
                errors.extend(more.0);
            }
            Err(ConfigErrors(errors, Vec::new()))
        }
    }
}

const GOOD: &str = r#"
settings:
  allow_private_destinations: true
sources:
  - id: shop
    kind: webhook
    verify: { scheme: standard-webhooks, secret: "${SECRET}" }
    event_type: { from: body, path: ".event" }
    idempotency_key: { from: header, name: Webhook-Id }
event_types:
  - name: user.created
    schema: { type: object, required: [event] }
destinations:
  - id: crm
    kind: http
    url: http://127.0.0.1:9001/hooks
    signing: { secret: "${SECRET}" }
    retry: { max_attempts: 3, initial: 2s, max: 1m, jitter: none }
flows:
  - id: users
    on: { source: shop, event_types: [user.created] }
    steps:
      - filter: '.data.plan != "free"'
      - deliver: [crm]
"#;

#[test]
fn a_good_config_loads_into_compiled_types() {
    let c = load(GOOD).unwrap();
    let shop = &c.sources["shop"];
    assert!(matches!(&shop.verify, Verify::Signature(s) if s.name == "standard-webhooks"));
    assert!(matches!(&shop.idempotency_key, Some(FieldRef::Header(h)) if h == "webhook-id"));
    let crm = &c.destinations["crm"];
    assert_eq!(crm.retry.max_attempts, 3);
    assert_eq!(crm.retry.initial, Duration::from_secs(2));
    assert!(c.event_types["user.created"].validator.is_some());
    assert_eq!(c.flows[0].program.instrs.len(), 2);
    assert!(
        !format!("{:?}", c).contains("MfKQ9r8"),
        "secrets never print"
    );
}

#[test]
fn every_error_is_reported_with_its_line_and_object() {
    let bad = r#"
sources:
  - id: shop
    kind: webhook
    verify: { scheme: hmac, header: X-Sig, secret: "${MISSING}", encoding: hex }
destinations:
  - id: crm
    kind: http
    url: http://127.0.0.1:9001/hooks
  - id: erp
    kind: http
    url: "not a url"
flows:
  - id: f1
    on: { source: nope, event_types: [ghost] }
    steps:
      - filter: '.a | '
      - deliver: [crm, missing]
      - transform: '.x'
        filter: '.y'
"#;
    let errs = load(bad).unwrap_err().0;
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(
        has("ferry.yaml:5: environment variable `MISSING` is not set"),
        "{text:#?}"
    );
    assert!(
        has("ferry.yaml:7 (destination crm): `url`: address 127.0.0.1 is loopback"),
        "{text:#?}"
    );
    assert!(
        has("ferry.yaml:10 (destination erp): `url`: `not a url` is not a URL"),
        "{text:#?}"
    );
    assert!(
        has("ferry.yaml:14 (flow f1): `on.source`: no source has the id `nope`"),
        "{text:#?}"
    );
    assert!(
        has("(flow f1): `on.event_types`: no event type is named `ghost`"),
        "{text:#?}"
    );
    assert!(
        has("(flow f1), step 1: `filter`: jq expression `.a | ` does not compile"),
        "{text:#?}"
    );
    assert!(
        has("(flow f1), step 2: `deliver`: no destination has the id `missing`"),
        "{text:#?}"
    );
    assert!(
        has("(flow f1), step 3: a step has exactly one kind, this one has filter, transform"),
        "{text:#?}"
    );
}

#[test]
fn yaml_shape_errors_name_the_line() {
    let errs = load("sources:\n  - id: a\n    kind: webhook\n    colour: blue\n")
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 1);
    assert!(errs[0].place.starts_with("ferry.yaml:"), "{:?}", errs[0]);
    assert!(
        errs[0].message.contains("unknown field `colour`"),
        "{:?}",
        errs[0]
    );
}

#[test]
fn store_unwritable_takes_no_settings() {
    let rule = |when: &str| {
        format!(
            "channels: [ {{ id: ops, kind: webhook, url: \"http://127.0.0.1:9/a\" }} ]\nsettings: {{ allow_private_destinations: true }}\nalerts: [ {{ id: disk, when: {when}, notify: [ops] }} ]\n"
        )
    };
    let config = load(&rule("{ store_unwritable: {} }")).unwrap();
    assert!(matches!(
        config.alerts[0].condition,
        Condition::StoreUnwritable {}
    ));
    let errs = load(&rule("{ store_unwritable: { for: 30s } }"))
        .unwrap_err()
        .0;
    assert!(
        errs[0].message.contains("unknown field `for`"),
        "{:?}",
        errs[0]
    );
}

/// The error messages of a config that must not load.
fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("the config loaded:\n{text}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn special_hosts_and_user_info_are_refused_in_every_url_field() {
    let yaml = |url: &str| {
        format!(
            r#"
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: d, kind: http, url: "{url}" }} ]
flows:
  - id: f
    on: {{ source: s }}
    steps:
      - http: {{ url: "{url}", auth: {{ oauth2_client_credentials: {{ token_url: "{url}", client_id: c, client_secret: x }} }} }}
channels:
  - {{ id: w, kind: webhook, url: "{url}" }}
  - {{ id: sl, kind: slack, url: "{url}" }}
"#
        )
    };
    for (url, why) in [
        ("http://127.0.0.1@evil.test/x", "the URL has user info"),
        (
            "https://user:hunter2@hooks.example/x",
            "the URL has user info",
        ),
        ("http://localhost:9/x", "host `localhost` is this machine"),
        (
            "http://127.0.0.1:9/x",
            "address 127.0.0.1 is loopback (127.0.0.0/8)",
        ),
        ("http://100.64.0.1/x", "(100.64.0.0/10)"),
        ("http://198.18.0.1/x", "benchmarking (198.18.0.0/15)"),
        ("http://224.0.0.1/x", "multicast (224.0.0.0/4)"),
        ("http://240.0.0.1/x", "reserved (240.0.0.0/4)"),
        ("http://[64:ff9b::7f00:1]/x", "a NAT64 address"),
        ("http://[2002:7f00:1::]/x", "a 6to4 address"),
        ("http://[::ffff:10.0.0.1]/x", "IPv4-mapped"),
    ] {
        let text = errors(&yaml(url)).join("\n");
        for field in [
            "(destination d): `url`: ",
            "(flow f), step 1: `http.url`: ",
            "(flow f), step 1: `http.auth.oauth2_client_credentials.token_url`: ",
            "(channel w): `url`: ",
            "(channel sl): `url`: ",
        ] {
            assert!(
                text.lines().any(|l| l.contains(field) && l.contains(why)),
                "{url}: no `{field}` error with `{why}` in:\n{text}"
            );
        }
        assert!(
            !text.contains("hunter2"),
            "a password is never echoed:\n{text}"
        );
    }
    let text = errors(&format!(
        "{}  - {{ id: m, kind: email, smtp: {{ host: \"::1\", tls: none }}, from: a@b.example, to: [c@d.example] }}\n",
        yaml("http://8.8.8.8/x")
    ));
    assert_eq!(
        text,
        vec!["ferry.yaml (channel m): `smtp.host`: address ::1 is loopback (::1/128); allow it by naming the host or its network in `settings.egress.allow`, or with `settings.allow_private_destinations: true`".to_string()],
    );
}

#[test]
fn the_allow_list_applies_at_config_check() {
    let yaml = |settings: &str| {
        format!(
            r#"
settings: {settings}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: a, kind: http, url: "http://10.1.2.3:8080/x" }}
  - {{ id: b, kind: http, url: "http://[::1]/x" }}
  - {{ id: c, kind: http, url: "http://localhost/x" }}
  - {{ id: d, kind: http, url: "http://hooks.internal.example/x" }}
channels:
  - {{ id: m, kind: email, smtp: {{ host: 10.1.2.9, tls: none }}, from: a@b.example, to: [c@d.example] }}
"#
        )
    };
    let c = load(&yaml(
        r#"{ egress: { allow: ["10.1.2.0/24", "::1/128", localhost] } }"#,
    ))
    .unwrap();
    assert!(!c.settings.egress.allows_private());
    let text = errors(&yaml(
        r#"{ egress: { allow: ["10.1.2.0/25", "hooks.internal.example"] } }"#,
    ));
    assert_eq!(text.len(), 2, "{text:#?}");
    assert!(
        text[0].contains("(destination b): `url`: address ::1 is loopback"),
        "{text:#?}"
    );
    assert!(
        text[1].contains("(destination c): `url`: host `localhost` is this machine"),
        "{text:#?}"
    );
    assert_eq!(errors(&yaml("{}")).len(), 4);
    // `allow_private_destinations` still allows every one of them.
    load(&yaml("{ allow_private_destinations: true }")).unwrap();
    // But never user info.
    let text = errors(
        &yaml("{ allow_private_destinations: true }")
            .replace("http://10.1.2.3", "http://127.0.0.1@10.1.2.3"),
    );
    assert_eq!(text.len(), 1, "{text:#?}");
    assert!(
        text[0].contains("(destination a): `url`: the URL has user info"),
        "{text:#?}"
    );
}

#[test]
fn bad_allow_lists_are_refused_with_their_place_and_entry() {
    let text = errors(
        "settings:\n  egress:\n    allow: [\"10.0.0.0/999\", \"garbage!\", \"10.1.2.3/24\", \"*.example\", \"\", ok.example, \"::1/129\"]\n",
    );
    assert_eq!(
        text,
        vec![
            "ferry.yaml:1: `egress.allow[0]`: `10.0.0.0/999`: the prefix length `/999` is not a whole number from 0 to 32",
            "ferry.yaml:1: `egress.allow[1]`: `garbage!` is not a network, an IP address or a host name (a label has letters, digits, `-` and `_` only); write e.g. 10.1.2.0/24, ::1 or hooks.internal.example, without a scheme, port or path",
            "ferry.yaml:1: `egress.allow[2]`: `10.1.2.3/24` has address bits set after its prefix; the network is `10.1.2.0/24`",
            "ferry.yaml:1: `egress.allow[3]`: `*.example`: wildcards are not supported; name each host, or give its network",
            "ferry.yaml:1: `egress.allow[4]`: an empty entry",
            "ferry.yaml:1: `egress.allow[6]`: `::1/129`: the prefix length `/129` is not a whole number from 0 to 128",
        ]
    );
    // Too many entries: one error, not one per entry.
    let many: Vec<String> = (0..1025)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    let text = errors(&format!(
        "settings: {{ egress: {{ allow: [{}] }} }}\n",
        many.join(", ")
    ));
    assert_eq!(
        text,
        vec![
            "ferry.yaml:1: `egress.allow` lists 1025 entries; at most 1024 are accepted (name networks rather than single addresses)"
        ]
    );
    // Many bad entries: ten, then a count.
    let bad: Vec<String> = (0..50).map(|i| format!("\"bad entry {i}\"")).collect();
    let text = errors(&format!(
        "settings: {{ egress: {{ allow: [{}] }} }}\n",
        bad.join(", ")
    ));
    assert_eq!(text.len(), 11, "{text:#?}");
    assert_eq!(
        text[10],
        "ferry.yaml:1: `egress.allow`: 40 more entries are not valid"
    );
    // Shapes that are not a list of strings, and unknown fields.
    for shape in [
        "settings: { egress: { allow: 10.0.0.0/8 } }",
        "settings: { egress: { allow: [[1]] } }",
        "settings: { egress: { allow: [{a: 1}] } }",
        "settings: { egress: { deny: [] } }",
        "settings: { egress: [] }",
    ] {
        assert_eq!(errors(shape).len(), 1, "{shape}");
    }
}

#[test]
fn env_substitution_keeps_escapes_and_comments() {
    let places = Places::new("f", "");
    let mut errs = vec![];
    let env = |n: &str| (n == "A").then(|| "x".to_string());
    assert_eq!(
        substitute_env("a: ${A}-$${A}\n# ${NOPE}\n", &places, &env, &mut errs),
        "a: x-${A}\n# ${NOPE}\n"
    );
    assert!(errs.is_empty());
}

#[test]
fn memory_and_connection_limits_have_defaults_and_are_checked() {
    let c = load("sources: []").unwrap();
    assert_eq!(
        c.settings.memory,
        MemoryLimits {
            ingest_bytes: 64 << 20,
            delivery_bytes: 64 << 20
        }
    );
    assert_eq!(
        c.settings.connections,
        ConnectionLimits {
            max: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    );
    let c = load(
        "settings:\n  max_body_size: 1000\n  memory: { ingest_bytes: 5000, delivery_bytes: 1000 }\n  connections: { max: 8, header_read_timeout: 2s, body_read_timeout: 500ms, idle_timeout: 1m }\n",
    )
    .unwrap();
    assert_eq!(c.settings.memory.ingest_bytes, 5000);
    assert_eq!(c.settings.memory.delivery_bytes, 1000);
    assert_eq!(c.settings.connections.max, 8);
    assert_eq!(
        c.settings.connections.body_read_timeout,
        Duration::from_millis(500)
    );
    let errs = load(
        "sources: []\nsettings:\n  max_body_size: 1000\n  memory: { ingest_bytes: 999 }\n  connections: { max: 0, idle_timeout: 0s, body_read_timeout: soon }\n",
    )
    .unwrap_err()
    .0;
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(
        has("ferry.yaml:2: `memory.ingest_bytes`: 999 is smaller than `max_body_size` (1000)"),
        "{text:#?}"
    );
    assert!(
        has("ferry.yaml:2: `connections.max`: 0 is not between 1 and 1000000"),
        "{text:#?}"
    );
    assert!(
        has("ferry.yaml:2: `connections.idle_timeout` must be longer than 0"),
        "{text:#?}"
    );
    assert!(
        has("ferry.yaml:2: `connections.body_read_timeout`: `soon` is not a duration"),
        "{text:#?}"
    );
    assert!(
        load("settings: { memory: { spare_bytes: 1 } }").is_err(),
        "unknown fields are refused"
    );
}

#[test]
fn durations_past_a_hundred_years_are_refused_everywhere() {
    // Each becomes milliseconds added to a time: past the limit the sum could leave an i64.
    let huge = "600000000y";
    for yaml in [
        format!("settings: {{ alert_interval: {huge} }}"),
        format!("settings: {{ shutdown_grace: {huge} }}"),
        format!("settings: {{ connections: {{ idle_timeout: {huge} }} }}"),
        format!(
            "settings: {{ allow_private_destinations: true }}\ndestinations: [ {{ id: d, kind: http, url: \"http://127.0.0.1:9/\", retry: {{ max: {huge} }} }} ]"
        ),
        format!(
            "sources: [ {{ id: s, kind: webhook, verify: {{ scheme: standard-webhooks, secret: \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", tolerance: {huge} }} }} ]"
        ),
        format!(
            "sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]\nflows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ delay: {huge} }} ] }} ]"
        ),
        format!(
            "settings: {{ allow_private_destinations: true }}\nchannels: [ {{ id: ops, kind: webhook, url: \"http://127.0.0.1:9/\" }} ]\nalerts: [ {{ id: a, when: {{ failure_ratio: {{ destination: d, above: 0.5, window: {huge} }} }}, notify: [ops] }} ]\ndestinations: [ {{ id: d, kind: http, url: \"http://127.0.0.1:9/\" }} ]"
        ),
        format!(
            "settings: {{ allow_private_destinations: true }}\nchannels: [ {{ id: ops, kind: webhook, url: \"http://127.0.0.1:9/\" }} ]\nalerts: [ {{ id: a, cooldown: {huge}, when: {{ dead_letters: {{ above: 0 }} }}, notify: [ops] }} ]"
        ),
    ] {
        let errs = load(&yaml).expect_err(&yaml).0;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("is longer than the limit of 100 years")),
            "{yaml}\n{text:#?}"
        );
    }
    assert_eq!(
        super::parse_duration("100y").map(|d| d.as_secs() / 86400),
        Ok(36525),
        "humantime's year is 365.25 days: 100y is within the limit"
    );
}

#[test]
fn retention_has_defaults_and_takes_shorter_limits_for_bodies_and_longer_for_dead_letters() {
    let c = load("sources: []").unwrap();
    assert_eq!(
        c.settings.retention,
        RetentionLimits {
            finished: Duration::from_secs(7 * 86400),
            dead_letters: Duration::from_secs(30 * 86400),
            payloads: None,
        }
    );
    let c = load("settings: { retention: 2d, payload_retention: 12h, dead_letter_retention: 90d }")
        .unwrap();
    assert_eq!(
        c.settings.retention,
        RetentionLimits {
            finished: Duration::from_secs(2 * 86400),
            dead_letters: Duration::from_secs(90 * 86400),
            payloads: Some(Duration::from_secs(12 * 3600)),
        }
    );
    // A retention past the default dead-letter limit carries that limit along.
    let c = load("settings: { retention: 60d }").unwrap();
    assert_eq!(
        c.settings.retention.dead_letters,
        Duration::from_secs(60 * 86400)
    );
}

#[test]
fn hostile_retention_settings_are_refused_with_clear_errors() {
    let cases = [
        (
            "settings: { retention: 600000000y }",
            "`retention`: `600000000y` is longer than the limit of 100 years",
        ),
        (
            "settings: { payload_retention: 0s }",
            "`payload_retention`: `0s` is shorter than the least retention, 1m",
        ),
        (
            "settings: { retention: 59s }",
            "`retention`: `59s` is shorter than the least retention, 1m",
        ),
        (
            "settings: { retention: -1d }",
            "`retention`: `-1d` is not a duration",
        ),
        (
            "settings: { dead_letter_retention: forever }",
            "`dead_letter_retention`: `forever` is not a duration",
        ),
        (
            "settings: { retention: \"\" }",
            "`retention`: `` is not a duration",
        ),
        (
            "settings: { retention: 1d, payload_retention: 2d }",
            "`payload_retention` (2days) is longer than `retention` (1day): bodies cannot outlive the records they belong to",
        ),
        (
            "settings: { retention: 10d, dead_letter_retention: 9d }",
            "`dead_letter_retention` (9days) is shorter than `retention` (10days): dead letters are kept at least as long as finished work",
        ),
        (
            "settings: { retention: 7 }",
            "`retention`: `7` is not a duration (time unit needed",
        ),
        ("settings: { retention: [1d] }", "invalid type: sequence"),
        (
            "settings: { retention_days: 7 }",
            "unknown field `retention_days`",
        ),
    ];
    for (yaml, expected) in cases {
        let text = errors(yaml);
        assert!(
            text.iter().any(|t| t.contains(expected)),
            "{yaml}: expected {expected:?} in {text:#?}"
        );
    }
}

#[test]
fn an_alert_interval_or_a_timeout_of_zero_is_refused() {
    for (yaml, want) in [
        (
            "settings: { alert_interval: 0s }",
            "`alert_interval` must be at least 100ms",
        ),
        (
            "settings: { alert_interval: 99ms }",
            "`alert_interval` must be at least 100ms",
        ),
        (
            "settings: { allow_private_destinations: true }\ndestinations: [ { id: d, kind: http, url: \"http://127.0.0.1:9/\", timeout: 0s } ]",
            "`timeout` must be at least 1ms",
        ),
    ] {
        let errs = load(yaml).expect_err(yaml).0;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(text.iter().any(|t| t.contains(want)), "{yaml}\n{text:#?}");
    }
    assert!(load("settings: { alert_interval: 100ms }").is_ok());
}

#[test]
fn a_lease_is_between_a_second_and_an_hour() {
    for (bad, why) in [
        ("61m", "`lease` must be at most 1h"),
        ("999ms", "`lease` must be at least 1s"),
    ] {
        let text: Vec<String> = load(&format!("settings: {{ lease: {bad} }}"))
            .expect_err(bad)
            .0
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(text.iter().any(|t| t.contains(why)), "{bad}: {text:#?}");
    }
    for fine in ["1s", "1h", "45s"] {
        let config = load(&format!("settings: {{ lease: {fine} }}")).expect(fine);
        assert_eq!(
            config.settings.lease,
            crate::config::parse_duration(fine).unwrap()
        );
    }
    assert_eq!(
        load("{}").unwrap().settings.lease,
        std::time::Duration::from_secs(30)
    );
}

#[test]
fn a_shutdown_grace_is_at_most_an_hour() {
    let errs = load("settings: { shutdown_grace: 61m }")
        .expect_err("61m")
        .0;
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("`shutdown_grace` must be at most 1h")),
        "{text:#?}"
    );
    for fine in ["0s", "1h"] {
        let config = load(&format!("settings: {{ shutdown_grace: {fine} }}")).expect(fine);
        assert_eq!(
            config.settings.shutdown_grace,
            crate::config::parse_duration(fine).unwrap()
        );
    }
    assert_eq!(
        load("{}").unwrap().settings.shutdown_grace,
        crate::config::DEFAULT_SHUTDOWN_GRACE
    );
}

#[test]
fn a_header_secret_a_header_cannot_carry_is_refused_without_quoting_it() {
    for (auth, field) in [
        (
            "{ bearer: \"zz-tok\\r\\nx-injected: 1\" }",
            "http.auth.bearer",
        ),
        (
            "{ api_key: { header: x-api-key, value: \"zz-tok\\n\" } }",
            "http.auth.api_key.value",
        ),
    ] {
        let yaml = format!(
            "settings: {{ allow_private_destinations: true }}\nsources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]\nflows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ http: {{ url: \"http://127.0.0.1:9/\", auth: {auth} }} }} ] }} ]"
        );
        let errs = load(&yaml).expect_err(&yaml).0;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains(&format!(
                "`{field}` holds a character a header cannot carry"
            ))),
            "{yaml}\n{text:#?}"
        );
        assert!(text.iter().all(|t| !t.contains("zz-tok")), "{text:#?}");
    }
}

/// Routing by lookup answers what a scan of every flow would, in the config's order: flows
/// that name the event type and flows of every type interleaved, other sources apart.
#[test]
fn routes_answer_what_a_scan_of_every_flow_would() {
    let mut yaml = String::from(
        "settings: { allow_private_destinations: true }\nsources: [{ id: a, kind: webhook, verify: { scheme: none } }, { id: b, kind: webhook, verify: { scheme: none } }]\nevent_types: [{ name: x }, { name: y }, { name: z }]\ndestinations: [{ id: d, kind: http, url: \"http://127.0.0.1:1/\" }]\nflows:\n",
    );
    for n in 0..40 {
        let source = if n % 3 == 0 { "b" } else { "a" };
        let on = match n % 4 {
            0 => format!("{{ source: {source} }}"),
            1 => format!("{{ source: {source}, event_types: [x] }}"),
            2 => format!("{{ source: {source}, event_types: [x, y] }}"),
            _ => format!("{{ source: {source}, event_types: [y] }}"),
        };
        yaml.push_str(&format!(
            "  - {{ id: f{n}, on: {on}, steps: [ {{ deliver: d }} ] }}\n"
        ));
    }
    let config = load(&yaml).unwrap_or_else(|e| panic!("{e}"));
    for source in ["a", "b", "c"] {
        for event_type in ["x", "y", "z"] {
            let scanned: Vec<&str> = config
                .flows
                .iter()
                .filter(|f| {
                    f.source == source
                        && (f.event_types.is_empty() || f.event_types.contains(event_type))
                })
                .map(|f| f.id.as_str())
                .collect();
            let found = config.matching_flows(source, event_type);
            let found: Vec<&str> = found.iter().map(|f| f.id.as_str()).collect();
            assert_eq!(found, scanned, "{source} {event_type}");
        }
    }
    assert_eq!(config.flow("f17").map(|f| f.id.as_str()), Some("f17"));
    assert!(config.flow("f40").is_none());
}

#[test]
fn verification_schemes_say_what_is_wrong_with_them() {
    let one = |verify: &str| {
        errors(&format!(
            "sources: [ {{ id: s, kind: webhook, verify: {verify} }} ]"
        ))
        .join("\n")
    };
    for (verify, says) in [
        ("{ scheme: nope }", "`nope` is not a scheme"),
        ("{ scheme: stripe }", "`verify.secret` is required"),
        (
            "{ scheme: stripe, secret: s, header: x }",
            "`verify.header` does not apply to `scheme: stripe`",
        ),
        (
            "{ scheme: github, secret: s, tolerance: 5m }",
            "signs no timestamp",
        ),
        ("{ scheme: square, secret: s }", "signs the public URL"),
        (
            "{ scheme: square, secret: s, url: 'not a url' }",
            "is not a URL",
        ),
        (
            "{ scheme: basic, username: 'a:b', secret: s }",
            "cannot hold `:`",
        ),
        (
            "{ scheme: none, secret: s }",
            "`verify.secret` does not apply",
        ),
        ("{ scheme: hmac, secret: s }", "`verify.header` is required"),
        (
            "{ scheme: hmac, secret: s, header: 'a b' }",
            "not a valid header name",
        ),
        (
            "{ scheme: hmac, secret: s, header: x, algorithm: md5 }",
            "not one of sha1, sha256, sha512",
        ),
        (
            "{ scheme: hmac, secret: s, header: x, encoding: b32 }",
            "not one of hex, base64",
        ),
        (
            "{ scheme: hmac, secret: s, header: x, signed: '{timestamp}' }",
            "must hold `{body}` or `{form}`",
        ),
        (
            "{ scheme: hmac, secret: s, header: x, signed: '{timestamp}.{body}' }",
            "give `verify.timestamp`",
        ),
        (
            "{ scheme: hmac, secret: s, header: x, signed: '{id}.{body}' }",
            "give `verify.id_header`",
        ),
        (
            "{ scheme: hmac, secret: s, header: x, timestamp: { item: t } }",
            "give `verify.list` too",
        ),
        (
            "{ scheme: hmac, secret: s, header: x, timestamp: { header: a, item: t } }",
            "one of them",
        ),
        (
            "{ scheme: hmac, secret: s, header: x, timestamp: { header: a, unit: days } }",
            "not one of seconds, milliseconds",
        ),
        (
            "{ scheme: hmac, secret: s, header: x, list: { separator: '', key: v1 } }",
            "must not be empty",
        ),
        (
            "{ scheme: hmac, secret: s, header: x, secret_encoding: base64 }",
            "is not base64",
        ),
        (
            "{ scheme: hmac, secret: s, header: x, secret_encoding: rot13 }",
            "not one of text, base64, whsec",
        ),
        (
            "{ scheme: hmac, secret: s, header: x, bogus: 1 }",
            "unknown field `bogus`",
        ),
    ] {
        let found = one(verify);
        assert!(found.contains(says), "{verify}: {found}");
    }
    // A preset's URL comes from `settings.public_url` when the source gives none.
    let config = load(
        "settings: { public_url: 'https://hooks.example.com/' }\nsources: [ { id: sq, kind: webhook, verify: { scheme: square, secret: s } } ]",
    )
    .unwrap();
    let Verify::Signature(square) = &config.sources["sq"].verify else {
        panic!("square is a signature scheme");
    };
    assert_eq!(
        square.url.as_deref(),
        Some("https://hooks.example.com/in/sq")
    );
    // The source's own `event_type` wins over the preset's.
    let config = load(
        "sources: [ { id: gh, kind: webhook, verify: { scheme: github, secret: s }, event_type: { from: body, path: .action } } ]",
    )
    .unwrap();
    assert!(matches!(&config.sources["gh"].event_type, FieldRef::Body(e) if e.code() == ".action"));
    assert!(
        matches!(&config.sources["gh"].idempotency_key, Some(FieldRef::Header(h)) if h == "x-github-delivery")
    );
}

#[test]
fn formats_are_checked() {
    let found =
        errors("sources: [ { id: s, kind: webhook, verify: { scheme: none }, format: xml } ]")
            .join("\n");
    assert!(
        found.contains("not one of json, form, cloudevents"),
        "{found}"
    );
    let found = errors("sources: [ { id: s, kind: webhook, verify: { scheme: none }, cloudevents: { batch: true } } ]").join("\n");
    assert!(
        found.contains("only to a source with `format: cloudevents`"),
        "{found}"
    );
    let config = load("sources: [ { id: tw, kind: webhook, verify: { scheme: twilio, secret: s, url: 'https://x.example/in/tw' } } ]").unwrap();
    assert_eq!(config.sources["tw"].format, crate::config::BodyFormat::Form);
}

#[test]
fn polling_sources_say_what_is_wrong_with_them() {
    let one = |fields: &str| {
        errors(&format!(
            "settings: {{ allow_private_destinations: true }}\nsources: [ {{ id: p, kind: poll, {fields} }} ]"
        ))
        .join("\n")
    };
    let request = "request: { url: 'http://127.0.0.1:9/t' }";
    for (fields, says) in [
        (
            "every: 1m, item_id: .id".to_string(),
            "`request` is required",
        ),
        (format!("{request}, item_id: .id"), "needs `every`"),
        (format!("{request}, every: 1m"), "`item_id` is required"),
        (
            format!("{request}, every: 1m, cron: '* * * * *', item_id: .id"),
            "not both",
        ),
        (format!("{request}, every: 10ms, item_id: .id"), "at least"),
        (
            format!("{request}, every: 1m, timezone: UTC, item_id: .id"),
            "goes with `cron`",
        ),
        (
            "request: { url: 'http://127.0.0.1:9/t?since={{ .x }}' }, every: 1m, item_id: .id"
                .to_string(),
            "no `{{ }}` placeholders",
        ),
        (
            "request: { url: 'http://127.0.0.1:9/t', body: '{}' }, every: 1m, item_id: .id"
                .to_string(),
            "`request.body` does not apply",
        ),
        (
            "request: { url: 'ftp://127.0.0.1:9/t' }, every: 1m, item_id: .id".to_string(),
            "not http or https",
        ),
        (
            format!("{request}, every: 1m, item_id: .id, backfill: false"),
            "needs `cursor`",
        ),
        (
            format!("{request}, every: 1m, item_id: .id, max_pages: 0"),
            "use 1 to 1000",
        ),
        (
            format!("{request}, every: 1m, item_id: .id, pagination: {{ kind: scroll }}"),
            "not one of link, next_url, cursor, page",
        ),
        (
            format!("{request}, every: 1m, item_id: .id, pagination: {{ kind: next_url }}"),
            "`pagination.path` is required",
        ),
        (
            format!("{request}, every: 1m, item_id: .id, pagination: {{ kind: link, param: p }}"),
            "does not apply to `kind: link`",
        ),
        (
            format!(
                "{request}, every: 1m, item_id: .id, pagination: {{ kind: page, param: 'a&b' }}"
            ),
            "query parameter's name",
        ),
        (
            format!("{request}, every: 1m, item_id: .id, cursor: {{ path: .u, param: '' }}"),
            "query parameter's name",
        ),
        (
            format!("{request}, every: 1m, item_id: .id, verify: {{ scheme: none }}"),
            "does not apply to a polling source",
        ),
        (
            format!(
                "{request}, every: 1m, item_id: .id, idempotency_key: {{ from: body, path: .id }}"
            ),
            "`item_id` is each event's key",
        ),
    ] {
        let found = one(&fields);
        assert!(found.contains(says), "{fields}: {found}");
    }
    let found =
        errors("sources: [ { id: w, kind: webhook, verify: { scheme: none }, every: 1m } ]")
            .join("\n");
    assert!(found.contains("only to a polling source"), "{found}");
    let found = errors("sources: [ { id: w, kind: webhook, verify: { scheme: none } } ]\nalerts: [ { id: a, when: { source_failing: { source: w } }, notify: [] } ]").join("\n");
    assert!(found.contains("not a polling source"), "{found}");
}

#[test]
fn the_standard_webhooks_twin_the_fuzzer_checks_is_the_preset() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let config = load(&format!(
        "sources: [ {{ id: s, kind: webhook, verify: {{ scheme: standard-webhooks, secret: \"{secret}\" }} }} ]"
    ))
    .unwrap();
    let Verify::Signature(preset) = &config.sources["s"].verify else {
        panic!("a signature scheme");
    };
    let key = crate::config::secret::decode_secret(secret).unwrap();
    let twin = crate::config::verify::SignatureScheme::standard_webhooks(
        key.clone(),
        std::time::Duration::from_secs(300),
    );
    // The key is not in the Debug text: it is compared on its own.
    assert_eq!(format!("{preset:?}"), format!("{twin:?}"));
    assert_eq!(preset.key.expose(), key.as_slice());
}
