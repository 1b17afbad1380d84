"""CloudEvents sent to Ferry as the official Python SDK (`cloudevents` on PyPI, 2.x core API)
encodes them: structured mode, binary mode with JSON data, binary mode with text data, and a
batch of structured events. Usage: sdk_check.py BASE_URL (a `ferry serve` with sources `ce` and
`ce-batch`, both `format: cloudevents`, the second with batches on). Prints one JSON object:
each case's answer status and body, for the Rust test (tests/api/cloudevents.rs) to check
against the stored events."""

import json
import sys
import urllib.error
import urllib.request

from cloudevents.core.bindings import http
from cloudevents.core.v1.event import CloudEvent


def post(url, headers, body):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def main():
    base = sys.argv[1].rstrip("/")
    results = {}

    structured = CloudEvent(
        attributes={
            "type": "order.created",
            "source": "/shop/eu",
            "id": "sdk-structured-1",
            "subject": "order 42 ü",
            "datacontenttype": "application/json",
            "shopregion": "eu",
        },
        data={"order": 42, "total": "9.90"},
    )
    message = http.to_structured_event(structured)
    results["structured"] = post(f"{base}/in/ce", dict(message.headers), message.body)

    binary = CloudEvent(
        attributes={
            "type": "order.paid",
            "source": "/shop/eu",
            "id": "sdk binary 1",
            "subject": "order 42 ü",
            "datacontenttype": "application/json",
        },
        data={"order": 42},
    )
    message = http.to_binary_event(binary)
    results["binary"] = post(f"{base}/in/ce", dict(message.headers), message.body)

    text = CloudEvent(
        attributes={
            "type": "note.added",
            "source": "/notes",
            "id": "sdk-text-1",
            "datacontenttype": "text/plain",
        },
        data="hello, ferry",
    )
    message = http.to_binary_event(text)
    results["binary_text"] = post(f"{base}/in/ce", dict(message.headers), message.body)

    batch = [
        json.loads(
            http.to_structured_event(
                CloudEvent(
                    attributes={"type": "tick", "source": "/clock", "id": f"sdk-batch-{n}"},
                    data={"n": n},
                )
            ).body
        )
        for n in range(3)
    ]
    body = json.dumps(batch).encode()
    headers = {"content-type": "application/cloudevents-batch+json"}
    results["batch_refused"] = post(f"{base}/in/ce", headers, body)
    results["batch"] = post(f"{base}/in/ce-batch", headers, body)
    results["batch_again"] = post(f"{base}/in/ce-batch", headers, body)

    print(json.dumps(results))


main()
