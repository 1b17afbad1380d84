//! The entry points the fuzz targets (`fuzz/fuzz_targets/`) and the corpus-replay test
//! (`tests/api/fuzz_corpus.rs`) share: one per hostile input Ferry reads. Each takes any bytes
//! and panics only when an assertion that must hold fails: a panic is a bug found.
//!
//! Nothing here runs a jq program in this process. The expression target compiles a program here (the
//! bounded part: at most [`MAX_EXPRESSION_SIZE`] bytes of code, on a stack as large as a
//! worker's) and runs it where production runs it, in an expression worker behind
//! [`Sandbox`], under short limits.

use crate::config::expr::{Expr, MAX_EXPRESSION_SIZE};
use crate::config::verify::SignatureScheme;
use crate::config::{self, ConfigErrors, SignatureEncoding, Verify};
use crate::deliver::signing;
use crate::engine::jq;
use crate::engine::sandbox::{Limits, Sandbox, SandboxError, WorkerCommand};
use crate::ingest::{self, KeptHeaders, UNSTORED_HEADERS, verify};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine as _;
use hmac::Mac as _;
use serde_json::Value;
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

/// The receiving clock of the ingest and signature targets (Nov 2023, in milliseconds).
const NOW_MS: i64 = 1_700_000_000_000;

/// The Standard Webhooks secret of the sources the targets verify against.
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The key of the generic HMAC sources.
const HMAC_KEY: &[u8] = b"It's a Secret to Everybody";

/// The header a generic HMAC source is signed in.
const HMAC_HEADER: &str = "x-signature";

/// Splits `data` at its first NUL byte: what comes before, and what comes after if there is one.
fn split_nul(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    }
}

/// The stack of the compile thread: an expression worker's in the optimised build the fuzz
/// targets run (`cfg(fuzzing)`, as the release build workers run), four times that in an
/// unoptimised build (the tests that replay the corpora), whose frames are several times larger.
/// (`cargo fuzz --dev` is unoptimised with `cfg(fuzzing)`: deep seeds overflow it; fuzz with
/// the default optimised build.)
const COMPILE_STACK: usize = if cfg!(all(debug_assertions, not(fuzzing))) {
    4 * crate::engine::sandbox::worker::STACK_SIZE
} else {
    crate::engine::sandbox::worker::STACK_SIZE
};

