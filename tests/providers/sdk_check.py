"""Ferry's provider presets against the providers' official Python SDKs.

Usage: sdk_check.py BASE_URL, with the sources' secrets in the environment (see
`the_providers_python_sdks_sign_what_ferry_takes` in tests/api/providers.rs, which runs this
against a spawned app): FERRY_NOW (the app's clock, unix seconds: requests are signed at that
time), SW_SECRET, SLACK_SECRET, TWILIO_TOKEN, TWILIO_URL, STRIPE_SECRET, SQUARE_KEY,
SQUARE_URL, PADDLE_SECRET.

For each provider, the SDK makes the signature, or, where the SDK only verifies, the signature
is made here with the standard library and the SDK must accept it first. Then the request goes
to Ferry, and the answer must be the one expected: taken (202), a duplicate (200), or refused
(401) when the SDK refuses it too. Each event taken is printed as
`event <source> <event_id> <event_type> <idempotency key or ->` for the Rust test to check.

The SDKs (pinned in .ci/run): standardwebhooks, slack-sdk, twilio, stripe, squareup,
paddle-python-sdk. GitHub, Shopify and Zoom publish no Python SDK that signs or checks their
webhooks, so they are checked in providers.rs alone.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

BASE = sys.argv[1].rstrip("/")
NOW = int(os.environ["FERRY_NOW"])
FAILURES = []


def post(path, body, headers, content_type="application/json"):
    """POSTs to Ferry; (status, JSON answer or None)."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    request = urllib.request.Request(BASE + path, data=data, method="POST")
    request.add_header("content-type", content_type)
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as refused:
        status, text = refused.code, refused.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, None


def check(what, condition, detail=""):
    print(("ok   " if condition else "FAIL ") + what + (f": {detail}" if not condition else ""))
    if not condition:
        FAILURES.append(what)


def expect(what, answer, status, error=None):
    """Checks an answer's status (and error code); the answer's body."""
    got, body = answer
    check(f"{what}: {status}", got == status, f"got {got} {body}")
    if error is not None:
        check(f"{what}: {error}", isinstance(body, dict) and body.get("error") == error, body)
    return body


def taken(what, source, answer, event_type, key):
    body = expect(what, answer, 202)
    if isinstance(body, dict) and "event_id" in body:
        print(f"event {source} {body['event_id']} {event_type} {key or '-'}")
        return body["event_id"]
    return None


def duplicate(what, answer, first):
    body = expect(what, answer, 200)
    check(f"{what}: same event", body == {"event_id": first, "duplicate": True}, body)


def standard_webhooks():
    from standardwebhooks import Webhook, WebhookVerificationError

    secret = os.environ["SW_SECRET"]
    wh = Webhook(secret)
    body = json.dumps({"type": "user.created", "data": {"id": "u_1"}})
    at = datetime.fromtimestamp(NOW, tz=timezone.utc)
    headers = {
        "webhook-id": "msg_sdk_1",
        "webhook-timestamp": str(NOW),
        "webhook-signature": wh.sign("msg_sdk_1", at, body),
    }
    check("standardwebhooks: the SDK verifies its own signature", wh.verify(body, headers) is not None)
    first = taken("standardwebhooks: signed", "sw", post("/in/sw", body, headers), "user.created", "msg_sdk_1")
    duplicate("standardwebhooks: again", post("/in/sw", body, headers), first)
    tampered = body.replace("u_1", "u_2")
    expect("standardwebhooks: tampered", post("/in/sw", tampered, headers), 401, "invalid_signature")
    old = datetime.fromtimestamp(NOW - 600, tz=timezone.utc)
    stale = dict(headers, **{"webhook-timestamp": str(NOW - 600), "webhook-signature": wh.sign("msg_sdk_1", old, body)})
    try:
        wh.verify(body, stale)
        check("standardwebhooks: the SDK refuses a stale timestamp", False)
    except WebhookVerificationError:
        check("standardwebhooks: the SDK refuses a stale timestamp", True)
    expect("standardwebhooks: stale", post("/in/sw", body, stale), 401, "invalid_signature")


