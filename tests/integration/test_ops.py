"""Operating the daemon: configuration checks, signals, the stop sequence and the HTTP edge.

Runs the real vdispatchd against the harness's redis-server and Kafka mock (see vdtest.py):

  test_check_config             --check-config, --set, --version, --help, bad options
  test_check_config_locked_property_line   a refused librdkafka property names its line
  test_sigterm_graceful         SIGTERM while outcomes arrive: exit 0, nothing republished
  test_sigterm_kafka_down       SIGTERM with every broker down, all outputs acknowledged
  test_sigterm_kafka_down_outputs_unacked   ... and with outputs still unacknowledged
  test_sigterm_redis_down       SIGTERM while consumed requests wait for Redis
  test_sighup_reopens_log       SIGHUP after logrotate's rename: a new log file
  test_http_endpoints           /healthz, /readyz (also while Redis is down), /metrics, 404;
                                SIGINT stops like SIGTERM

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_ops.py [TEST_NAME ...]
"""

import http.client
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402
from vdtest import http_get, json_records, listen_config, metrics, parse_metrics  # noqa: E402

STOP_BUDGET_S = 10.0  # the contract's bound on a graceful stop


# --------------------------------------------------------------------------------------------
# Helpers

def grid_points(n, spacing_m=100.0):
    """n points on a square grid centred on Hohhot."""
    side = int(math.ceil(math.sqrt(n)))
    pts = []
    for i in range(n):
        north = (i // side - side / 2.0) * spacing_m
        east = (i % side - side / 2.0) * spacing_m
        pts.append(vdtest.offset_m(vdtest.HOHHOT_LAT, vdtest.HOHHOT_LON, north, east))
    return pts


def volunteers(n, prefix="vol"):
    return [vdtest.volunteer_available("%s-%04d" % (prefix, i), lat, lon)
            for i, (lat, lon) in enumerate(grid_points(n))]


def requests(n, prefix="req", seed=1, spread_m=None):
    """n requests at random points inside the volunteers' grid area."""
    rng = random.Random(seed)
    half = spread_m or 1000.0
    out = []
    for i in range(n):
        lat, lon = vdtest.offset_m(vdtest.HOHHOT_LAT, vdtest.HOHHOT_LON,
                                   rng.uniform(-half, half), rng.uniform(-half, half))
        out.append(vdtest.request_created("%s-%04d" % (prefix, i), lat, lon))
    return out


def load_volunteers(env, evs, prefix="vd:"):
    """Produces the volunteers and waits until all of them are in the city pool."""
    env.send("volunteers", evs)
    env.wait_for(lambda: env.redis.cmd("ZCARD", prefix + "pool/city") == len(evs), timeout=30,
                 what="%d volunteers in the city pool" % len(evs))


class Stream:
    """Produces events of a topic kind in small batches from a background thread, as a steady
    stream; `produced` counts what Kafka acknowledged so far."""

    def __init__(self, env, kind, events, batch=10, pause_s=0.05):
        self.env, self.kind, self.events = env, kind, list(events)
        self.batch, self.pause_s = batch, pause_s
        self.produced = 0
        self.error = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        kafka = self.env.kafka
        try:
            for i in range(0, len(self.events), self.batch):
                chunk = self.events[i:i + self.batch]
                msgs = [(vdtest.event_key(self.kind, e), e) for e in chunk]
                kafka.produce_start(kafka.topic(self.kind), msgs).wait(timeout=120)
                self.produced += len(chunk)
                time.sleep(self.pause_s)
        except Exception as e:  # reported by wait()
            self.error = e

    def wait(self, timeout=180):
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("the %s stream did not finish within %ss" % (self.kind, timeout))
        if self.error:
            raise AssertionError("the %s stream failed: %s" % (self.kind, self.error))
        vdtest.log("stream of %d %s events done" % (self.produced, self.kind))


def outcome_events(env):
    """Every outcome event on the assignments topic, as {request_id: [event, ...]}."""
    return vdtest.outcomes(env.events("assignments"))


def wait_all_outcomes(env, rids, timeout=90.0):
    """Waits until every request id in rids has at least one outcome; returns outcome_events."""
    want = set(rids)
    last = {}

    def done():
        last["ev"] = outcome_events(env)
        missing = want - set(last["ev"])
        return not missing or None

    try:
        env.wait_for(done, timeout=timeout, interval=1.0, what="an outcome for every request")
    except AssertionError:
        missing = sorted(want - set(last.get("ev", {})))
        raise AssertionError("%d of %d requests have no outcome, e.g. %s"
                             % (len(missing), len(want), missing[:10]))
    return last["ev"]


def stats_line(daemon):
    """The counters of the daemon's last `stats:` log line, as {name: number}."""
    recs = daemon.find_log(msg="stats: ")
    assert recs, "no stats line in the log of %s" % daemon.name
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", recs[-1]["msg"])}


def config_line(daemon, key, value=None):
    """The 1-based line of `key = value` (or of the line `key` when value is None) in the
    daemon's written config file."""
    want = key if value is None else "%s = %s" % (key, value)
    with open(daemon.config_path) as f:
        for n, line in enumerate(f, 1):
            if line.strip() == want:
                return n
    raise AssertionError("%r is not in %s" % (want, daemon.config_path))


def run_binary(daemon, *args):
    """Runs the daemon binary (behind VD_DAEMON_WRAPPER, if set) with exactly these arguments,
    without the harness's -c FILE; returns (exit status, stdout, stderr)."""
    argv = daemon.argv()
    i = argv.index("-c")
    argv = argv[:i] + list(args)
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=30 * vdtest.TIMEOUT_SCALE)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------
# 1. --check-config and the command line