/// [`jq::compile`] on a thread with [`COMPILE_STACK`]: deep nesting recurses as deep as it does
/// in a worker. Only whether it compiled comes back (a compiled program is not `Send`).
fn compile_like_a_worker(code: &str) -> Result<(), String> {
    std::thread::scope(|scope| {
        let compiling = std::thread::Builder::new()
            .name("fuzz-compile".into())
            .stack_size(COMPILE_STACK)
            .spawn_scoped(scope, || jq::compile(code).map(|_| ()))
            .expect("cannot start a compile thread");
        compiling
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The limits the expression target runs programs under: one worker, 200 ms, 128 MiB.
pub fn expression_limits() -> Limits {
    Limits {
        workers: 1,
        time: Duration::from_millis(200),
        memory_bytes: 128 * 1024 * 1024,
        queue: 4,
    }
}

/// The expression target: a program compiled here and run in an expression worker.
///
/// The input is the program's code, then optionally a NUL byte and the JSON it runs on.
pub struct Expressions {
    runtime: tokio::runtime::Runtime,
    sandbox: Sandbox,
}

/// The payload a program runs on when the input gives none (or gives one that is not JSON).
const PAYLOAD: &[u8] = br#"{"a":1,"type":"t","data":{"b":[1,2.5,"x",null,true],"c":{}}}"#;

impl Expressions {
    /// A pool of one expression worker started from `worker` (a built `ferry`, as
    /// `ferry expr-worker`), with [`expression_limits`].
    pub fn new(worker: WorkerCommand) -> Expressions {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot start a tokio runtime");
        Expressions {
            runtime,
            sandbox: Sandbox::new(worker, expression_limits()),
        }
    }

    /// Compiles the input's program here and in a worker, runs it in the worker, then checks
    /// that the pool still serves.
    pub fn run(&self, data: &[u8]) {
        let (code, payload) = split_nul(data);
        let code = String::from_utf8_lossy(code);
        let payload = payload
            .filter(|p| crate::json::check_json(p, None).is_ok())
            .unwrap_or(PAYLOAD);
        let expr = match Expr::new(&code) {
            Ok(e) => e,
            Err(_) => {
                assert!(code.len() > MAX_EXPRESSION_SIZE, "refused: {code:?}");
                return;
            }
        };
        let compiled = compile_like_a_worker(&code);
        self.runtime.block_on(async {
            // A worker compiles it the same way; a worker that died or overran meanwhile
            // fails this request only.
            if let Some(in_worker) = contained(&code, self.sandbox.check(&expr).await) {
                assert_eq!(
                    in_worker.is_ok(),
                    compiled.is_ok(),
                    "{code:?}: here {compiled:?}, in a worker {in_worker:?}"
                );
            }
            if compiled.is_ok() {
                // An answer, an error or a limit: the call returns.
                contained(&code, self.sandbox.read(&expr, payload).await);
            }
            self.assert_still_serves().await;
        });
    }

    /// The pool answers an ordinary program after whatever came before. A worker killed at its
    /// limit is replaced, and a new worker starts within its first request's time limit: on a
    /// loaded machine that may take more than one try.
    async fn assert_still_serves(&self) {
        let plain = Expr::new(".a").expect("a short expression");
        let mut last = None;
        for _ in 0..3 {
            match self.sandbox.read(&plain, br#"{"a":"still here"}"#).await {
                Ok(read) => {
                    assert_eq!(read, Ok(Some("still here".to_string())));
                    return;
                }
                Err(e @ SandboxError::TimedOut(_)) => last = Some(e),
                Err(e) => panic!("an ordinary program after a hostile one: {e}"),
            }
        }
        panic!("an ordinary program after a hostile one: {last:?}");
    }
}

/// A worker's answer, or `None` for a limit the program hit (time, memory, stack), which the
/// pool contains. A refusal is a bug: the request or the answer could not be read, or the
/// worker panicked.
fn contained<T>(code: &str, answer: Result<T, SandboxError>) -> Option<T> {
    match answer {
        Ok(answer) => Some(answer),
        Err(SandboxError::TimedOut(_) | SandboxError::Crashed(_)) => None,
        Err(other) => panic!("{code:?}: {other}"),
    }
}

/// The ingest target: a request's checks before anything is stored, in `ingest::receive`'s
/// order (signature, depth, JSON, event type, schema, kept headers).
///
/// The input: a byte that picks the source's signature scheme (bits 0-1: none, Standard
/// Webhooks, HMAC hex with a `sha256=` prefix, HMAC base64) and where its event type is (bits
/// 2-3: `.type`, `.data.kind`, a header, `.a.b.c`); a byte that says how many
/// lines of headers follow (`name: value`); then the body.
pub fn ingest(data: &[u8]) {
    let Some((&[flags, lines], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let scheme = scheme(flags & 3);
    let (headers, body) = request(rest, lines as usize);
    if verify_request(&scheme, &headers, body, NOW_MS).is_err() {
        return;
    }
    let type_path: Option<Vec<String>> = match (flags >> 2) & 3 {
        0 => Some(vec!["type".into()]),
        1 => Some(vec!["data".into(), "kind".into()]),
        2 => None,
        _ => Some(vec!["a".into(), "b".into(), "c".into()]),
    };
    let depth = crate::json::check_depth(body);
    let checked = crate::json::check_json(body, type_path.as_deref());
    // The one pass that builds nothing refuses what the full parser refuses, and a key
    // repeated in an object, which the parser lets through (the last one wins).
    let parsed = serde_json::from_slice::<Value>(body);
    let repeated = parsed.is_ok() && repeats_a_key(body);
    assert_eq!(
        checked.is_ok(),
        parsed.is_ok() && !repeated,
        "one pass {checked:?}, parser {parsed:?}, a key repeated: {repeated}"
    );
    let (Ok(()), Ok(found), Ok(value)) = (depth, checked, parsed) else {
        return;
    };
    if let Some(path) = &type_path {
        assert_eq!(found, plain_path_in(&value, path), "{path:?} in {value}");
    } else {
        assert_eq!(found, None, "no path, nothing read");
    }
    // Workers parse the same bytes: what ingest accepted, they read.
    if let Err(e) = jq::parse_value(body) {
        panic!("ingest accepted a body the expression workers cannot read: {e}");
    }
    let violations = ingest::schema_violations(&INGEST_SCHEMA, body)
        .unwrap_or_else(|e| panic!("a body parsed above no longer parses: {e}"));
    assert_violations(&INGEST_SCHEMA, &value, &violations);
    assert_kept_headers(&headers, &scheme);
}

/// The source signature schemes of the ingest target.
fn scheme(choice: u8) -> Verify {
    let hmac = |encoding, prefix: &str| {
        Verify::Signature(Box::new(SignatureScheme::body_hmac(
            HMAC_HEADER,
            HMAC_KEY.to_vec(),
            encoding,
            prefix,
        )))
    };
    match choice {
        0 => Verify::None,
        1 => Verify::Signature(Box::new(SignatureScheme::standard_webhooks(
            webhook_key(),
            Duration::from_secs(300),
        ))),
        2 => hmac(SignatureEncoding::Hex, "sha256="),
        _ => hmac(SignatureEncoding::Base64, ""),
    }
}

fn webhook_key() -> Vec<u8> {
    signing::decode_secret(WEBHOOK_SECRET).expect("the targets' secret decodes")
}

/// The first `lines` lines of `data` as headers (`name: value`; what HTTP would not carry is
/// left out), and the rest as the body.
fn request(data: &[u8], lines: usize) -> (HeaderMap, &[u8]) {
    let mut headers = HeaderMap::new();
    let mut rest = data;
    for _ in 0..lines {
        let (line, after) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = after;
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &line[line.len()..]),
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim_ascii()),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }
    (headers, rest)
}

/// Whether an object of `body` (JSON that serde_json parses) holds a key twice: read again with
/// every object's keys kept in a set.
fn repeats_a_key(body: &[u8]) -> bool {
    struct Unique;
    impl<'de> serde::Deserialize<'de> for Unique {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
            d.deserialize_any(Unique)
        }
    }
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = Unique;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
            let mut keys = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !keys.insert(key) {
                    return Err(serde::de::Error::custom("repeated"));
                }
                map.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }
    serde_json::from_slice::<Unique>(body).is_err()
}

/// What jq gives for the plain field path `path` on `value`, in `json::read_plain_path`'s
/// terms: `Some(Some(s))` a string, `Some(None)` null or missing, `None` anything else.
fn plain_path_in(value: &Value, path: &[String]) -> Option<Option<String>> {
    let mut here = value;
    for name in path {
        match here {
            Value::Object(fields) => match fields.get(name) {
                Some(inner) => here = inner,
                None => return Some(None),
            },
            Value::Null => return Some(None),
            _ => return None,
        }
    }
    match here {
        Value::String(s) => Some(Some(s.clone())),
        Value::Null => Some(None),
        _ => None,
    }
}

/// The event type schema of the ingest target: types, lengths, patterns, nested objects.
static INGEST_SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema = serde_json::json!({
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "minLength": 1, "maxLength": 64},
            "data": {
                "type": "object",
                "properties": {"kind": {"enum": ["a", "b", null]}},
                "additionalProperties": {"type": ["string", "number", "boolean", "null"]}
            },
            "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 8}
        },
        "patternProperties": {"^x-": {"type": "string", "pattern": "^[a-z]+$"}}
    });
    config::compile_schema(&schema).expect("the ingest target's schema compiles")
});

