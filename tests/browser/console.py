"""The console in a real browser (Debian's chromium, driven by Playwright for Python).

Starts `ferry serve` (the binary given as the first argument) with a shop source whose flow
fans out to three destinations on a local receiver, one of which fails until told otherwise,
then, as people would: signs in with a read token and finds no action button; signs in as
admin; sends an event and sees it on the live tail and in the list; opens it and sees its
three deliveries and their attempts; finds the failed one on the dead letters page, fixes the
destination, replays it after the count is confirmed and sees it delivered; builds a two-step
flow in the builder, sees a jq error while typing, tests it on a recent event, saves it and
sees the next event go through it; and checks that a POST without the CSRF token is refused,
that a tablet-wide page does not scroll sideways, and that dark mode follows the system.
Screenshots of the pages go to docs/screenshots/.

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


def wait_for(what, check, tries=100):
    for _ in range(tries):
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def delivery_statuses(base, event):
    return {d["destination_id"]: d["status"]
            for d in api(base, "GET", f"/api/v1/deliveries?event_id={event}")["data"]}


def run(base):
    read_token = api(base, "POST", "/api/v1/tokens", {"name": "viewer", "scope": "read"})["token"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])

        # As admin, on the overview: an event sent now shows on the live tail.
        admin = sign_in(browser, base, ADMIN)
        expect(admin.locator(".scope")).to_have_text("admin")
        expect(admin.locator("#tail.live")).to_have_count(1)
        event = api(base, "POST", "/in/shop", {"type": "order.created", "order": 1042})["event_id"]
        expect(admin.locator("#tail-rows").get_by_role("link", name=event)).to_be_visible()
        wait_for("the three deliveries to settle",
                 lambda: len(delivery_statuses(base, event)) == 3
                 and "pending" not in delivery_statuses(base, event).values())

        # A read session sees everything and no button that acts.
        reader = sign_in(browser, base, read_token)
        expect(reader.locator(".scope")).to_have_text("read")
        reader.goto(f"{base}/events/{event}")
        expect(reader.get_by_text("To books")).to_be_visible()
        expect(reader.locator("main form[method=post] button")).to_have_count(0)
        for path in ["/dead-letters", "/flows", "/destinations/books"]:
            reader.goto(base + path)
            expect(reader.locator("main form[method=post] button")).to_have_count(0)

        # The list, and the event with its three deliveries and their attempts.
        admin.reload()
        admin.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
        admin.get_by_role("link", name="Events", exact=True).click()
        expect(admin.get_by_role("link", name=event)).to_be_visible()
        admin.screenshot(path=str(SHOTS / "events.png"), full_page=True)
        admin.get_by_role("link", name=event).click()
        for name in ["warehouse", "crm", "books"]:
            expect(admin.get_by_role("heading", name=f"To {name}")).to_be_visible()
        expect(admin.locator(".delivery table tbody tr")).to_have_count(3)
        expect(admin.locator(".delivery .status.dead")).to_have_count(1)
        admin.screenshot(path=str(SHOTS / "event.png"), full_page=True)

        # The dead letter on its page: fix the destination, replay after the count, delivered.
        admin.get_by_role("link", name="Dead letters", exact=True).click()
        expect(admin.get_by_role("link", name=event)).to_be_visible()
        admin.screenshot(path=str(SHOTS / "dead-letters.png"), full_page=True)
        Receiver.failing = False
        admin.get_by_role("link", name="Replay every dead letter matching this filter…").click()
        expect(admin.get_by_text("1 dead letter matches")).to_be_visible()
        admin.get_by_role("button", name="Replay 1 dead letter").click()
        expect(admin.get_by_role("status")).to_contain_text("Replayed 1")
        wait_for("the replayed dead letter to be delivered",
                 lambda: delivery_statuses(base, event).get("books") == "succeeded")
        admin.goto(base + "/destinations")
        admin.screenshot(path=str(SHOTS / "destinations.png"), full_page=True)

        # The builder: a filter (a jq error shown while typing, then fixed) and a deliver,
        # tested on the recent event, saved; the next event goes through it.
        admin.goto(base + "/flows")
        admin.get_by_role("link", name="New flow").click()
        admin.get_by_label("Id").fill("big-orders")
        admin.get_by_role("button", name="filter", exact=True).click()
        expression = admin.locator('input[name="0.expr"]')
        expression.fill(".order >")
        expect(admin.locator(".jq-note.bad")).to_contain_text("expected")
        expression.fill(".order > 1000")
        expect(admin.locator(".jq-note.ok")).to_have_count(1)
        admin.get_by_role("button", name="deliver", exact=True).click()
        admin.locator('input[name="1.to"][value="crm"]').check()
        admin.locator('select[name="event_id"]').select_option(event)
        admin.get_by_role("button", name="Test the draft").click()
        report = admin.locator("#test-report")
        expect(report).to_contain_text("completed")
        expect(report).to_contain_text("1042")
        admin.screenshot(path=str(SHOTS / "builder.png"), full_page=True)
        admin.get_by_role("button", name="Save the flow").click()
        expect(admin).to_have_url(f"{base}/flows/big-orders")
        expect(admin.locator("svg.diagram")).to_be_visible()
        admin.screenshot(path=str(SHOTS / "flow.png"), full_page=True)
        following = api(base, "POST", "/in/shop", {"type": "order.created", "order": 2000})["event_id"]
        wait_for("the next event to run through the new flow",
                 lambda: "big-orders" in [r["flow_id"] for r in api(base, "GET", f"/api/v1/runs?event_id={following}")["data"]])

        # A POST without the CSRF token is refused, and the session goes on.
        refused = admin.request.post(base + "/sign-out", headers={"origin": base}, form={})
        assert refused.status in (403, 422), refused.status
        admin.goto(base + "/")
        expect(admin.get_by_role("heading", name="Overview")).to_be_visible()

        # Keyboard: the first Tab reaches the navigation.
        admin.keyboard.press("Tab")
        assert admin.evaluate("document.activeElement.tagName") in ("A", "BUTTON", "INPUT"), "keyboard focus"

        # A tablet-wide page does not scroll sideways.
        tablet = browser.new_context(viewport={"width": 768, "height": 1024}).new_page()
        tablet.context.add_cookies(admin.context.cookies())
        for path in ["/", "/events", f"/events/{event}", "/flows/big-orders", "/dead-letters"]:
            tablet.goto(base + path)
            overflow = tablet.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at 768px"

        # Dark mode follows the system setting.
        dark = browser.new_context(color_scheme="dark", viewport={"width": 1280, "height": 860}).new_page()
        dark.goto(base + "/sign-in")
        background = dark.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background != "rgb(246, 247, 249)", background
        dark.screenshot(path=str(SHOTS / "sign-in-dark.png"))
        browser.close()


if __name__ == "__main__":
    main()