def _offline_daemon(config=None):
    """A daemon that is never started: its config file and argv, for --check-config."""
    return vdtest.Daemon(None, None, config, start=False)


def _expect_bad(daemon, key, value, *needles, at=None):
    """Sets key = value, runs --check-config, and checks exit 2 with the file, the line of
    that key (or the line `at`) and each needle in the message. Returns the message."""
    daemon.config[key] = value
    try:
        rc, text = daemon.check_config()
        name = key.split(".", 1)[1]
        line = config_line(daemon, at) if at else config_line(daemon, name, value)
    finally:
        del daemon.config[key]
    vdtest.log("%s = %s -> %d: %s" % (key, value, rc, text.strip()))
    assert rc == 2, "%s = %s: exit %d, expected 2: %s" % (key, value, rc, text)
    where = "%s:%d" % (daemon.config_path, line)
    assert where in text, "%s = %s: message does not name %s: %s" % (key, value, where, text)
    for needle in needles:
        assert needle in text, "%s = %s: %r missing from the message: %s" % (
            key, value, needle, text)
    return text


def test_check_config():
    d = _offline_daemon()
    rc, text = d.check_config()
    assert rc == 0, "a good config exits %d: %s" % (rc, text)
    assert "configuration ok" in text, text

    # The example config shipped with the project is itself valid.
    example = os.path.join(vdtest.SOURCE, "config", "vdispatch.conf")
    rc, out, err = run_binary(d, "-c", example, "--check-config")
    assert rc == 0, "config/vdispatch.conf exits %d: %s%s" % (rc, out, err)

    _expect_bad(d, "matching.candidates", "eight", "matching.candidates", "not an integer")
    _expect_bad(d, "redis.port", "70000", "redis.port", "out of range")
    _expect_bad(d, "matching.radius", "100", "matching.radius", "unknown key")
    # An unknown section is reported on its header line, by name.
    _expect_bad(d, "cache.size", "1", "[cache]", "unknown section", at="[cache]")
    _expect_bad(d, "log.level", "loud", "log.level", "'loud'", "debug|info|warn|error")

    # librdkafka refuses the property: its own words, and where the property came from.
    text = _expect_bad(d, "kafka.consumer.no.such.property", "1",
                       "No such configuration property", "consumer.no.such.property")
    assert "no.such.property" in text

    # A property the delivery guarantees rest on cannot be changed.
    d.config["kafka.producer.acks"] = 1
    rc, text = d.check_config()
    del d.config["kafka.producer.acks"]
    vdtest.log("producer.acks = 1 -> %d: %s" % (rc, text.strip()))
    assert rc == 2, "producer.acks = 1: exit %d: %s" % (rc, text)
    assert "acks" in text and "all" in text, text
    d.config["kafka.consumer.enable.auto.offset.store"] = "true"
    rc, text = d.check_config()
    del d.config["kafka.consumer.enable.auto.offset.store"]
    assert rc == 2 and "enable.auto.offset.store" in text, "auto.offset.store: %d %s" % (rc, text)
    # ... while an ordinary one passes through.
    d.config["kafka.consumer.fetch.wait.max.ms"] = 50
    rc, text = d.check_config()
    del d.config["kafka.consumer.fetch.wait.max.ms"]
    assert rc == 0, "consumer.fetch.wait.max.ms = 50: exit %d: %s" % (rc, text)

    # --set: named as the origin of a bad value, and it wins over the file.
    rc, text = d.check_config("--set", "matching.radius_max_m=abc")
    vdtest.log("--set matching.radius_max_m=abc -> %d: %s" % (rc, text.strip()))
    assert rc == 2 and "--set" in text and "matching.radius_max_m" in text and "abc" in text, text
    d.config["matching.candidates"] = "eight"
    rc, text = d.check_config("--set", "matching.candidates=6")
    del d.config["matching.candidates"]
    assert rc == 2, "a bad file value is an error even when --set overrides it later: %s" % text
    rc, text = d.check_config("--set", "log.level=warn", "--set", "matching.candidates=6")
    assert rc == 0, "good --set values: exit %d: %s" % (rc, text)
    rc, text = d.check_config("--set", "nosuch.key=1")
    assert rc == 2 and "--set" in text and "nosuch" in text, text
    d.config["matching.candidates"] = 7
    rc, out, err = run_binary(d, "-c", d.config_path, "--set", "matching.candidates=6",
                              "--dump-config")
    del d.config["matching.candidates"]
    assert rc == 0 and "candidates = 6" in out, "--set did not win: %d %r" % (rc, out)

    # Keys that are fine alone but not together.
    d.config["matching.radius_start_m"] = 6000
    d.config["matching.radius_max_m"] = 5000
    rc, text = d.check_config()
    del d.config["matching.radius_start_m"], d.config["matching.radius_max_m"]
    vdtest.log("radius_start_m 6000 > radius_max_m 5000 -> %d: %s" % (rc, text.strip()))
    assert rc == 2 and "radius_start_m" in text and "radius_max_m" in text, text
    rc, text = d.check_config("--set", "matching.radius_start_m=6000")
    assert rc == 2 and "radius_start_m" in text, "--set start > max: %d %s" % (rc, text)

    # Version, help, usage errors.
    rc, out, err = run_binary(d, "--version")
    assert rc == 0 and re.match(r"vdispatchd \S+", out), "--version: %d %r %r" % (rc, out, err)
    rc, out, err = run_binary(d, "--help")
    assert rc == 0 and "usage:" in out and "--check-config" in out, "--help: %d %r" % (rc, out)
    rc, out, err = run_binary(d, "--no-such-option")
    assert rc == 2 and "usage:" in err, "unknown option: %d %r %r" % (rc, out, err)
    rc, out, err = run_binary(d, "-c", d.config_path, "stray-argument")
    assert rc == 2, "a stray argument: exit %d" % rc
    # --dump-config shows the effective values with secrets masked.
    rc, out, err = run_binary(d, "-c", d.config_path, "--set", "redis.password=s3cret",
                              "--set", "kafka.consumer.sasl.password=s3cret", "--dump-config")
    assert rc == 0 and "s3cret" not in out, "--dump-config: %d %r" % (rc, out)
    assert "password = ***" in out and "sasl.password = ***" in out, out
    missing = os.path.join(d.dir, "missing.conf")
    rc, out, err = run_binary(d, "-c", missing, "--check-config")
    assert rc == 2 and missing in err, "a missing file: %d %r" % (rc, err)


