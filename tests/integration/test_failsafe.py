"""Failing safe: Redis up but refusing work, the Function library's versions, fatal errors.

Every Redis state that refuses work and passes is an outage, never a verdict on the input.
Each test streams requests at a pool of volunteers, puts the real redis-server into the state
mid-stream, holds it, takes it out again and checks on everything that came out: every
request has its outcome, nothing went to the dead-letter topic, the daemon said so once in its
log, /readyz and the metrics said why meanwhile, and Redis is consistent afterwards.

  test_refusals_under_stream   NOREPLICAS, OOM, READONLY, MASTERDOWN, BUSY, LOADING, the
                               library flushed (FUNCTION FLUSH), MISCONF
  test_cluster_refusals        a two-node Redis Cluster, all keys in one slot by the prefix's
                               hash tag: CLUSTERDOWN (slot unassigned), TRYAGAIN (slot migrating)
  test_library_versions        another version's library is left alone and runs side by side;
                               the same version with other code stops the daemon (exit 1)
  test_redis_acl_forbids       an ACL without the daemon's keys: exit 1, /healthz 503 first
  test_kafka_fatal             the idempotent producer's fatal error: exit 1, nothing lost

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_failsafe.py [TEST_NAME ...]
"""

import os
import re
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402
from test_faults import check_outcomes, check_redis  # noqa: E402
from test_ops import Stream, load_volunteers, requests, volunteers, wait_all_outcomes  # noqa: E402
from vdtest import http_get, listen_config, metrics  # noqa: E402

SCALE = vdtest.TIMEOUT_SCALE
LUA = os.path.join(vdtest.SOURCE, "daemon", "vdispatch.lua")


def library():
    """(version, text) of the daemon's Function library."""
    with open(LUA) as f:
        text = f.read()
    return int(re.match(r"#!lua name=vdispatch_(\d+)", text).group(1)), text


def refusals(port):
    """{code: episodes} from vd_redis_refusals_total."""
    out = {}
    for k, v in metrics(port).items():
        m = re.match(r'vd_redis_refusals_total\{code="(\w+)"\}', k)
        if m:
            out[m.group(1)] = v
    return out


def readyz(port):
    try:
        return http_get(port, "/readyz")
    except OSError:
        return (0, "", "")


def _rids(evs):
    return [e["data"]["request_id"] for e in evs]


def outage_under_stream(env, d, port, name, enter, leave, codes, reqs, hold_s=2.0):
    """Streams reqs, enters the state once some are matched, checks /readyz and the intake
    while it lasts, leaves it, and checks that every request got its outcome, that the refusal
    was said once in the log and counted once under one of codes. Returns the /readyz text
    seen during the state."""
    rids = _rids(reqs)
    marks = len(d.find_log(msg="refuses work"))
    before = refusals(port)
    base = metrics(port)["vd_matches_total"]
    stream = Stream(env, "requests", reqs, batch=5, pause_s=0.2)
    env.wait_for(lambda: metrics(port)["vd_matches_total"] >= base + 10, timeout=30 * SCALE,
                 interval=0.01, what="%s: 10 outcomes before the state" % name)
    vdtest.log("%s: entering" % name)
    enter()
    try:
        status, _, why = env.wait_for(
            lambda: (lambda r: r if r[0] == 503 and "refusing" in r[2] else None)(readyz(port)),
            timeout=20 * SCALE, interval=0.05, what="%s: /readyz says redis refuses" % name)
        vdtest.log("%s: /readyz %d %r" % (name, status, why.strip()))
        env.wait_for(lambda: metrics(port)["vd_intake_paused"] == 1, timeout=5 * SCALE,
                     what="%s: intake paused" % name)
        assert metrics(port)["vd_redis_refusing"] == 1
        time.sleep(hold_s)
    finally:
        vdtest.log("%s: leaving" % name)
        leave()
    stream.wait()
    wait_all_outcomes(env, rids, timeout=90 * SCALE)
    env.wait_for(lambda: readyz(port)[0] == 200, timeout=20 * SCALE, what="%s: ready again" % name)
    said = d.find_log(msg="refuses work")[marks:]
    assert said, "%s: the refusal was never said in the log" % name
    # The end is said once the daemon has worked for a while (a refusal that comes back at
    # once is the same episode): the next state must not begin before it.
    began = said[0]["ts"]
    env.wait_for(lambda: any(r["ts"] > began for r in d.find_log(msg="takes work again")),
                 timeout=20 * SCALE, what="%s: the end of the refusal said" % name)
    said = d.find_log(msg="refuses work")[marks:]
    assert len(said) == 1, "%s: the refusal was said %d times: %s" % (
        name, len(said), [r["msg"] for r in said])
    after = refusals(port)
    grew = {c: after.get(c, 0) - before.get(c, 0) for c in after if after.get(c, 0) != before.get(c, 0)}
    assert len(grew) == 1 and list(grew.values()) == [1] and list(grew)[0] in codes, \
        "%s: refusal episodes counted %s, expected one of %s" % (name, grew, codes)
    vdtest.log("%s: %d requests, all with an outcome; said once (%s)" % (name, len(rids), said[0]["msg"][:120]))
    return why


