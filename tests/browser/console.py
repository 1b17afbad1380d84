"""The console in a real browser (Debian's chromium, driven by Playwright for Python).

Starts `ferry serve` (the binary given as the first argument) with a shop source whose flow
fans out to three destinations on a local receiver, one of which fails until told otherwise,
then, as people would: signs in with a read token and finds no action button; signs in as
admin; sends an event and finds it in the list; opens it and sees its three deliveries and
their attempts; finds the failed one dead, fixes the destination, retries it from the page
and sees it delivered; and checks that a POST without the CSRF token is refused. Screenshots
of the pages go to docs/screenshots/.

Needs: `pip install playwright` and Debian's `chromium` (`.ci/run` installs both).
"""

import http.server
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from playwright.sync_api import expect, sync_playwright

ADMIN = "browser-test-admin-token"
ROOT = pathlib.Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"


class Receiver(http.server.BaseHTTPRequestHandler):
    """Answers 200, or 500 to /books while `failing` is set."""

    failing = True
    received = []

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        Receiver.received.append(self.path)
        status = 500 if self.path == "/books" and Receiver.failing else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def api(base, method, path, body=None, token=ADMIN):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("authorization", f"Bearer {token}")
    request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read()
        return json.loads(text) if text else None


def start_ferry(binary, work, receiver):
    config = work / "ferry.yaml"
    destinations = "\n".join(
        f'  - {{ id: {name}, kind: http, url: "{receiver}/{name}", retry: {{ max_attempts: 1 }} }}'
        for name in ["warehouse", "crm", "books"]
    )
    config.write_text(
        "settings: { allow_private_destinations: true }\n"
        "sources: [ { id: shop, kind: webhook, verify: { scheme: none } } ]\n"
        f"destinations:\n{destinations}\n"
        "flows: [ { id: orders, on: { source: shop }, steps: [ { deliver: [warehouse, crm, books] } ] } ]\n"
    )
    out = open(work / "serve.out", "w+")
    env = dict(os.environ, FERRY_API_TOKEN=ADMIN, FERRY_LOG="error")
    process = subprocess.Popen(
        [binary, "serve", "--config", str(config), "--data", str(work / "data"),
         "--listen", "127.0.0.1:0"],
        stdout=out, stderr=subprocess.STDOUT, env=env)
    for _ in range(300):
        out.seek(0)
        found = re.search(r"ferry listening on (\S+)", out.read())
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    out.seek(0)
    raise SystemExit(f"ferry serve did not start:\n{out.read()}")


def sign_in(browser, base, token):
    page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
    page.goto(base + "/sign-in")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    return page


def main():
    binary = sys.argv[1]
    SHOTS.mkdir(parents=True, exist_ok=True)
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    receiver_url = f"http://127.0.0.1:{receiver.server_address[1]}"
    with tempfile.TemporaryDirectory() as work:
        process, base = start_ferry(binary, pathlib.Path(work), receiver_url)
        try:
            run(base)
        finally:
            process.terminate()
            process.wait(timeout=10)
    print("the console works in chromium")


def run(base):
    read_token = api(base, "POST", "/api/v1/tokens", {"name": "viewer", "scope": "read"})["token"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])

        # An event fanned out to three destinations, one of which fails and is dead at once.
        event = api(base, "POST", "/in/shop", {"type": "order.created", "order": 1042})["event_id"]
        for _ in range(200):
            statuses = [d["status"] for d in api(base, "GET", f"/api/v1/deliveries?event_id={event}")["data"]]
            if len(statuses) == 3 and "pending" not in statuses:
                break
            time.sleep(0.05)

        # A read session sees the event and no button that acts.
        reader = sign_in(browser, base, read_token)
        expect(reader.locator(".scope")).to_have_text("read")
        reader.goto(f"{base}/events/{event}")
        expect(reader.get_by_text("To books")).to_be_visible()
        expect(reader.get_by_role("button", name="Retry this delivery")).to_have_count(0)

        # As admin: the overview, the list, the event with its three deliveries and attempts.
        admin = sign_in(browser, base, ADMIN)
        expect(admin.locator(".scope")).to_have_text("admin")
        admin.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
        admin.get_by_role("link", name="Events", exact=True).click()
        expect(admin.get_by_role("link", name=event)).to_be_visible()
        admin.screenshot(path=str(SHOTS / "events.png"), full_page=True)
        admin.get_by_role("link", name=event).click()
        for name in ["warehouse", "crm", "books"]:
            expect(admin.get_by_text(f"To {name}")).to_be_visible()
        expect(admin.locator(".delivery table tbody tr")).to_have_count(3)
        expect(admin.locator(".delivery .status.dead")).to_have_count(1)

        # Fix the destination, retry the dead letter from the page, see it delivered.
        Receiver.failing = False
        admin.get_by_role("button", name="Retry this delivery").click()
        expect(admin).to_have_url(f"{base}/events/{event}")
        for _ in range(100):
            if admin.locator(".delivery .status.succeeded").count() == 3:
                break
            time.sleep(0.1)
            admin.reload()
        expect(admin.locator(".delivery .status.succeeded")).to_have_count(3)
        admin.screenshot(path=str(SHOTS / "event.png"), full_page=True)

        # A POST without the CSRF token is refused, and the session goes on.
        refused = admin.request.post(base + "/sign-out", headers={"origin": base}, form={})
        assert refused.status in (403, 422), refused.status
        admin.goto(base + "/")
        expect(admin.get_by_role("heading", name="Overview")).to_be_visible()

        # Dark mode follows the system setting.
        dark = browser.new_context(color_scheme="dark", viewport={"width": 1280, "height": 860}).new_page()
        dark.goto(base + "/sign-in")
        background = dark.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background != "rgb(246, 247, 249)", background
        dark.screenshot(path=str(SHOTS / "sign-in-dark.png"))
        browser.close()


if __name__ == "__main__":
    main()