/// Schema violations agree with the validator's yes or no, and each points into the instance.
fn assert_violations(validator: &jsonschema::Validator, instance: &Value, violations: &[Value]) {
    assert_eq!(
        violations.is_empty(),
        validator.is_valid(instance),
        "{instance}: {violations:?}"
    );
    for v in violations {
        let pointer = v["pointer"].as_str().expect("a pointer");
        assert!(
            instance.pointer(pointer).is_some(),
            "{pointer:?} is not in {instance}"
        );
    }
}

/// The headers stored with an event: none that holds a credential or the signature, one per
/// name (the last value), sorted by name.
fn assert_kept_headers(headers: &HeaderMap, scheme: &Verify) {
    let kept = KeptHeaders::of(headers, scheme);
    let signed_in = scheme.proof_header();
    let unstored = |name: &str| {
        UNSTORED_HEADERS.contains(&name)
            || crate::config::redact::is_secret_header(name)
            || signed_in == Some(name)
    };
    assert!(
        kept.0.windows(2).all(|w| w[0].0 < w[1].0),
        "sorted, one per name"
    );
    for (name, value) in &kept.0 {
        assert!(!unstored(name), "`{name}` is stored");
        let last = headers
            .get_all(*name)
            .iter()
            .next_back()
            .expect("a kept header was sent");
        assert_eq!(
            *value,
            String::from_utf8_lossy(last.as_bytes()),
            "the last `{name}`"
        );
    }
    let names = headers.keys().filter(|n| !unstored(n.as_str())).count();
    assert_eq!(kept.0.len(), names, "every other header is kept");
}