def spin_library(redis, ms):
    """Loads a test library whose function spins for ms (no writes, so FUNCTION KILL works)."""
    redis.cmd("FUNCTION", "LOAD", "REPLACE", "#!lua name=vdtest_busy\n"
              "redis.register_function{function_name='vdtest_spin', flags={'no-writes'},\n"
              "  callback=function(keys, args)\n"
              "    local t = redis.call('TIME'); local t0 = t[1] * 1000 + t[2] / 1000\n"
              "    repeat t = redis.call('TIME') until t[1] * 1000 + t[2] / 1000 - t0 >= tonumber(args[1])\n"
              "    return 'spun' end}\n")


def test_refusals_under_stream():
    data_dir = tempfile.mkdtemp(prefix="vd-redis-data-")
    try:
        with vdtest.Env(redis_args=["--dir", data_dir, "--enable-debug-command", "local"]) as env:
            listen, port = listen_config()
            d = env.daemon({"http.listen": listen, "matching.offer_timeout_ms": 0})
            load_volunteers(env, volunteers(1000, prefix="fs"))
            r = env.redis
            dead_port = vdtest.free_port()
            busy = {}

            def busy_enter():
                spin_library(r, 3000 * SCALE)
                r.cmd("CONFIG", "SET", "busy-reply-threshold", "100")
                conn = vdtest.RespConnection(r.host, r.port, timeout=60)
                busy["t"] = threading.Thread(target=lambda: (
                    conn.send(("FCALL_RO", "vdtest_spin", 0, 3000 * SCALE)), conn.read_reply(),
                    conn.close()), daemon=True)
                busy["t"].start()

            def loading_enter():
                r.cmd("DEBUG", "POPULATE", 30000, "vdtest-filler")
                r.cmd("CONFIG", "SET", "key-load-delay", "10")
                r.cmd("CONFIG", "SET", "loading-process-events-interval-bytes", "1024")
                conn = vdtest.RespConnection(r.host, r.port, timeout=120)
                busy["t"] = threading.Thread(target=lambda: (
                    conn.send(("DEBUG", "RELOAD")), conn.read_reply(), conn.close()), daemon=True)
                busy["t"].start()

            def loading_leave():
                busy["t"].join(120)
                r.cmd("CONFIG", "SET", "key-load-delay", "0")

            def misconf_enter():
                shutil.rmtree(data_dir, ignore_errors=True)
                r.cmd("CONFIG", "SET", "save", "3600 1")
                r.cmd("BGSAVE")
                env.wait_for(lambda: "rdb_last_bgsave_status:err" in r.cmd("INFO", "persistence"),
                             timeout=10, what="a failed BGSAVE")

            def misconf_leave():
                r.cmd("CONFIG", "SET", "stop-writes-on-bgsave-error", "no")
                r.cmd("CONFIG", "SET", "save", "")

            states = [
                ("NOREPLICAS", lambda: r.cmd("CONFIG", "SET", "min-replicas-to-write", "1"),
                 lambda: r.cmd("CONFIG", "SET", "min-replicas-to-write", "0"), ["noreplicas"]),
                ("OOM", lambda: r.cmd("CONFIG", "SET", "maxmemory", "1"),
                 lambda: r.cmd("CONFIG", "SET", "maxmemory", "0"), ["oom"]),
                ("READONLY", lambda: r.cmd("REPLICAOF", "127.0.0.1", dead_port),
                 lambda: r.cmd("REPLICAOF", "NO", "ONE"), ["readonly"]),
                # Writes see READONLY first; reads (FCALL_RO) see MASTERDOWN.
                ("MASTERDOWN", lambda: (r.cmd("CONFIG", "SET", "replica-serve-stale-data", "no"),
                                        r.cmd("REPLICAOF", "127.0.0.1", dead_port)),
                 lambda: (r.cmd("REPLICAOF", "NO", "ONE"),
                          r.cmd("CONFIG", "SET", "replica-serve-stale-data", "yes")),
                 ["masterdown", "readonly"]),
                ("BUSY", busy_enter, lambda: busy["t"].join(60), ["busy"]),
                ("LOADING", loading_enter, loading_leave, ["loading"]),
                ("FUNCTION FLUSH", lambda: r.cmd("FUNCTION", "FLUSH"), lambda: None, ["no_library"]),
                # Last: the data directory is gone afterwards.
                ("MISCONF", misconf_enter, misconf_leave, ["misconf"]),
            ]
            all_rids = []
            for i, (name, enter, leave, codes) in enumerate(states):
                reqs = requests(100, prefix="fs%d" % i, seed=i, spread_m=1200)
                why = outage_under_stream(env, d, port, name, enter, leave, codes, reqs,
                                          hold_s=0 if name in ("BUSY", "LOADING") else 2.0)
                assert any(c.upper() in why for c in codes) or "Function not found" in why, \
                    "%s: /readyz gave %r" % (name, why)
                all_rids += _rids(reqs)
            loads = metrics(port)["vd_redis_library_loads_total"]
            assert loads == 2, "the library was loaded %s times, expected at start and after the flush" % loads
            _, chosen = check_outcomes(env, all_rids)
            check_redis(env.redis, chosen)
            assert d.stop() == 0
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def cluster_args(conf_dir, name):
    return ["--cluster-enabled", "yes", "--cluster-config-file", os.path.join(conf_dir, name)]