def slack():
    from slack_sdk.signature import SignatureVerifier

    verifier = SignatureVerifier(os.environ["SLACK_SECRET"])
    ts = str(NOW)
    body = json.dumps(
        {
            "token": "x",
            "team_id": "T1",
            "type": "event_callback",
            "event": {"type": "reaction_added", "user": "U1", "reaction": "thumbsup"},
            "event_id": "Ev_sdk_1",
            "event_time": NOW,
        }
    )
    sig = verifier.generate_signature(timestamp=ts, body=body)
    headers = {"x-slack-request-timestamp": ts, "x-slack-signature": sig}
    check("slack_sdk: the SDK takes its own signature", verifier.is_valid(body=body, timestamp=ts, signature=sig))
    first = taken("slack_sdk: signed", "sl", post("/in/sl", body, headers), "reaction_added", "Ev_sdk_1")
    duplicate("slack_sdk: again", post("/in/sl", body, headers), first)
    tampered = body.replace("thumbsup", "thumbsdown")
    check("slack_sdk: the SDK refuses a tampered body", not verifier.is_valid(body=tampered, timestamp=ts, signature=sig))
    expect("slack_sdk: tampered", post("/in/sl", tampered, headers), 401, "invalid_signature")
    challenge = json.dumps({"token": "x", "challenge": "c-sdk", "type": "url_verification"})
    signed = {"x-slack-request-timestamp": ts, "x-slack-signature": verifier.generate_signature(timestamp=ts, body=challenge)}
    answer = expect("slack_sdk: url_verification", post("/in/sl", challenge, signed), 200)
    check("slack_sdk: the challenge is sent back", answer == {"challenge": "c-sdk"}, answer)
    expect("slack_sdk: url_verification unsigned", post("/in/sl", challenge, {}), 401, "invalid_signature")


def twilio():
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(os.environ["TWILIO_TOKEN"])
    url = os.environ["TWILIO_URL"]
    params = {
        "AccountSid": "AC0000000000000000000000000000000",
        "MessageSid": "SM_sdk_1",
        "MessageStatus": "undelivered",
        "ErrorCode": "30003",
        "To": "+15558675310",
        "From": "+15017122661",
        "Body": "Ahoy! 100% ok & done",
    }
    sig = validator.compute_signature(url, params)
    check("twilio: the SDK validates its own signature", validator.validate(url, params, sig))
    headers = {"x-twilio-signature": sig, "i-twilio-idempotency-token": "tw-sdk-1"}
    form = urllib.parse.urlencode(params)
    form_type = "application/x-www-form-urlencoded"
    first = taken("twilio: signed form", "tw", post("/in/tw", form, headers, form_type), "message.undelivered", "tw-sdk-1")
    duplicate("twilio: again", post("/in/tw", form, headers, form_type), first)
    tampered = urllib.parse.urlencode(dict(params, Body="Ahoy! 0% ok"))
    expect("twilio: tampered", post("/in/tw", tampered, headers, form_type), 401, "invalid_signature")
    # A query string is part of the URL Twilio signs.
    call = {"CallSid": "CA_sdk_2", "CallStatus": "ringing", "Direction": "inbound"}
    with_query = url + "?tenant=acme&n=2"
    call_headers = {"x-twilio-signature": validator.compute_signature(with_query, call), "i-twilio-idempotency-token": "tw-sdk-2"}
    answer = post("/in/tw?tenant=acme&n=2", urllib.parse.urlencode(call), call_headers, form_type)
    taken("twilio: signed form, URL with a query", "tw", answer, "call.ringing", "tw-sdk-2")
    # A JSON body, covered by `bodySHA256` in the signed URL: the SDK validates it, and so does
    # Ferry, whose Twilio source then takes forms only (`format: form`), so 415, not 401.
    body = json.dumps({"type": "com.twilio.messaging.message.sent"})
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    signed_url = f"{url}?bodySHA256={digest}"
    json_sig = validator.compute_signature(signed_url, {})
    check("twilio: the SDK validates a bodySHA256 URL", validator.validate(signed_url, body, json_sig))
    answer = post(f"/in/tw?bodySHA256={digest}", body, {"x-twilio-signature": json_sig})
    expect("twilio: JSON body with bodySHA256", answer, 415, "unsupported_media_type")
    other = body.replace("sent", "failed")
    check("twilio: the SDK refuses another body", not validator.validate(signed_url, other, json_sig))
    answer = post(f"/in/tw?bodySHA256={digest}", other, {"x-twilio-signature": json_sig})
    expect("twilio: another JSON body", answer, 401, "invalid_signature")