/// The signatures target: the Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
/// and a `webhook-signature` list of `v1,<base64>`), the generic HMAC header (hex or base64),
/// and `whsec_` secrets, as sources and channels read them.
///
/// The input's lines: the id, the timestamp, the signature list, the receiver's clock in
/// milliseconds, the tolerance in seconds, the HMAC header, a secret; the rest is the body.
pub fn signatures(data: &[u8]) {
    let mut lines = data.splitn(8, |&b| b == b'\n');
    let mut line = || String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let (id, timestamp, signature, now, tolerance, hmac_header, secret) =
        (line(), line(), line(), line(), line(), line(), line());
    let body = lines.next().unwrap_or_default();
    let now_ms: i64 = now.trim().parse().unwrap_or(NOW_MS);
    let tolerance = Duration::from_secs(tolerance.trim().parse().unwrap_or(300));

    if let Ok(key) = signing::decode_secret(&secret) {
        assert!(key.len() >= 16, "a short key was accepted");
    }
    let key = webhook_key();
    let standard = Verify::Signature(Box::new(SignatureScheme::standard_webhooks(
        key.clone(),
        tolerance,
    )));
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("webhook-id", &id),
        ("webhook-timestamp", &timestamp),
        ("webhook-signature", &signature),
        (HMAC_HEADER, &hmac_header),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    let _ = verify_request(&standard, &headers, body, now_ms);
    for encoding in [SignatureEncoding::Hex, SignatureEncoding::Base64] {
        let _ = verify_request(&hmac_scheme(encoding), &headers, body, now_ms);
    }
    // Not through headers: the checks take any text.
    let _ = signing::verify(
        &key,
        Some(&id),
        Some(&timestamp),
        Some(&signature),
        body,
        now_ms.div_euclid(1000),
        tolerance.as_secs().try_into().unwrap_or(i64::MAX),
    );

    // What Ferry signs, Ferry accepts, next to any other signatures; another body it refuses.
    if let Ok(ts) = timestamp.trim().parse::<i64>() {
        let good = signing::sign(&key, &id, ts, body);
        let list = format!("{signature} {good}");
        let check = |body: &[u8]| {
            signing::verify(&key, Some(&id), Some(&timestamp), Some(&list), body, ts, 0)
        };
        assert_eq!(check(body), Ok(()), "{list:?}");
        let other = [body, b"!"].concat();
        assert_eq!(check(&other), Err(signing::VerifyError::NoMatch));
        // The same through a source's headers, whatever its tolerance, when the id and the
        // timestamp can be headers a source reads (visible ASCII; it reads others as missing).
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("webhook-id", &id),
            ("webhook-timestamp", &timestamp),
            ("webhook-signature", &good),
        ] {
            if let Some(value) = HeaderValue::from_str(value)
                .ok()
                .filter(|v| v.to_str().is_ok())
            {
                headers.insert(name, value);
            }
        }
        if let (3, Some(at)) = (headers.len(), ts.checked_mul(1000)) {
            let checked = verify_request(&standard, &headers, body, at);
            assert!(checked.is_ok(), "{headers:?} at {at}: {checked:?}");
        }
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HMAC_KEY).expect("any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    for (encoding, value) in [
        (SignatureEncoding::Hex, format!("sha256={hex}")),
        (
            SignatureEncoding::Hex,
            format!("sha256={}", hex.to_uppercase()),
        ),
        (
            SignatureEncoding::Base64,
            base64::engine::general_purpose::STANDARD.encode(digest),
        ),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(HMAC_HEADER, HeaderValue::from_str(&value).expect("ASCII"));
        let checked = verify_request(&hmac_scheme(encoding), &headers, body, now_ms);
        assert!(checked.is_ok(), "{value}: {checked:?}");
    }
}

