#!/usr/bin/env python3
"""Screenshot of a dashboard page of a running lbfleet-server, logged in as a user (headless Chromium through
chromedriver's WebDriver protocol; Python standard library only). Used for the README's pictures of `make demo`.

    scripts/screenshot.py --url http://127.0.0.1:8080 --user admin --password-file var/demo/admin-password \
        --page /nodes/lb-02 --out docs/img/failover.png [--width 1280 --height 900]

chromedriver and Chromium come from Debian's chromium-driver and chromium (scripts/install-deps.sh). The
chromedriver this starts listens on 127.0.0.1 only and is stopped on exit, also on failure.
"""

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Driver:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"
        self.session = None

    def call(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            raise SystemExit(f"webdriver {method} {path}: {e.code} {e.read()[:400]!r}")

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def element(self, css):
        found = self.s("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(found.values()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="dashboard base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--user", default="admin")
    ap.add_argument("--password-file", required=True, help="file holding the password (first line)")
    ap.add_argument("--page", default="/", help="path to capture after login")
    ap.add_argument("--out", required=True, help="PNG file to write")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    a = ap.parse_args()
    for p in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(p):
            sys.exit(f"{p} missing (Debian packages chromium and chromium-driver)")
    with open(a.password_file) as f:
        password = f.readline().strip()

    port = free_port()
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    profile = tempfile.TemporaryDirectory()
    d = Driver(port)
    try:
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": CHROMIUM, "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--window-size={a.width},{a.height}", f"--user-data-dir={profile.name}"]}}}}
        # chromedriver binds its port a moment after it starts: retry (bounded) until it answers.
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(d.base + "/session", data=json.dumps(caps).encode(),
                                             method="POST", headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as r:
                    d.session = json.loads(r.read())["value"]["sessionId"]
                break
            except (urllib.error.URLError, ConnectionError) as e:
                if time.monotonic() > deadline:
                    sys.exit(f"chromedriver did not start a session: {e}")
                time.sleep(0.1)
        d.s("POST", "/url", {"url": a.url.rstrip("/") + "/login"})
        d.s("POST", f"/element/{d.element('input[name=username]')}/value", {"text": a.user})
        d.s("POST", f"/element/{d.element('input[name=password]')}/value", {"text": password})
        d.s("POST", f"/element/{d.element('#login-form button[type=submit], #login-form button')}/click", {})
        if "/login" in d.s("GET", "/url"):
            sys.exit("login refused (wrong user or password?)")
        d.s("POST", "/url", {"url": a.url.rstrip("/") + a.page})
        png = base64.b64decode(d.s("GET", "/screenshot"))
        if not png.startswith(b"\x89PNG"):
            sys.exit("chromedriver returned no PNG")
        with open(a.out, "wb") as f:
            f.write(png)
        print(f"{a.out}: {len(png)} bytes, {a.url}{a.page} as {a.user}")
    finally:
        if d.session:
            try:
                d.call("DELETE", f"/session/{d.session}", timeout=10)
            except SystemExit:
                pass
        driver.terminate()
        try:
            driver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            driver.kill()
        profile.cleanup()


if __name__ == "__main__":
    main()
