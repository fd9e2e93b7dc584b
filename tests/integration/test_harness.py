"""Self-test of the integration harness (vdtest) without the real daemon.

Checks that the Kafka mock, vd-produce, kcat and the RESP client do what the daemon's tests
rely on: exact bytes and keys round-trip, keys stick to partitions, order holds per partition,
a broker outage stalls producing until the broker is back, consumer groups work, Redis GEO
answers at the distances offset_m() places points, and no process outlives its Env."""

import os
import signal
import subprocess
import sys
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402


def _pids_of(env):
    pids = [env.redis.proc.pid, env.kafka.proc.pid]
    pids += [d.proc.pid for d in env.daemons if d.proc]
    return pids


def _assert_gone(pids):
    for pid in pids:
        # Reaped children no longer exist; anything else still running is a leak.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().split(") ", 1)[1].split()[0]
        assert state == "Z", "process %d is still running (state %s)" % (pid, state)


def test_produce_consume_roundtrip():
    big = ("x" * 1023 + "\n") * 70  # 70 KiB
    msgs = []
    for i in range(500):
        key = "req-%04d" % i
        if i == 17:
            value = b""
        elif i == 42:
            value = big.encode()
        elif i == 99:
            value = None
        else:
            value = ('{"n":%d,"zh":"\u547c\u548c\u6d69\u7279"}' % i).encode("utf-8")
        msgs.append((key, value))
    with vdtest.Env() as env:
        pids = _pids_of(env)
        assert env.kafka.produce("vd.requests", msgs) == 500
        got = env.kafka.consume("vd.requests", timeout=30, min_count=500)
        assert len(got) == 500, "consumed %d of 500" % len(got)

        by_key = {m["key"]: m for m in got}
        assert len(by_key) == 500, "duplicate or missing keys"
        for key, value in msgs:
            m = by_key[key]
            assert m["value_bytes"] == value, "value of %s differs" % key
        assert by_key["req-0017"]["value"] == "" and by_key["req-0099"]["value"] is None
        assert len(by_key["req-0042"]["value_bytes"]) == 70 * 1024

        partitions = {m["partition"] for m in got}
        assert partitions == {0, 1, 2, 3}, "partitions used: %s" % sorted(partitions)
        for p in partitions:
            rows = [m for m in got if m["partition"] == p]
            assert [m["offset"] for m in rows] == list(range(len(rows))), "gap in [%d]" % p
            order = [int(m["key"][4:]) for m in rows]
            assert order == sorted(order), "partition %d is out of production order" % p

        # The same keys again land in the same partitions (keyed partitioning is stable).
        again = msgs[:40]
        env.kafka.produce("vd.requests", again)
        got2 = env.kafka.consume("vd.requests", timeout=30, min_count=540)
        assert len(got2) == 540, "consumed %d of 540" % len(got2)
        seen = {}
        for m in got2:
            seen.setdefault(m["key"], set()).add(m["partition"])
        moved = [k for k, ps in seen.items() if len(ps) != 1]
        assert not moved, "keys in several partitions: %s" % moved[:5]
    _assert_gone(pids)