def test_check_config_locked_property_line():
    """The contract: a bad config exits 2 "with the file line and key named". A refused
    librdkafka property that librdkafka itself accepts (a locked one) is still a line of the
    file, so the message must say which."""
    d = _offline_daemon({"kafka.producer.acks": 1})
    rc, text = d.check_config()
    line = config_line(d, "producer.acks", "1")
    vdtest.log("producer.acks = 1 -> %d: %s" % (rc, text.strip()))
    assert rc == 2, "exit %d: %s" % (rc, text)
    where = "%s:%d" % (d.config_path, line)
    assert where in text, "the message does not name %s: %s" % (where, text.strip())


# --------------------------------------------------------------------------------------------
# 2. Graceful SIGTERM while requests flow; the restart republishes nothing

def test_sigterm_graceful():
    n = 300
    with vdtest.Env() as env:
        listen, port = listen_config()
        d = env.daemon({"http.listen": listen, "log.level": "info"})
        load_volunteers(env, volunteers(n))
        reqs = requests(n, spread_m=900)
        rids = [e["data"]["request_id"] for e in reqs]
        stream = Stream(env, "requests", reqs, batch=10, pause_s=0.05)

        # Stop while outcomes are still arriving.
        env.wait_for(lambda: metrics(port)["vd_matches_total"] >= 60, timeout=60,
                     interval=0.02, what="60 outcomes")
        before = metrics(port)["vd_matches_total"]
        t0 = time.monotonic()
        rc = d.stop(signal.SIGTERM, timeout=STOP_BUDGET_S + 5)
        took = time.monotonic() - t0
        assert rc == 0, "exit status %s after SIGTERM" % rc
        assert took <= STOP_BUDGET_S * vdtest.TIMEOUT_SCALE, "stopped after %.1fs" % took
        assert d.log_lines()[-1].get("msg") == "stopped", "last log line: %s" % d.log_lines()[-1]
        assert not d.find_log(msg="stopping with work in flight"), "work was cut short"
        assert d.find_log(msg="kafka: consumer closed"), "no clean group exit in the log"
        first = stats_line(d)
        vdtest.log("SIGTERM at %d outcomes; stopped in %.2fs; first run: %s"
                   % (before, took, first))
        stream.wait()

        # What the first run published: one outcome per request it finished.
        after_first = outcome_events(env)
        done_first = set(after_first)
        assert done_first, "the first run published nothing"
        assert len(done_first) < n, "all %d requests were done before the stop" % n
        assert int(first["confirmed"] + first["unmatched"]) == len(done_first), (
            "first run counted %s outcomes, %d on the topic" % (first, len(done_first)))
        for rid, evs in after_first.items():
            assert len(evs) == 1, "%s: %d outcome events before the restart" % (rid, len(evs))

        # Restart with the same group: it resumes after the committed offsets.
        d.start()
        d.wait_ready(60)
        wait_all_outcomes(env, rids)
        time.sleep(2)  # anything republished late would show up now
        m = metrics(port)
        evs = outcome_events(env)
        vdtest.log("second run: consumed %d, replays %d, matches %d"
                   % (m["vd_consumed_total"], m["vd_replays_total"], m["vd_matches_total"]))
        for rid in rids:
            ids = {e["id"] for e in evs[rid]}
            assert len(ids) == 1, "%s has outcome ids %s" % (rid, sorted(ids))
            assert len(evs[rid]) == 1, "%s: outcome %s published %d times" % (
                rid, evs[rid][0]["id"], len(evs[rid]))
        assert m["vd_replays_total"] == 0, (
            "the restart replayed %d requests" % m["vd_replays_total"])
        assert m["vd_consumed_total"] == n - len(done_first), (
            "the restart consumed %d messages; %d requests were not finished by the first run"
            % (m["vd_consumed_total"], n - len(done_first)))
        for kind in ("assignments", "notifications"):
            msgs = env.events(kind)
            ids = [e["id"] for e in msgs]
            assert len(ids) == len(set(ids)), "%s: %d messages, %d distinct ids" % (
                kind, len(ids), len(set(ids)))
        assert not env.events("deadletter"), "dead letters: %s" % env.events("deadletter")[:3]
        assert d.stop() == 0