def test_cluster_refusals():
    conf = tempfile.mkdtemp(prefix="vd-cluster-")
    prefix = "vd:{hohhot}:"
    try:
        with vdtest.Env(redis_args=cluster_args(conf, "a.conf"),
                        redis_port=vdtest.free_cluster_port()) as env:
            a = env.redis
            b = vdtest.Redis(port=vdtest.free_cluster_port(), args=cluster_args(conf, "b.conf"))
            a.cmd("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            env.wait_for(lambda: "cluster_state:ok" in a.cmd("CLUSTER", "INFO"), timeout=20,
                         what="cluster state ok")
            b_id = b.cmd("CLUSTER", "MYID")
            a.cmd("CLUSTER", "MEET", "127.0.0.1", b.port)
            env.wait_for(lambda: b_id in a.cmd("CLUSTER", "NODES"), timeout=20, what="B known to A")
            slot = a.cmd("CLUSTER", "KEYSLOT", "hohhot")

            listen, port = listen_config()
            d = env.daemon({"http.listen": listen, "matching.offer_timeout_ms": 0,
                            "redis.key_prefix": prefix})
            load_volunteers(env, volunteers(300, prefix="cl"), prefix=prefix)
            all_rids = []

            down = requests(100, prefix="cd", seed=1, spread_m=1200)
            outage_under_stream(env, d, port, "CLUSTERDOWN",
                                lambda: a.cmd("CLUSTER", "DELSLOTS", slot),
                                lambda: a.cmd("CLUSTER", "ADDSLOTS", slot), ["clusterdown"], down)
            all_rids += _rids(down)
            env.wait_for(lambda: "cluster_state:ok" in a.cmd("CLUSTER", "INFO"), timeout=20,
                         what="cluster state ok again")

            # The slot migrating: a Function whose declared keys exist only in part is refused
            # (TRYAGAIN) before it runs. Entered while the daemon is idle: a Function in the
            # middle of its work could reach an undeclared key that is not here any more.
            again = requests(100, prefix="ta", seed=2, spread_m=1200)
            outage_under_stream(env, d, port, "TRYAGAIN",
                                lambda: a.cmd("CLUSTER", "SETSLOT", slot, "MIGRATING", b_id),
                                lambda: a.cmd("CLUSTER", "SETSLOT", slot, "STABLE"),
                                ["tryagain", "ask"], again)
            all_rids += _rids(again)
            _, chosen = check_outcomes(env, all_rids)
            check_redis(a, chosen, prefix=prefix)
            stray = [k for k in a.cmd("KEYS", "*") if not k.startswith(prefix)]
            assert not stray, "keys outside the prefix: %s" % stray[:5]
            assert d.stop() == 0
            b.close()
    finally:
        shutil.rmtree(conf, ignore_errors=True)