def test_fault_down_up():
    with vdtest.Env() as env:
        k = env.kafka
        assert k.command("leader vd.responses 0 1") == "ok"
        assert k.command("coordinator group vdtest-g 2") == "ok"
        assert k.command("rtt 2 5") == "ok"
        assert k.command("bogus", check=False).startswith("error:")
        assert k.command("down 7", check=False).startswith("error:")
        assert k.command("rtt 2 0") == "ok"

        # Broker 1 down: partition 0 has no reachable leader, so producing cannot finish.
        assert k.command("down 1") == "ok"
        msgs = [("resp-%03d" % i, '{"i":%d}' % i) for i in range(200)]
        job = k.produce_start("vd.responses", msgs)
        time.sleep(3)
        assert not job.done(), "producing finished while the leader of [0] was down"
        t_up = time.monotonic()
        assert k.command("up 1") == "ok"
        assert job.wait(timeout=60) == 200
        vdtest.log("producing completed %.2fs after `up 1`" % (time.monotonic() - t_up))
        got = k.consume("vd.responses", timeout=30, min_count=200)
        assert len(got) == 200, "consumed %d of 200" % len(got)
        assert any(m["partition"] == 0 for m in got), "nothing reached partition 0"

        # Injected produce errors are retried by the idempotent producer: no loss, no dups.
        assert k.command("error Produce NOT_LEADER_FOR_PARTITION 3") == "ok"
        assert k.command("error 0 _TRANSPORT 1") == "ok"
        k.produce("vd.responses", [("after-%d" % i, "v%d" % i) for i in range(10)])
        got = k.consume("vd.responses", timeout=30, min_count=210)
        keys = [m["key"] for m in got]
        assert len(keys) == 210 and len(set(keys)) == 210, "%d messages, %d distinct" % (
            len(keys), len(set(keys)))
        assert k.command("clear-errors Produce") == "ok"
        topics = dict(w.split(":") for w in k.command("topics").split()[1:])
        for name, parts in vdtest.DEFAULT_TOPICS.items():
            assert topics.get(name) == str(parts), "topic %s: %s" % (name, topics.get(name))


def test_consumer_group():
    with vdtest.Env() as env:
        env.kafka.produce("vd.volunteers", [("v%d" % i, "x") for i in range(20)])
        # session.timeout.ms as the daemon gets it (vdtest.CONSUMER_DEFAULTS): with the
        # default 45 s the second member below would wait ~45 s for the group.
        argv = ["kcat", "-b", env.kafka.bootstrap, "-G", "vdtest-group",
                "-X", "auto.offset.reset=earliest", "-X", "session.timeout.ms=6000",
                "-X", "heartbeat.interval.ms=1000", "-e", "-q", "-f", "%k\n", "vd.volunteers"]
        t0 = time.monotonic()
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        first = time.monotonic() - t0
        assert p.returncode == 0, p.stderr.decode()
        keys = p.stdout.decode().split()
        assert sorted(keys) == sorted("v%d" % i for i in range(20)), keys
        # The group committed its offsets: a second member of the group reads nothing old.
        env.kafka.produce("vd.volunteers", [("late", "y")])
        t1 = time.monotonic()
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr.decode()
        assert p.stdout.decode().split() == ["late"], p.stdout
        second = time.monotonic() - t1
        vdtest.log("kcat -G: first run %.2fs, second %.2fs" % (first, second))
        assert second < 20, "re-joining the group took %.1fs" % second