# --------------------------------------------------------------------------------------------
# 3. SIGTERM with Kafka gone

def _sigterm_timed(d, port=None):
    """SIGTERM; returns (exit status, seconds to exit). With port, /readyz must answer 503
    "stopping" while the stop runs. A daemon still running after 30 s is killed (exit
    status None)."""
    t0 = time.monotonic()
    d.send_signal(signal.SIGTERM)
    if port:
        answer = None
        while d.running() and time.monotonic() - t0 < 2:
            try:
                answer = http_get(port, "/readyz", timeout=1)
                if answer[2].strip() == "stopping":
                    break
            except OSError:
                pass
            time.sleep(0.02)
        vdtest.log("/readyz while stopping: %s" % (answer,))
        assert answer and answer[0] == 503 and answer[2].strip() == "stopping", (
            "/readyz while stopping: %s" % (answer,))
    try:
        d.proc.wait(30 * vdtest.TIMEOUT_SCALE)
        rc = d.proc.returncode
    except subprocess.TimeoutExpired:
        vdtest.log("no exit within 30s; killing")
        d.kill()
        rc = None
    took = time.monotonic() - t0
    vdtest.log("SIGTERM: exit %s after %.2fs" % (rc, took))
    return rc, took


def _recover_all(env, d, reqs):
    """Brokers back, a new run: every request has one outcome (the same one if repeated)."""
    env.kafka.command("up all")
    d.start()
    d.wait_ready(60)
    evs = wait_all_outcomes(env, [e["data"]["request_id"] for e in reqs])
    for rid, group in evs.items():
        ids = {e["id"] for e in group}
        vols = {e["data"].get("volunteer_id") for e in group}
        assert len(ids) == 1 and len(vols) == 1, "%s: outcomes disagree: %s" % (rid, group)
    assert d.stop() == 0
    return evs