def test_library_versions():
    version, text = library()
    newer = text.replace("vdispatch_%d" % version, "vdispatch_%d" % (version + 1)).replace(
        "'vd%d_" % version, "'vd%d_" % (version + 1))
    with vdtest.Env() as env:
        # A newer version is already loaded (a rolling upgrade began): left alone, side by side.
        env.redis.cmd("FUNCTION", "LOAD", newer)
        listen, port = listen_config()
        d = env.daemon({"http.listen": listen, "matching.offer_timeout_ms": 0})
        libs = {lib[1]: lib[7] for lib in env.redis.cmd("FUNCTION", "LIST", "WITHCODE")}
        assert set(libs) == {"vdispatch_%d" % version, "vdispatch_%d" % (version + 1)}, sorted(libs)
        assert libs["vdispatch_%d" % (version + 1)] == newer, "the newer library was changed"
        assert libs["vdispatch_%d" % version] == text
        assert d.find_log(msg="other vdispatch libraries loaded (left alone): vdispatch_%d"
                          % (version + 1)), "the newer library was not noticed"
        load_volunteers(env, volunteers(5, prefix="lv"))
        env.send("requests", requests(3, prefix="lv-r"))
        wait_all_outcomes(env, ["lv-r-%04d" % i for i in range(3)])
        # The newer version works on the same keys beside it.
        got = env.redis.cmd("FCALL", "vd%d_probe" % (version + 1), 1, "vd:probe")
        assert got == "ok", got
        assert d.stop() == 0

        # The same version with other code: a deployment error; the daemon stops with exit 1
        # and never replaces it.
        patched = text + "\n-- patched elsewhere\n"
        env.redis.cmd("FUNCTION", "LOAD", "REPLACE", patched)
        d.start()
        rc = d.proc.wait(30 * SCALE)
        assert rc == 1, "exit status %s" % rc
        fatal = d.find_log(msg="fatal:")
        assert fatal and "differs from this build" in fatal[0]["msg"], d.log_lines()[-5:]
        libs = {lib[1]: lib[7] for lib in env.redis.cmd("FUNCTION", "LIST", "WITHCODE")}
        assert libs["vdispatch_%d" % version] == patched, "the library was replaced"


def watch_health(port, seen, stop):
    """Polls /healthz until stop is set, recording (status, body) pairs."""
    while not stop.is_set():
        try:
            seen.append(http_get(port, "/healthz", timeout=1)[::2])
        except OSError:
            pass
        time.sleep(0.005)


def expect_fatal(d, port, needle, seen, stop, timeout=60):
    rc = d.proc.wait(timeout * SCALE)
    stop.set()
    assert rc == 1, "exit status %s, expected 1" % rc
    fatal = d.find_log(msg="fatal:")
    assert fatal and needle in fatal[0]["msg"], "no fatal log line with %r: %s" % (
        needle, [r["msg"] for r in d.log_lines()[-6:]])
    unhealthy = [s for s in seen if s[0] == 503]
    assert unhealthy and "fatal" in unhealthy[0][1], \
        "/healthz never said 503 before the exit: %s" % sorted(set(seen))[:5]
    vdtest.log("exit 1; /healthz said %r" % unhealthy[0][1].strip()[:120])


def test_redis_acl_forbids():
    with vdtest.Env() as env:
        # A user who may not touch the daemon's keys (the prefix is vd:).
        env.redis.cmd("ACL", "SETUSER", "vdapp", "on", ">s3cret", "~other:*", "+@all")
        listen, port = listen_config()
        d = env.daemon({"http.listen": listen, "redis.user": "vdapp", "redis.password": "s3cret"},
                       wait=False)
        seen, stop = [], threading.Event()
        threading.Thread(target=watch_health, args=(port, seen, stop), daemon=True).start()
        expect_fatal(d, port, "NOPERM", seen, stop)
        assert not env.events("deadletter"), "a refused command became a dead letter"


def test_kafka_fatal():
    with vdtest.Env() as env:
        k = env.kafka
        # Inputs on broker 1, outputs on broker 2: an error pushed to broker 2 reaches only the
        # daemon's producer, not the test's.
        for topic, parts in vdtest.DEFAULT_TOPICS.items():
            leader = 2 if topic in ("vd.assignments", "vd.notifications", "vd.deadletter") else 1
            for p in range(parts):
                k.command("leader %s %d %d" % (topic, p, leader))
        listen, port = listen_config()
        d = env.daemon({"http.listen": listen, "matching.offer_timeout_ms": 0})
        load_volunteers(env, volunteers(5, prefix="kf"))
        seen, stop = [], threading.Event()
        threading.Thread(target=watch_health, args=(port, seen, stop), daemon=True).start()
        k.command("broker-error 2 Produce OUT_OF_ORDER_SEQUENCE_NUMBER 1")
        reqs = requests(3, prefix="kf-r")
        env.send("requests", reqs)
        expect_fatal(d, port, "OUT_OF_ORDER_SEQUENCE_NUMBER", seen, stop)
        # Nothing is lost: the next instance gets the inputs again and publishes their outcomes.
        d2 = env.daemon({"http.listen": listen, "matching.offer_timeout_ms": 0})
        wait_all_outcomes(env, _rids(reqs), timeout=60 * SCALE)
        check_outcomes(env, _rids(reqs))
        assert d2.stop() == 0


if __name__ == "__main__":
    vdtest.main(globals())