def stripe():
    import stripe as stripe_sdk

    secret = os.environ["STRIPE_SECRET"]
    body = json.dumps(
        {"id": "evt_sdk_1", "object": "event", "type": "invoice.payment_failed", "data": {"object": {"id": "in_1"}}}
    )
    header = stripe_sdk.WebhookSignature.generate_signature_header(body, secret, timestamp=NOW)
    event = stripe_sdk.Webhook.construct_event(body, header, secret)
    check("stripe: the SDK constructs the event", event["id"] == "evt_sdk_1", event)
    headers = {"stripe-signature": header}
    first = taken("stripe: signed", "st", post("/in/st", body, headers), "invoice.payment_failed", "evt_sdk_1")
    duplicate("stripe: again", post("/in/st", body, headers), first)
    tampered = body.replace("in_1", "in_2")
    try:
        stripe_sdk.WebhookSignature.verify_header(tampered, header, secret, 300)
        check("stripe: the SDK refuses a tampered body", False)
    except stripe_sdk.SignatureVerificationError:
        check("stripe: the SDK refuses a tampered body", True)
    expect("stripe: tampered", post("/in/st", tampered, headers), 401, "invalid_signature")
    stale = stripe_sdk.WebhookSignature.generate_signature_header(body, secret, timestamp=NOW - 600)
    try:
        stripe_sdk.WebhookSignature.verify_header(body, stale, secret, 300)
        check("stripe: the SDK refuses a stale timestamp", False)
    except stripe_sdk.SignatureVerificationError:
        check("stripe: the SDK refuses a stale timestamp", True)
    expect("stripe: stale", post("/in/st", body, {"stripe-signature": stale}), 401, "invalid_signature")


def square():
    from square.utils.webhooks_helper import verify_signature

    key = os.environ["SQUARE_KEY"]
    url = os.environ["SQUARE_URL"]
    body = json.dumps(
        {"merchant_id": "M1", "type": "refund.created", "event_id": "sq-sdk-1", "created_at": "2024-01-01T00:00:00Z", "data": {}}
    )

    def sign(u, b):
        return base64.b64encode(hmac.new(key.encode(), (u + b).encode(), hashlib.sha256).digest()).decode()

    sig = sign(url, body)
    ok = verify_signature(request_body=body, signature_header=sig, signature_key=key, notification_url=url)
    check("square: the SDK accepts the signature", ok)
    headers = {"x-square-hmacsha256-signature": sig}
    first = taken("square: signed", "sq", post("/in/sq", body, headers), "refund.created", "sq-sdk-1")
    duplicate("square: again", post("/in/sq", body, headers), first)
    tampered = body.replace("refund.created", "refund.updated")
    bad = verify_signature(request_body=tampered, signature_header=sig, signature_key=key, notification_url=url)
    check("square: the SDK refuses a tampered body", not bad)
    expect("square: tampered", post("/in/sq", tampered, headers), 401, "invalid_signature")


def paddle():
    from paddle_billing.Notifications import Secret, Verifier
    from paddle_billing.Notifications.PaddleSignature import PaddleSignature

    key = os.environ["PADDLE_SECRET"]
    body = json.dumps(
        {"event_id": "evt_pd_sdk_1", "event_type": "subscription.canceled", "occurred_at": "2024-01-01T00:00:00Z", "data": {}}
    )

    def sign(ts, b):
        h1 = hmac.new(key.encode(), f"{ts}:{b}".encode(), hashlib.sha256).hexdigest()
        return f"ts={ts};h1={h1}"

    header = sign(NOW, body)

    class Request:
        def __init__(self, b, h):
            self.body = b.encode()
            self.headers = {"Paddle-Signature": h}

    check("paddle: the SDK's signature check accepts it", PaddleSignature().verify(header, body, Secret(key)))
    # The SDK's own time check reads the wall clock, and Ferry's test app has a clock of its
    # own (fixed at its start): Ferry checks the 5 s tolerance, in providers.rs.
    check(
        "paddle: the SDK's Verifier accepts it",
        Verifier().verify(Request(body, header), Secret(key), verify_time_drift=False),
    )
    headers = {"paddle-signature": header}
    first = taken("paddle: signed", "pd", post("/in/pd", body, headers), "subscription.canceled", "evt_pd_sdk_1")
    duplicate("paddle: again", post("/in/pd", body, headers), first)
    tampered = body.replace("canceled", "activated")
    try:
        refused = not PaddleSignature().verify(header, tampered, [Secret(key)])
    except ConnectionRefusedError:
        refused = True
    check("paddle: the SDK refuses a tampered body", refused)
    expect("paddle: tampered", post("/in/pd", tampered, headers), 401, "invalid_signature")
    stale = sign(NOW - 6, body)
    expect("paddle: 6 s old", post("/in/pd", body, {"paddle-signature": stale}), 401, "invalid_signature")


for provider in (standard_webhooks, slack, twilio, stripe, square, paddle):
    try:
        provider()
    except Exception as error:  # a missing SDK or a changed API: say which, go on
        check(f"{provider.__name__}: ran", False, repr(error))

if FAILURES:
    print(f"{len(FAILURES)} checks failed: {FAILURES}")
    sys.exit(1)