def test_redis_roundtrip():
    with vdtest.Env() as env:
        r = env.redis
        assert r.cmd("SET", "vd:test", "\u547c\u548c\u6d69\u7279") == "OK"
        assert r.cmd("GET", "vd:test") == "\u547c\u548c\u6d69\u7279"
        assert r.cmd_bytes("GET", "vd:test") == "\u547c\u548c\u6d69\u7279".encode()
        assert r.cmd("GET", "vd:missing") is None
        assert r.cmd("INCRBY", "vd:n", 41) == 41 and r.cmd("INCR", "vd:n") == 42
        try:
            r.cmd("NOSUCHCOMMAND")
        except vdtest.RedisError as e:
            assert "unknown command" in str(e).lower(), e
        else:
            raise AssertionError("an error reply did not raise")

        lat0, lon0 = vdtest.HOHHOT
        places = {"n100": (100, 0), "e400": (0, 400), "sw900": (-636.4, -636.4), "w3000": (0, -3000)}
        args = ["GEOADD", "vd:geo"]
        for name, (north, east) in places.items():
            lat, lon = vdtest.offset_m(lat0, lon0, north, east)
            args += [lon, lat, name]
        assert r.cmd(*args) == 4
        near = r.cmd("GEOSEARCH", "vd:geo", "FROMLONLAT", lon0, lat0, "BYRADIUS", 1000, "m",
                     "ASC", "WITHDIST")
        assert [n for n, _ in near] == ["n100", "e400", "sw900"], near
        for name, dist in near:
            north, east = places[name]
            want = (north ** 2 + east ** 2) ** 0.5
            assert abs(float(dist) - want) < 1.0, "%s at %s m, placed at %.1f" % (name, dist, want)
        lat, lon = vdtest.offset_m(lat0, lon0, 0, -3000)
        assert abs(vdtest.distance_m(lat0, lon0, lat, lon) - 3000) < 0.01

        replies = r.pipeline([("SET", "p%d" % i, i) for i in range(100)] + [("GET", "p99")])
        assert replies[:100] == ["OK"] * 100 and replies[100] == "99"

        r.restart(keep_data=True)
        assert r.cmd("GET", "vd:n") == "42", "SAVE + restart lost data"
        r.kill()
        try:
            r.cmd("PING")
        except OSError:
            pass
        else:
            raise AssertionError("PING answered after kill")
        r.restart()
        assert r.cmd("GET", "vd:n") is None, "restart without keep_data kept data"
        assert r.cmd("PING") == "PONG"