def test_sigterm_kafka_down():
    """Every output acknowledged, then all brokers down, then SIGTERM: committing and leaving
    the group cannot succeed, and must not hold up the stop."""
    with vdtest.Env() as env:
        listen, port = listen_config()
        d = env.daemon({"http.listen": listen, "log.level": "info"})
        load_volunteers(env, volunteers(100))
        reqs = requests(40, spread_m=500)
        env.send("requests", reqs)
        env.wait_for(lambda: metrics(port)["vd_matches_total"] == 40, timeout=30,
                     what="40 outcomes")
        env.wait_for(lambda: metrics(port)["vd_outputs_unacked"] == 0, timeout=10,
                     what="every output acknowledged")
        env.kafka.command("down all")
        time.sleep(0.5)
        rc, took = _sigterm_timed(d, port)
        assert d.find_log(msg="stopped"), "no 'stopped' line"
        _recover_all(env, d, reqs)
        assert rc == 0, "exit status %s after SIGTERM (the contract: 0)" % rc
        assert took <= STOP_BUDGET_S * vdtest.TIMEOUT_SCALE, "stopped after %.1fs" % took


def test_sigterm_kafka_down_outputs_unacked():
    """Outputs produced but not acknowledged when every broker goes away, then SIGTERM: the
    daemon gives up on them (their inputs stay uncommitted) and exits within the budget."""
    with vdtest.Env() as env:
        listen, port = listen_config()
        d = env.daemon({"http.listen": listen, "log.level": "info"})
        load_volunteers(env, volunteers(100))
        early = requests(40, prefix="early", spread_m=500)
        env.send("requests", early)
        env.wait_for(lambda: metrics(port)["vd_matches_total"] == 40, timeout=30,
                     what="40 outcomes")

        # Slow brokers: the next outputs stay unacknowledged for a while ...
        late = requests(20, prefix="late", seed=2, spread_m=500)
        env.kafka.command("rtt all 1500")
        job = env.kafka.produce_start("requests", [(vdtest.event_key("requests", e), e)
                                                   for e in late])
        env.wait_for(lambda: metrics(port)["vd_matches_total"] == 60, timeout=60,
                     interval=0.05, what="the late requests matched")
        m = metrics(port)
        vdtest.log("consumed %d, outputs unacknowledged %d" % (m["vd_consumed_total"],
                                                               m["vd_outputs_unacked"]))
        assert m["vd_outputs_unacked"] > 0, "every output was already acknowledged"
        # ... and then no broker at all.
        env.kafka.command("down all")
        rc, took = _sigterm_timed(d)
        assert d.find_log(msg="stopped"), "no 'stopped' line"
        env.kafka.command("rtt all 0")
        job.wait(timeout=60)
        _recover_all(env, d, early + late)
        assert rc == 0, "exit status %s after SIGTERM (the contract: 0)" % rc
        assert took <= STOP_BUDGET_S * vdtest.TIMEOUT_SCALE, "stopped after %.1fs" % took