/// A source's check of a request without a query string.
fn verify_request(
    scheme: &Verify,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: i64,
) -> Result<(), verify::Refused> {
    verify::check(
        scheme,
        &verify::Request {
            headers,
            query: None,
            body,
            now_ms,
        },
    )
}

fn hmac_scheme(encoding: SignatureEncoding) -> Verify {
    let prefix = match encoding {
        SignatureEncoding::Hex => "sha256=",
        SignatureEncoding::Base64 => "",
    };
    Verify::Signature(Box::new(SignatureScheme::body_hmac(
        HMAC_HEADER,
        HMAC_KEY.to_vec(),
        encoding,
        prefix,
    )))
}

/// The config target: a config file's text checked as `ferry validate` and `ferry serve`
/// check it, then each of its expressions compiled (not run) as a worker compiles them.
///
/// Texts that name a `schema_file` are skipped: the target checks text, not the files it names.
pub fn config(data: &[u8]) {
    // A config file is read as UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "FUZZ_SET").then(|| "set".to_string());
    if config::names_schema_file(text, &env) {
        return;
    }
    let sites = match config::load_str(text, "fuzz.yaml", Path::new("."), &env) {
        Ok(config) => config.expressions,
        Err(errors) => {
            let ConfigErrors(list, sites) = &errors;
            assert!(!list.is_empty(), "refused without a reason");
            for e in list {
                assert!(e.place.starts_with("fuzz.yaml"), "no place: {e}");
            }
            let _ = errors.to_string();
            sites.clone()
        }
    };
    for site in sites {
        assert!(site.expr.code().len() <= MAX_EXPRESSION_SIZE);
        let _ = compile_like_a_worker(site.expr.code());
    }
}

/// The schema target: an event type's JSON Schema compiled as the config compiles it, then
/// bodies validated against it as ingest validates them.
///
/// The input: the schema (JSON), then optionally a NUL byte and one body (JSON) to validate;
/// without one, the schema itself and a few plain values are validated.
pub fn schema(data: &[u8]) {
    let (schema, instance) = split_nul(data);
    let Ok(schema) = serde_json::from_slice::<Value>(schema) else {
        return;
    };
    let Ok(validator) = config::compile_schema(&schema) else {
        return;
    };
    let instances = match instance.map(serde_json::from_slice::<Value>) {
        Some(Ok(one)) => vec![one],
        _ => vec![
            schema.clone(),
            Value::Null,
            serde_json::json!({}),
            serde_json::json!([]),
            serde_json::json!(""),
            serde_json::json!(0),
            serde_json::json!(-1.5),
            serde_json::json!(true),
            serde_json::json!({"type": "t", "a": [1, "x", null]}),
        ],
    };
    for instance in instances {
        let bytes = serde_json::to_vec(&instance).expect("a value serialises");
        let violations = ingest::schema_violations(&validator, &bytes)
            .unwrap_or_else(|e| panic!("{instance} does not parse back: {e}"));
        assert_violations(&validator, &instance, &violations);
    }
}