def test_events_and_keys():
    lat, lon = vdtest.offset_m(*vdtest.HOHHOT, 250, -120)
    evs = [
        vdtest.volunteer_available("vol-1", lat, lon, skills=("first_aid",), languages=("zh", "mn"),
                                   max_tasks_per_day=2),
        vdtest.volunteer_location("vol-1", *vdtest.HOHHOT),
        vdtest.volunteer_unavailable("vol-2"),
    ]
    reqs = [
        vdtest.request_created("req-1", lat, lon, priority="urgent",
                               vulnerability={"age": 81, "lives_alone": True}),
        vdtest.request_cancelled("req-2"),
    ]
    resps = [
        vdtest.offer_accepted("req-1", "vol-1", "off-1"),
        vdtest.offer_declined("req-3", "vol-4", "off-2"),
        vdtest.task_completed("req-1", "vol-1"),
    ]
    ids = [e["id"] for e in evs + reqs + resps]
    assert len(set(ids)) == len(ids), "event ids repeat"
    for e in evs + reqs + resps:
        assert e["specversion"] == "1.0" and e["datacontenttype"] == "application/json"
        assert e["type"].startswith("vd.") and e["source"] and isinstance(e["data"], dict)
        time.strptime(e["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert reqs[0]["data"]["priority"] == "urgent" and reqs[0]["data"]["service"] == "home_visit"
    assert evs[0]["data"]["languages"] == ["zh", "mn"] and evs[0]["data"]["max_tasks_per_day"] == 2

    with vdtest.Env() as env:
        assert vdtest.send(env.kafka, "volunteers", evs) == 3
        assert env.send("requests", reqs + [(None, b"\xff not json")]) == 3
        assert env.send("responses", resps) == 3
        vol = env.kafka.consume("volunteers", min_count=3)
        assert sorted(m["key"] for m in vol) == ["vol-1", "vol-1", "vol-2"]
        req = env.kafka.consume("requests", min_count=3)
        assert sorted(str(m["key"]) for m in req) == ["None", "req-1", "req-2"]
        resp = env.events("responses", min_count=3)
        assert sorted(e["id"] for e in resp) == sorted(e["id"] for e in resps)
        try:
            env.events("requests")
        except vdtest.VdError as e:
            assert "not JSON" in str(e)
        else:
            raise AssertionError("a non-JSON value parsed")


# A stand-in for vdispatchd: checks its config, logs JSON lines, is ready, stops on SIGTERM.
STAND_IN = textwrap.dedent(r'''
    import configparser, json, signal, sys, time
    def log(level, msg, **kw):
        rec = {"ts": time.time(), "level": level, "msg": msg}
        rec.update(kw)
        print(json.dumps(rec), file=sys.stderr, flush=True)
    cfg = configparser.ConfigParser(inline_comment_prefixes=(";",))
    cfg.read(sys.argv[sys.argv.index("-c") + 1])
    if "--check-config" in sys.argv:
        sys.exit(0 if cfg.get("matching", "radius_start_m", fallback="500").isdigit() else 2)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    log("info", "starting", brokers=cfg["kafka"]["brokers"], port=cfg["redis"]["port"],
        requests=cfg["kafka"]["topic.requests"], http=cfg["http"]["listen"],
        offer_timeout_ms=cfg.get("matching", "offer_timeout_ms", fallback=None))
    print("not json: a stray line", file=sys.stderr, flush=True)
    log("warn", "redis not ready yet, retrying")
    time.sleep(0.5)
    log("info", "ready: consuming 12 partitions")
    while not stop:
        time.sleep(0.05)
    log("info", "stopped")
    sys.exit(0)
''')


def test_daemon_stand_in():
    with vdtest.Env() as env:
        script = os.path.join(env.kafka.dir, "stand_in.py")
        with open(script, "w") as f:
            f.write(STAND_IN)
        binary = [sys.executable, script]
        d = env.daemon({"matching.offer_timeout_ms": 0, "kafka.consumer.fetch.wait.max.ms": 50,
                        "kafka.consumer.heartbeat.interval.ms": None}, binary=binary)
        assert d.running() and d.returncode is None
        first = d.log_lines()[0]
        assert first["brokers"] == env.kafka.bootstrap and first["port"] == str(env.redis.port)
        assert first["requests"] == "vd.requests" and first["http"] == ""
        assert first["offer_timeout_ms"] == "0"
        text = open(d.config_path).read()
        assert "consumer.fetch.wait.max.ms = 50" in text and "[log]\nlevel = debug" in text
        assert "consumer.session.timeout.ms = 6000" in text and "heartbeat" not in text
        assert d.find_log(msg="retrying", level="warn")
        assert d.stop() == 0 and d.returncode == 0
        assert d.log_lines()[-1]["msg"] == "stopped"

        d.config["matching.radius_start_m"] = "wide"
        assert d.check_config()[0] == 2
        d.config["matching.radius_start_m"] = 300
        assert d.check_config()[0] == 0

        d2 = env.daemon(binary=binary, name="crashy")
        assert d2.kill() == -signal.SIGKILL
        d2.start()
        d2.wait_ready(10)
        assert d2.log_path.endswith("daemon-2.log")

        d3 = env.daemon(binary=[sys.executable, "-c", "import sys; sys.exit(3)"], wait=False)
        try:
            d3.wait_ready(10)
        except vdtest.VdError as e:
            assert "exited with 3" in str(e), e
        else:
            raise AssertionError("wait_ready passed for a daemon that exited")
        pids = _pids_of(env)
    _assert_gone(pids)


def test_sanitizer_report_fails_the_test():
    """A daemon whose stderr carries a sanitizer report makes its Env fail on the way out."""
    report = ("import sys; print('==1==ERROR: LeakSanitizer: detected memory leaks', "
              "file=sys.stderr); sys.exit(0)")
    env = vdtest.Env()
    try:
        d = env.daemon(binary=[sys.executable, "-c", report], wait=False)
        env.wait_for(lambda: d.proc.poll() is not None, timeout=10, what="the stand-in exits")
        assert d.sanitizer_reports(), d.log_text()
    finally:
        try:
            env.close()
        except vdtest.VdError as e:
            assert "sanitizer reports" in str(e) and "LeakSanitizer" in str(e), e
        else:
            raise AssertionError("a sanitizer report went unnoticed")
        vdtest._rmtree(d.dir)


if __name__ == "__main__":
    vdtest.main(globals())