def test_sigterm_redis_down():
    """SIGTERM while Redis is down and requests wait for it (intake paused, those consumed
    before the pause in memory): they stay uncommitted, the stop is quick and clean, and the
    next run (Redis back) serves them."""
    with vdtest.Env(redis_args=("--appendonly", "yes")) as env:
        listen, port = listen_config()
        d = env.daemon({"http.listen": listen, "log.level": "info"})
        load_volunteers(env, volunteers(60))
        reqs = requests(30, spread_m=300)
        env.redis.kill()
        env.wait_for(lambda: metrics(port)["vd_intake_paused"] == 1, timeout=30,
                     what="intake paused while Redis is down")
        env.send("requests", reqs)
        time.sleep(1)
        vdtest.log("%d requests in memory, waiting for Redis" % metrics(port)["vd_jobs_in_memory"])
        rc, took = _sigterm_timed(d, port)
        assert rc == 0, "exit status %s" % rc
        assert took <= STOP_BUDGET_S * vdtest.TIMEOUT_SCALE, "stopped after %.1fs" % took
        assert d.find_log(msg="stopped")
        env.redis.restart(keep_data=True)
        d.start()
        d.wait_ready(60)
        evs = wait_all_outcomes(env, [e["data"]["request_id"] for e in reqs])
        assert all(len(g) == 1 for g in evs.values()), "an outcome was published twice"
        assert metrics(port)["vd_confirmed_total"] == 30
        assert d.stop() == 0


# --------------------------------------------------------------------------------------------
# 4. SIGHUP reopens the log file

def test_sighup_reopens_log():
    with vdtest.Env() as env:
        d = env.daemon(start=False, wait=False)
        path = os.path.join(d.dir, "d.log")
        d.config["log.file"] = path
        d.start()
        env.wait_for(lambda: any(str(r.get("msg", "")).startswith("ready")
                                 for r in json_records(path)),
                     timeout=30 * vdtest.TIMEOUT_SCALE, what="ready in d.log")
        assert not d.log_lines(), "log lines on stderr with log.file set: %s" % d.log_lines()[:3]

        rotated = path + ".1"
        os.rename(path, rotated)
        n_old = len(json_records(rotated))
        d.send_signal(signal.SIGHUP)
        env.wait_for(lambda: os.path.exists(path), timeout=5, what="a new d.log")
        env.wait_for(lambda: any(r.get("msg") == "log reopened" for r in json_records(path)),
                     timeout=5, what="'log reopened' in the new d.log")
        assert d.running(), "SIGHUP stopped the daemon"

        # New work is logged to the new file only.
        env.send("volunteers", [vdtest.volunteer_available("vol-hup", *vdtest.HOHHOT)])
        env.wait_for(lambda: any("vol-hup" in str(r.get("msg")) for r in json_records(path)),
                     timeout=20, what="a line about vol-hup in the new d.log")
        old = json_records(rotated)
        assert not any("vol-hup" in str(r.get("msg")) for r in old), "written to the old file"
        vdtest.log("rotated file: %d lines before SIGHUP, %d now" % (n_old, len(old)))

        # A second rotation works the same way.
        os.rename(path, path + ".2")
        d.send_signal(signal.SIGHUP)
        env.wait_for(lambda: any(r.get("msg") == "log reopened" for r in json_records(path)),
                     timeout=5, what="'log reopened' after the second rotation")
        assert d.stop() == 0
        assert json_records(path)[-1].get("msg") == "stopped", json_records(path)[-3:]


