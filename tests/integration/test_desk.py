"""Integration tests of the coordinators' desk (/desk), in a real headless browser (Debian's
chromium, driven over the DevTools protocol with python3-websocket): the page renders a
scenario's unmatched requests and its volunteers, a coordinator picks a request and sends a
nearby free volunteer, and the assignment ends in vd.assignment.confirmed; without a token
the desk is read-only. Then the desk's HTTP answers without a browser: tokens, bad bodies,
unknown paths and methods, the page's security headers.

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_desk.py [test names]
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402

LAT, LON = vdtest.HOHHOT
TOKEN = "desk-token-0123456789"


def place(north=0.0, east=0.0):
    return vdtest.offset_m(LAT, LON, north, east)


class Browser:
    """Headless chromium with one page, driven over the DevTools protocol."""

    def __init__(self):
        try:
            import websocket  # Debian: python3-websocket
        except ImportError:
            raise AssertionError("python3-websocket is missing (scripts/install-deps.sh installs it)")
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        assert exe, "chromium is missing (scripts/install-deps.sh installs it)"
        self.profile = tempfile.mkdtemp(prefix="vd-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", "--remote-debugging-port=0",
             "--user-data-dir=" + self.profile, "--window-size=1280,800", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode("utf-8", "replace")
            if not line and self.proc.poll() is not None:
                break
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                port = int(m.group(1))
        assert port, "chromium did not start its DevTools endpoint"
        pages = json.load(urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=10))
        url = [p for p in pages if p.get("type") == "page"][0]["webSocketDebuggerUrl"]
        self.ws = websocket.create_connection(url, timeout=30)
        self.next_id = 0
        self.errors = []  # exceptions thrown in the page, console errors
        self.call("Runtime.enable")
        self.call("Log.enable")

    def _event(self, msg):
        method = msg.get("method")
        if method == "Runtime.exceptionThrown":
            self.errors.append(msg["params"]["exceptionDetails"].get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and msg["params"].get("type") == "error":
            self.errors.append(str(msg["params"].get("args")))
        elif method == "Log.entryAdded" and msg["params"]["entry"].get("level") == "error":
            self.errors.append(msg["params"]["entry"].get("text"))

    def call(self, method, **params):
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise AssertionError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            self._event(msg)

    def js(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError("%s: %s" % (expression, r["exceptionDetails"]))
        return r["result"].get("value")

    def open(self, url):
        self.call("Page.navigate", url=url)

    def wait(self, expression, timeout=30, what=None):
        return vdtest.wait_for(lambda: self.js(expression), timeout=timeout, interval=0.2,
                               what=what or expression)

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def start(env, **config):
    listen, port = vdtest.listen_config()
    cfg = {"http.listen": listen}
    cfg.update(config)
    return env.daemon(cfg), port


def scenario(env):
    """Volunteers around the centre; two requests far from everyone (unmatched), one near a
    volunteer (confirmed)."""
    vols = [("vol-%d" % i, place(300 * i, 200 * (i % 3)), {}) for i in range(8)]
    vols.append(("vol-desk", place(-12000, 0), {"skills": ["first_aid"]}))
    env.send("volunteers", [vdtest.volunteer_available(v, *pos, **extra) for v, pos, extra in vols])
    env.wait_for(lambda: env.redis.cmd("ZCARD", "vd:pool/city") == len(vols), timeout=30,
                 what="volunteers pooled")
    env.send("requests", [vdtest.request_created("rq-far1", *place(-18000, 0), priority="high"),
                          vdtest.request_created("rq-far2", *place(0, 25000)),
                          vdtest.request_created("rq-near", *place(10, 10))])
    env.wait_for(lambda: env.redis.cmd("ZCARD", "vd:unstaffed") == 2, timeout=30,
                 what="two unmatched requests")
    env.wait_for(lambda: env.redis.cmd("HGET", "vd:req/rq-near", "state") == "confirmed",
                 timeout=30, what="rq-near confirmed")
    return len(vols)


def test_desk_in_a_browser_assigns_a_volunteer():
    with vdtest.Env() as env:
        d, port = start(env, **{"http.desk_token": TOKEN})
        nvols = scenario(env)
        b = Browser()
        try:
            b.open("http://127.0.0.1:%d/desk" % port)
            b.wait("document.querySelectorAll('#open li.req').length === 2",
                   what="the two unmatched requests listed")
            ids = b.js("[...document.querySelectorAll('#open li.req')].map(li => li.dataset.id)")
            assert sorted(ids) == ["rq-far1", "rq-far2"], ids
            why = b.js("document.querySelector('#open li.req .why').textContent")
            assert "no_volunteer_in_range" in why, why
            # The map: every pooled volunteer decoded from its geohash, near where it is.
            vols = b.js("desk.volunteers.map(v => [v.id, v.lat, v.lon])")
            assert len(vols) == nvols - 1, vols  # vol-0 serves rq-near
            pos = {v[0]: (v[1], v[2]) for v in vols}
            want = place(-12000, 0)
            assert vdtest.distance_m(*pos["vol-desk"], *want) < 2, (pos["vol-desk"], want)
            assert b.js("desk.view !== null && document.getElementById('map').width > 0")
            assert b.js("document.getElementById('mode').textContent") == ""

            # A coordinator picks rq-far1 and sends the nearest free volunteer.
            b.js("document.getElementById('coordinator').value = 'coord.zhang';"
                 "document.getElementById('token').value = %s;" % json.dumps(TOKEN))
            b.js("document.querySelector('#open li.req[data-id=\"rq-far1\"]').click()")
            b.wait("document.querySelector('button.send[data-vid=\"vol-desk\"]') !== null",
                   what="vol-desk offered as the nearest free volunteer")
            first = b.js("document.querySelector('#near tbody tr td').textContent")
            assert first == "vol-desk", first
            b.js("document.querySelector('button.send[data-vid=\"vol-desk\"]').click()")
            b.wait("document.getElementById('result').textContent.startsWith('confirmed')",
                   what="the page says confirmed")
            conf = vdtest.wait_for(
                lambda: [e for e in env.events("assignments", timeout=5)
                         if e["type"] == "vd.assignment.confirmed"
                         and e["data"]["request_id"] == "rq-far1"],
                timeout=20, what="vd.assignment.confirmed for rq-far1")
            assert conf[0]["data"]["volunteer_id"] == "vol-desk", conf
            assert conf[0]["data"]["assigned_by"] == "coord.zhang", conf
            sent = [e for e in env.events("requests", timeout=5) if e["type"] == "vd.request.assign"]
            assert len(sent) == 1 and sent[0]["source"] == "vdispatchd/desk", sent
            b.wait("document.querySelectorAll('#open li.req').length === 1",
                   what="rq-far1 leaves the list")

            # A refusal is shown with its reason: vol-desk is busy now.
            b.js("document.querySelector('#open li.req[data-id=\"rq-far2\"]').click()")
            b.wait("document.querySelectorAll('button.send').length > 0", what="volunteers near rq-far2")
            listed = b.js("[...document.querySelectorAll('button.send')].map(x => x.dataset.vid)")
            assert "vol-desk" not in listed, listed
            assert not b.errors, b.errors
        finally:
            b.close()


def test_desk_without_token_is_read_only():
    with vdtest.Env() as env:
        d, port = start(env)
        scenario(env)
        b = Browser()
        try:
            b.open("http://127.0.0.1:%d/desk" % port)
            b.wait("document.querySelectorAll('#open li.req').length === 2", what="requests listed")
            assert "read-only" in b.js("document.getElementById('mode').textContent")
            b.js("document.querySelector('#open li.req').click()")
            b.wait("document.querySelectorAll('#near tbody tr').length > 0", what="volunteers listed")
            assert b.js("document.querySelectorAll('button.send').length") == 0
            assert not b.errors, b.errors
        finally:
            b.close()
        code, body = post(port, {"request_id": "rq-far1", "volunteer_id": "vol-desk",
                                 "coordinator_id": "c"}, TOKEN)
        assert code == 403 and "read-only" in body["error"], (code, body)


def get(port, path):
    try:
        r = urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10)
        return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def post(port, body, token=None, raw=None, path="/desk/assign"):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data,
                                 headers=headers, method="POST")
    try:
        r = urllib.request.urlopen(req, timeout=15)
        return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"text": text.decode()}


def test_desk_http():
    with vdtest.Env() as env:
        d, port = start(env, **{"http.desk_token": TOKEN})
        scenario(env)
        code, headers, page = get(port, "/desk")
        assert code == 200 and b"/desk/desk.js" in page, code
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, csp
        assert get(port, "/desk/desk.js")[0] == 200 and get(port, "/desk/desk.css")[0] == 200
        code, _, body = get(port, "/desk/state")
        st = json.loads(body)
        assert code == 200 and st["actions"] is True and st["tiles"] == "", st
        assert st["data"]["unstaffed"] == 2 and st["data"]["pools"] == {"city": 8}, st["data"]
        code, _, body = get(port, "/desk/near?request=rq-far1")
        near = json.loads(body)
        assert code == 200 and near["volunteers"][0]["id"] == "vol-desk", near
        dists = [v["distance_m"] for v in near["volunteers"]]
        assert dists == sorted(dists) and len(dists) == 8, dists
        assert get(port, "/desk/near?request=bad/id")[0] == 400
        assert json.loads(get(port, "/desk/near?request=rq-none")[2])["error"] == "unknown request"
        assert get(port, "/desk/nothing")[0] == 404
        assert get(port, "/desk/assign")[0] == 405

        ok = {"request_id": "rq-far2", "volunteer_id": "vol-desk", "coordinator_id": "coord.li"}
        assert post(port, ok)[0] == 401
        assert post(port, ok, "wrong-token-0123456789")[0] == 401
        code, body = post(port, None, TOKEN, raw=b"{not json")
        assert code == 400 and body["error"].startswith("body:"), body
        code, body = post(port, dict(ok, volunteer_id="a b"), TOKEN)
        assert code == 400 and body["error"].startswith("volunteer_id:"), body
        code, body = post(port, {"request_id": "rq-far2", "volunteer_id": "v"}, TOKEN)
        assert code == 400 and body["error"].startswith("coordinator_id:"), body
        code, body = post(port, None, TOKEN, raw=b"x" * 9000)
        assert code == 413, (code, body)
        code, body = post(port, ok, TOKEN)
        assert code == 202 and body["event_id"].startswith("desk/"), body
        conf = vdtest.wait_for(
            lambda: [e for e in env.events("assignments", timeout=5)
                     if e["type"] == "vd.assignment.confirmed" and e["data"]["request_id"] == "rq-far2"],
            timeout=20, what="rq-far2 confirmed")
        assert conf[0]["data"]["assigned_by"] == "coord.li", conf
        m = vdtest.metrics(d)
        assert m.get("vd_desk_assignments_total") == 1, m.get("vd_desk_assignments_total")
        assert m.get("vd_desk_refused_total") == 5, m.get("vd_desk_refused_total")


if __name__ == "__main__":
    vdtest.main(globals())
