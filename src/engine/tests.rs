//! Tests of the engine: planning, advancing and resuming runs, bodies kept once, and the wire form
//! of programs.

use super::*;
use crate::config::program::Op;
use crate::engine::jq::{Programs, parse_value};

/// A config loaded and its expressions compiled here, as a worker would.
fn checked(yaml: &str) -> Result<Config, crate::config::ConfigErrors> {
    let mut programs = Programs::default();
    match crate::config::load_str(yaml, "t.yaml", std::path::Path::new("."), &|_| None) {
        Ok(config) => {
            crate::config::expression_errors(&config.expressions, |e| programs.check(e))?;
            Ok(config)
        }
        Err(crate::config::ConfigErrors(mut errors, sites)) => {
            if let Err(more) = crate::config::expression_errors(&sites, |e| programs.check(e)) {
                errors.extend(more.0);
            }
            Err(crate::config::ConfigErrors(errors, Vec::new()))
        }
    }
}

fn config(yaml: &str) -> Config {
    checked(yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// Plans with expressions run in this process (the server uses the workers).
fn plan(flows: &[Arc<Flow>], event: &Arc<EventInfo>, raw: &Bytes, now: Millis) -> Plan {
    plan_with(
        &mut Programs::default(),
        &BodyIds::starting_at(1),
        flows,
        event,
        raw,
        now,
    )
}

fn advance(program: &program::Program, ctx: &mut RunContext, start: usize, now: Millis) -> Advance {
    run::advance(&mut Programs::default(), program, ctx, start, now, false)
}

fn event() -> Arc<EventInfo> {
    Arc::new(EventInfo {
        id: "evt_1".into(),
        event_type: "user.created".into(),
        source: "shop".into(),
        received_at: 1_000,
        headers: serde_json::json!({"x-shop": "eu"}),
    })
}

const FLOWS: &str = r#"
settings: { allow_private_destinations: true }
sources: [{ id: shop, kind: webhook, verify: { scheme: none } }]
destinations:
  - { id: a, kind: http, url: "http://127.0.0.1:1/" }
  - { id: b, kind: http, url: "http://127.0.0.1:2/", signing: { secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" } }
flows:
  - id: paid
    on: { source: shop }
    steps: [ { filter: '.plan != "free"' }, { deliver: [a, b] } ]
  - id: broken
    on: { source: shop }
    steps: [ { filter: '.plan + 1' }, { deliver: a } ]
  - id: shaped
    on: { source: shop }
    steps:
      - transform: '{email: .email, tier: .plan, region: $event.headers["x-shop"]}'
      - branch:
          - when: '.tier == "pro"'
            steps: [ { deliver: { to: a, body: '{who: .email}' } } ]
          - else:
              - deliver: b
      - name: later
        delay: 10m
      - deliver: a
"#;

#[test]
fn plan_filters_transforms_branches_and_fans_out() {
    let config = config(FLOWS);
    let raw = Bytes::from_static(br#"{"plan":"pro","email":"a@x.io"}"#);
    let p = plan(&config.flows, &event(), &raw, 5_000);
    let statuses: Vec<_> = p
        .runs
        .iter()
        .map(|r| (r.flow_id.as_str(), r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("paid", "waiting"),
            ("broken", "failed"),
            ("shaped", "waiting")
        ]
    );
    let broken = p.runs[1].error.as_deref().unwrap();
    assert!(
        broken.starts_with("step /steps/0 (filter): jq expression `.plan + 1` failed"),
        "{broken}"
    );
    // paid: the event's own payload to a and b; shaped: the per-destination body to a.
    let bodies: Vec<_> = p
        .deliveries
        .iter()
        .map(|d| {
            (
                d.destination_id.as_str(),
                d.body.as_ref().map(|b| b.data.clone()),
            )
        })
        .collect();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[0], ("a", None));
    assert_eq!(bodies[1], ("b", None));
    assert_eq!(
        bodies[2],
        ("a", Some(Bytes::from_static(br#"{"who":"a@x.io"}"#)))
    );
    // shaped waits on its branch's delivery, then goes on at the delay.
    let shaped = &p.runs[2];
    let program = &config.flows[2].program;
    assert!(matches!(
        program.instrs[shaped.resume_pc.unwrap()].op,
        Op::Delay(_)
    ));
    // Its payload is the transform's output, stored as a body of the run.
    let payload = shaped.payload_body.unwrap();
    let body = shaped.bodies.iter().find(|b| b.id == payload).unwrap();
    let text = std::str::from_utf8(&body.data).unwrap();
    assert!(text.contains(r#""region":"eu""#), "{text}");
    let free = Bytes::from_static(br#"{"plan":"free","email":"f@x.io"}"#);
    let p = plan(&config.flows, &event(), &free, 5_000);
    assert_eq!(p.runs[0].status, "filtered");
    // free goes to the else case: b, with the transformed payload.
    let to_b: Vec<_> = p
        .deliveries
        .iter()
        .filter(|d| d.destination_id == "b")
        .collect();
    assert_eq!(to_b.len(), 1);
    let body: serde_json::Value =
        serde_json::from_slice(&to_b[0].body.as_ref().unwrap().data).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"email": "f@x.io", "tier": "free", "region": "eu"})
    );
}

#[test]
fn advance_stops_at_a_delay_and_resumes_after_it() {
    let config = config(FLOWS);
    let flow = &config.flows[2];
    let raw = Bytes::from_static(br#"{"plan":"pro","email":"a@x.io"}"#);
    let mut ctx = RunContext::new(event(), raw.clone());
    let first = advance(&flow.program, &mut ctx, 0, 5_000);
    let Stop::Deliver {
        resume: Some(resume),
        ..
    } = first.stop
    else {
        panic!("{:?}", first.stop)
    };
    let stored = ctx.to_stored();
    let payload = ctx.transformed_payload().map(|data| Body {
        id: 1,
        data: data.clone(),
    });
    let mut ctx = RunContext::from_stored(event(), raw, payload, stored.as_deref()).unwrap();
    let second = advance(&flow.program, &mut ctx, resume, 5_000);
    assert!(
        matches!(second.stop, Stop::Wait(t) if t == 5_000 + 600_000),
        "{:?}",
        second.stop
    );
    let third = advance(&flow.program, &mut ctx, second.pc + 1, 700_000);
    let Stop::Deliver { deliveries, resume } = third.stop else {
        panic!("{:?}", third.stop)
    };
    assert_eq!(resume, None, "the last step");
    let body: serde_json::Value =
        serde_json::from_slice(deliveries[0].body.as_ref().unwrap()).unwrap();
    assert_eq!(body["tier"], "pro");
}

#[test]
fn jq_errors_at_load_name_the_flow_and_step() {
    let yaml = r#"
settings: { allow_private_destinations: true }
sources: [{ id: shop, kind: webhook, verify: { scheme: none } }]
destinations: [{ id: a, kind: http, url: "http://127.0.0.1:1/" }]
flows:
  - id: f
    on: { source: shop }
    steps:
      - transform: '{a: .x'
      - branch:
          - when: '.x |'
            steps: [ { deliver: a } ]
      - filter: 'def f: f; f'
      - name: call
        http: { url: "http://127.0.0.1:1/u/{{ .id + }}" }
      - http: { url: "{{ .url }}" }
"#;
    let errors = checked(yaml).unwrap_err().to_string();
    assert!(
        errors.contains(
            "t.yaml:6 (flow f), step 1: `transform`: jq expression `{a: .x` does not compile"
        ),
        "{errors}"
    );
    assert!(
        errors.contains("(flow f), step 2, case 1: `when`: jq expression `.x |` does not compile"),
        "{errors}"
    );
    assert!(
        errors.contains(
            "step 3: `filter`: jq expression `def f: f; f` does not compile: `def` is not allowed"
        ),
        "{errors}"
    );
    assert!(
        errors.contains("step 4: `http.url`: jq expression `.id +` does not compile"),
        "{errors}"
    );
    assert!(
        errors
            .contains("step 5: `http.url`: `{{ .url }}` must start with a fixed `http(s)://host/`"),
        "{errors}"
    );
}

#[test]
fn dry_run_shows_requests_without_stopping() {
    let yaml = r#"
settings: { allow_private_destinations: true }
sources: [{ id: shop, kind: webhook, verify: { scheme: none } }]
destinations: [{ id: a, kind: http, url: "http://127.0.0.1:1/hook", headers: { x-team: ops } }]
flows:
  - id: f
    on: { source: shop }
    steps:
      - name: lookup
        http:
          url: "http://127.0.0.1:9/users?email={{ .email }}"
          auth: { bearer: "s3cret" }
          headers: { x-event: "{{ $event.id }}" }
      - delay: 1h
      - deliver: a
"#;
    let config = config(yaml);
    let raw = Bytes::from_static(br#"{"email":"a+b@x.io"}"#);
    let mut ctx = RunContext::new(event(), raw.clone());
    let flow = &config.flows[0];
    // What a worker runs: the program as it reads it from the wire, without credentials.
    let wired: program::Program = serde_json::from_str(&flow.wire).unwrap();
    let adv = run::advance(&mut Programs::default(), &wired, &mut ctx, 0, 0, true);
    assert!(matches!(adv.stop, Stop::Completed));
    assert!(!flow.wire.contains("s3cret"), "{}", flow.wire);
    let report = test_report(&config, flow, &raw, adv);
    assert_eq!(report.outcome, "completed");
    let shown = serde_json::to_string(&report.steps).unwrap();
    assert!(!shown.contains("s3cret"), "{shown}");
    let http = report.steps[0]["request"].clone();
    assert_eq!(http["url"], "http://127.0.0.1:9/users?email=a%2Bb%40x.io");
    assert_eq!(http["headers"]["x-event"], "evt_1");
    assert_eq!(http["headers"]["authorization"], "(bearer token)");
    assert_eq!(report.steps[1]["status"], "not_waited");
    let deliver = &report.steps[2]["request"][0];
    assert_eq!(deliver["url"], "http://127.0.0.1:1/hook");
    assert_eq!(deliver["headers"]["x-team"], "ops");
    assert_eq!(deliver["body"], serde_json::json!({"email": "a+b@x.io"}));
}

#[test]
fn oversized_output_fails_the_step() {
    let yaml = r#"
sources: [{ id: shop, kind: webhook, verify: { scheme: none } }]
flows:
  - id: f
    on: { source: shop }
    steps: [ { transform: '[range(300000) | "abcd"]' } ]
"#;
    let config = config(yaml);
    let p = plan(&config.flows, &event(), &Bytes::from_static(b"{}"), 0);
    let error = p.runs[0].error.as_deref().unwrap();
    assert!(error.contains("the limit is 1048576"), "{error}");
}

#[test]
fn delay_until_reads_a_time_from_the_event() {
    let yaml = r#"
settings: { allow_private_destinations: true }
sources: [{ id: shop, kind: webhook, verify: { scheme: none } }]
destinations: [{ id: a, kind: http, url: "http://127.0.0.1:1/" }]
flows:
  - id: f
    on: { source: shop }
    steps: [ { delay: { until: '.send_at' } }, { deliver: a } ]
"#;
    let config = config(yaml);
    let program = &config.flows[0].program;
    let run = |payload: &'static [u8], now: Millis| {
        let mut ctx = RunContext::new(event(), Bytes::from_static(payload));
        advance(program, &mut ctx, 0, now)
    };
    let at = run(br#"{"send_at":"2030-01-01T00:00:00Z"}"#, 0);
    assert!(
        matches!(at.stop, Stop::Wait(1_893_456_000_000)),
        "{:?}",
        at.stop
    );
    let secs = run(br#"{"send_at":1893456000}"#, 0);
    assert!(
        matches!(secs.stop, Stop::Wait(1_893_456_000_000)),
        "{:?}",
        secs.stop
    );
    // A time already past does not wait.
    let past = run(br#"{"send_at":"2001-01-01T00:00:00Z"}"#, 1_893_456_000_000);
    assert!(matches!(past.stop, Stop::Deliver { .. }), "{:?}", past.stop);
    assert_eq!(past.records[0].status, "waited");
    let bad = run(br#"{"send_at":"soon"}"#, 0);
    let Stop::Failed(error) = bad.stop else {
        panic!("{:?}", bad.stop)
    };
    assert!(
        error.starts_with("step /steps/0 (delay): `soon` is not an RFC 3339 time"),
        "{error}"
    );
}

#[test]
fn the_documented_jq_helpers_work() {
    let input = parse_value(br#"{"sku":"SKU-9","user":"u","key":"k","created":"2026-11-24T10:00:00Z","id":1,"email":"a@x.io"}"#).unwrap();
    for (code, expected) in [
        (r#".sku | ltrimstr("SKU-")"#, r#""9""#),
        (r#"("\(.user):\(.key)" | @base64)"#, r#""dTpr""#),
        (r#""dTpr" | @base64d"#, r#""u:k""#),
        (r#".email | @uri"#, r#""a%40x.io""#),
        (r#".created | fromdate"#, "1795514400"),
        (r#"1795514400 | todate"#, r#""2026-11-24T10:00:00Z""#),
        (r#"pick(.id, .email)"#, r#"{"id":1,"email":"a@x.io"}"#),
        (r#"now > 0"#, "true"),
        (r#".email | test("@x\\.io$")"#, "true"),
    ] {
        let expr = crate::config::expr::Expr::new(code).unwrap_or_else(|e| panic!("{code}: {e}"));
        let out = Programs::default()
            .first(&expr, &input, &jq::Scope::default())
            .unwrap_or_else(|e| panic!("{code}: {e}"))
            .unwrap();
        assert_eq!(out.to_string(), expected, "{code}");
    }
}

#[test]
fn the_shop_examples_in_the_docs_load() {
    let doc = include_str!("../../docs/flows.md");
    let examples = &doc[doc.find("## Examples from the shop").unwrap()..];
    let mut flows = String::from("flows:\n");
    for block in examples.split("```yaml\n").skip(1) {
        let yaml = &block[..block.find("```").unwrap()];
        flows.push_str(yaml.trim_start_matches("flows:\n"));
    }
    let mut yaml = String::from(
        "sources: [{ id: shop, kind: webhook, verify: { scheme: none } }]\nevent_types: [{ name: order.created }, { name: user.created }, { name: refund.created }]\ndestinations:\n",
    );
    for d in [
        "fulfillment",
        "crm",
        "accounting",
        "crm-create",
        "welcome-mail",
        "finance-approvals",
        "support",
    ] {
        yaml.push_str(&format!(
            "  - {{ id: {d}, kind: http, url: \"https://{d}.example/hook\" }}\n"
        ));
    }
    yaml.push_str(&flows);
    let config = crate::config::load_str(&yaml, "flows.md", std::path::Path::new("."), &|_| {
        Some("secret".into())
    })
    .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    crate::config::expression_errors(&config.expressions, |e| Programs::default().check(e))
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(config.flows.len(), 3);
    // The refund example takes the approval path for a large amount.
    let refund = config.flows.iter().find(|f| f.id == "refunds").unwrap();
    let raw = Bytes::from_static(br#"{"data":{"id":"r1","order_id":"o1","amount":900}}"#);
    let p = plan(std::slice::from_ref(refund), &event(), &raw, 0);
    assert_eq!(p.deliveries.len(), 1);
    assert_eq!(p.deliveries[0].destination_id, "finance-approvals");
}

/// Each body once: the transform's output is the run's payload, its record's output and the
/// body of the three deliveries that send it; a per-destination body is one of its own; a
/// payload stored before is not stored again.
#[test]
fn a_step_s_bodies_are_kept_once_each() {
    let config = config(
        r#"
settings: { allow_private_destinations: true }
sources: [{ id: shop, kind: webhook, verify: { scheme: none } }]
destinations:
  - { id: a, kind: http, url: "http://127.0.0.1:1/" }
  - { id: b, kind: http, url: "http://127.0.0.1:2/" }
  - { id: c, kind: http, url: "http://127.0.0.1:3/" }
  - { id: d, kind: http, url: "http://127.0.0.1:4/" }
flows:
  - id: fan
    on: { source: shop }
    steps:
      - transform: '{order: .id}'
      - deliver: [a, b, c, { to: d, body: '{only: "d"}' }]
"#,
    );
    let raw = Bytes::from_static(br#"{"id":7}"#);
    let ids = BodyIds::starting_at(40);
    let p = plan_with(
        &mut Programs::default(),
        &ids,
        &config.flows,
        &event(),
        &raw,
        0,
    );
    let run = &p.runs[0];
    assert_eq!(
        run.bodies.len(),
        2,
        "the transformed payload and the per-destination body"
    );
    let shared = run.payload_body.unwrap();
    let (same, own): (Vec<_>, Vec<_>) = p
        .deliveries
        .iter()
        .map(|d| d.body.as_ref().unwrap().id)
        .partition(|id| *id == shared);
    assert_eq!(same.len(), 3);
    assert_eq!(own.len(), 1);
    assert_ne!(own[0], shared);
    let data = |id: i64| run.bodies.iter().find(|b| b.id == id).unwrap().data.clone();
    assert_eq!(&data(shared)[..], br#"{"order":7}"#);
    assert_eq!(&data(own[0])[..], br#"{"only":"d"}"#);
    let records: Vec<StepRecord> = serde_json::from_str(&run.steps).unwrap();
    assert_eq!(
        records[0].output_body,
        Some(shared),
        "the transform names its body"
    );
    assert!(records[0].payload.is_none() && records[0].output.is_none());
    assert!(
        !run.steps.contains("order"),
        "no body inline: {}",
        run.steps
    );

    // Resumed from the store with the same payload, the run stores nothing again.
    let stored = Body {
        id: shared,
        data: data(shared),
    };
    let mut ctx = RunContext::from_stored(event(), raw, Some(stored), None).unwrap();
    ctx.set_payload(Bytes::from_static(br#"{"order":7}"#));
    let planned = vec![PlannedDelivery {
        id: "dlv_1".into(),
        destination_id: "b".into(),
        body: ctx.transformed_payload().cloned(),
    }];
    let kept = keep_bodies(&ids, "run_1", &mut ctx, &mut [], planned);
    assert!(kept.new.is_empty());
    assert_eq!(kept.deliveries[0].body.as_ref().unwrap().id, shared);
    assert_eq!(ctx.payload_body(), Some(shared));
}