# --------------------------------------------------------------------------------------------
# 5. HTTP: /healthz, /readyz, /metrics

def test_http_endpoints():
    with vdtest.Env() as env:
        listen, port = listen_config()
        d = env.daemon({"http.listen": listen}, wait=False)

        def answers():
            try:
                return http_get(port, "/healthz")[0] == 200
            except OSError:
                return False
        env.wait_for(answers, timeout=10 * vdtest.TIMEOUT_SCALE, interval=0.02,
                     what="/healthz")
        status, _, body = http_get(port, "/readyz")
        vdtest.log("/readyz before the group join: %d %r" % (status, body))
        assert status == 503 and body.strip(), "/readyz before ready: %d %r" % (status, body)
        d.wait_ready(30)
        env.wait_for(lambda: http_get(port, "/readyz")[0] == 200, timeout=5, what="/readyz 200")

        status, ctype, body = http_get(port, "/healthz")
        assert status == 200 and body == "ok\n", (status, body)
        status, ctype, body = http_get(port, "/metrics")
        assert status == 200, status
        assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, ctype
        assert "# TYPE vd_confirmed_total counter" in body, body[:500]
        assert "# HELP vd_confirmed_total " in body
        m = parse_metrics(body)
        assert m["vd_confirmed_total"] == 0 and m["vd_redis_up"] == 1, m
        for line in body.splitlines():
            assert line.startswith("#") or re.match(
                r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? -?[0-9.e+Inf-]+$", line), (
                "not a Prometheus sample line: %r" % line)

        env.send("volunteers", [vdtest.volunteer_available("vol-http", *vdtest.HOHHOT)])
        # Nothing orders two topics: the request goes only once the volunteer is pooled.
        env.wait_for(lambda: env.redis.cmd("ZSCORE", "vd:pool/city", "vol-http") is not None,
                     timeout=20, what="vol-http pooled")
        env.send("requests", [vdtest.request_created("req-http", *vdtest.offset_m(
            vdtest.HOHHOT_LAT, vdtest.HOHHOT_LON, 120, 0))])
        env.wait_for(lambda: metrics(port)["vd_confirmed_total"] == 1, timeout=20,
                     what="vd_confirmed_total = 1")
        m = metrics(port)
        assert m['vd_inputs_total{type="vd.request.created"}'] == 1, m
        assert m["vd_matches_total"] == 1 and m["vd_consumed_total"] >= 2, m

        for path in ("/nope", "/metrics/x", "/healthz2", "/"):
            status, _, body = http_get(port, path)
            assert status == 404, "%s: %d" % (path, status)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/metrics", body="x")
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 405 and "GET" in (resp.getheader("Allow") or ""), resp.status

        # Redis down: not ready (with the reason), still alive.
        env.redis.kill()
        status, _, body = env.wait_for(
            lambda: (lambda a: a if a[0] == 503 else None)(http_get(port, "/readyz")),
            timeout=10, what="/readyz 503 while Redis is down")
        vdtest.log("/readyz with Redis down: %d %r" % (status, body))
        assert "redis" in body.lower(), body
        assert http_get(port, "/healthz")[0] == 200
        assert metrics(port)["vd_redis_up"] == 0
        env.redis.restart()
        env.wait_for(lambda: http_get(port, "/readyz")[0] == 200, timeout=20,
                     what="/readyz 200 after Redis is back")
        m = metrics(port)
        assert m["vd_redis_up"] == 1 and m["vd_redis_reconnects_total"] >= 1, m
        assert d.running()
        assert d.stop(signal.SIGINT) == 0, "SIGINT: exit %s" % d.returncode
        assert d.log_lines()[-1].get("msg") == "stopped"


if __name__ == "__main__":
    vdtest.main(globals())
