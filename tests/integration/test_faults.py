"""Faults while requests flow: the daemon killed, Redis killed or stalled, Kafka brokers down.

Each test streams requests at a pool of volunteers, injects one fault mid-stream and then
checks the contract's guarantees on everything that came out:

  - every request has an outcome, and all outcome events of one request agree (same event
    ids, same volunteer): a redelivered input republishes, it never decides again;
  - no volunteer is confirmed for two requests, and in Redis no volunteer is held by two
    requests and every held volunteer is out of every pool;
  - every outcome's notifications were published too (an input is committed only after all
    of its outputs are acknowledged), and nothing went to the dead-letter topic.

  test_kill9_mid_stream       kill -9 twice: during a trickle of requests and mid-burst
  test_redis_outage           redis-server killed and restarted with its data (AOF); intake
                              pauses while inputs wait for it
  test_redis_crash_with_unread_commands   Redis dies with commands unread (a reset): noticed
  test_redis_stall            redis-server SIGSTOPped past redis.command_timeout_ms
  test_kafka_outage           every broker down for 5 s

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_faults.py [TEST_NAME ...]
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402
from test_ops import (Stream, load_volunteers, outcome_events, requests,  # noqa: E402
                      volunteers, wait_all_outcomes)
from vdtest import http_get, listen_config, metrics  # noqa: E402

PREFIX = "vd:"


# --------------------------------------------------------------------------------------------
# Checks

def _split(s):
    return [x for x in (s or "").split(",") if x]


def check_outcomes(env, rids):
    """Checks every outcome event and its notifications against the guarantees; returns
    (outcomes by request, the one outcome event per request)."""
    evs = outcome_events(env)
    missing = [r for r in rids if r not in evs]
    assert not missing, "%d requests without an outcome, e.g. %s" % (len(missing), missing[:5])
    unknown = set(evs) - set(rids)
    assert not unknown, "outcomes for requests never sent: %s" % sorted(unknown)[:5]

    def core(e):
        data = e["data"]
        return (e["type"], data.get("volunteer_id"), data.get("offer_id"),
                data.get("distance_m"), data.get("reason"))

    chosen, repeats, drift = {}, 0, []
    for rid in rids:
        group = evs[rid]
        ids = sorted({e["id"] for e in group})
        assert len(ids) == 1, "%s has %d different outcomes: %s" % (rid, len(ids), ids)
        first = group[0]
        for e in group[1:]:
            assert core(e) == core(first), "%s: outcome %s published differently: %s vs %s" % (
                rid, first["id"], core(first), core(e))
            if e["data"] != first["data"]:
                drift.append((rid, first["data"], e["data"]))
        repeats += len(group) - 1
        chosen[rid] = first

    by_vol = {}
    for rid, e in chosen.items():
        if e["type"] == "vd.assignment.confirmed":
            by_vol.setdefault(e["data"]["volunteer_id"], []).append(rid)
    twice = {v: r for v, r in by_vol.items() if len(r) > 1}
    assert not twice, "volunteers confirmed for two requests: %s" % list(twice.items())[:5]

    note_ids = {e["id"] for e in env.events("notifications")}
    for rid, e in chosen.items():
        if e["type"] == "vd.assignment.confirmed":
            vid = e["data"]["volunteer_id"]
            want = ["%s/notify-volunteer/%s" % (rid, vid), "%s/notify-resident/%s" % (rid, vid)]
        else:
            want = ["%s/notify-coordinator" % rid]
        lost = [w for w in want if w not in note_ids]
        assert not lost, "%s: outcome published but notifications missing: %s" % (rid, lost)
    dead = env.events("deadletter")
    assert not dead, "dead letters: %s" % [d["data"].get("error") for d in dead[:3]]

    confirmed = sum(1 for e in chosen.values() if e["type"] == "vd.assignment.confirmed")
    vdtest.log("outcomes: %d requests, %d confirmed, %d unmatched, %d repeated events"
               % (len(rids), confirmed, len(rids) - confirmed, repeats))
    if drift:
        rid, a, b = drift[0]
        vdtest.log("note: %d repeated outcome events carry different data, e.g. %s: %s vs %s"
                   % (len(drift), rid, a, b))
    return evs, chosen


def check_redis(redis, chosen, prefix=PREFIX):
    """The Redis side: nobody held twice, held volunteers out of every pool, and Redis agrees
    with the published outcomes."""
    vol_keys = redis.cmd("KEYS", prefix + "vol/*")
    req_keys = redis.cmd("KEYS", prefix + "req/*")
    pooled = {}
    for pool in redis.cmd("KEYS", prefix + "pool/*"):
        for vid in redis.cmd("ZRANGE", pool, 0, -1):
            pooled.setdefault(vid, []).append(pool)
    vols = {k[len(prefix) + 4:]: v for k, v in zip(
        vol_keys, redis.pipeline([("HMGET", k, "avail", "task", "pool") for k in vol_keys]))}
    reqs = {k[len(prefix) + 4:]: v for k, v in zip(
        req_keys, redis.pipeline([("HMGET", k, "state", "held", "done") for k in req_keys]))}

    holders = {}  # volunteers held now: confirmed and not done (completed or released)
    for rid, (state, held, done) in reqs.items():
        for vid in set(_split(held)) - set(_split(done)):
            holders.setdefault(vid, []).append(rid)
    problems = []
    for vid, rids in holders.items():
        if len(rids) > 1:
            problems.append("%s is held by requests %s" % (vid, rids))
        task = vols.get(vid, [None, None, None])[1]
        if task not in rids:
            problems.append("%s is held by %s but its task is %r" % (vid, rids, task))
    for vid, (avail, task, pool) in vols.items():
        if task:
            if vid in pooled:
                problems.append("%s is held by %s and still in %s" % (vid, task, pooled[vid]))
            if task not in holders.get(vid, []):
                problems.append("%s has task %s, which does not hold it" % (vid, task))
        elif avail == "1" and vid not in pooled:
            problems.append("%s is available and free but in no pool" % vid)
    for rid, e in chosen.items():
        state, held, _ = reqs.get(rid, [None, None, None])
        if e["type"] == "vd.assignment.confirmed":
            vid = e["data"]["volunteer_id"]
            if state != "confirmed" or _split(held) != [vid]:
                problems.append("%s: published confirmed %s, Redis has %s %r"
                                % (rid, vid, state, held))
        elif state not in ("unmatched", "expired"):
            problems.append("%s: published unmatched, Redis has state %s" % (rid, state))
    assert not problems, "%d Redis inconsistencies: %s" % (len(problems), problems[:8])
    vdtest.log("redis: %d volunteers (%d held, %d pooled), %d request records, consistent"
               % (len(vols), sum(1 for v in vols.values() if v[1]), len(pooled), len(reqs)))


def _rids(reqs):
    return [e["data"]["request_id"] for e in reqs]


def _matches(port):
    return metrics(port)["vd_matches_total"]


def start_stream(env, config=None, n_volunteers=300, n_requests=400, spread_m=900,
                 n_streamed=None, outcomes=100):
    """A daemon (/metrics on a free port, log.level info, plus config) with n_volunteers in its
    pool, and a steady stream of the first n_streamed (default: all) of n_requests requests
    at them; returns (daemon, HTTP port, requests, stream) once `outcomes` are matched."""
    listen, port = listen_config()
    cfg = {"http.listen": listen, "log.level": "info"}
    cfg.update(config or {})
    d = env.daemon(cfg)
    load_volunteers(env, volunteers(n_volunteers))
    reqs = requests(n_requests, spread_m=spread_m)
    stream = Stream(env, "requests", reqs[:n_streamed], batch=8, pause_s=0.1)
    env.wait_for(lambda: _matches(port) >= outcomes, timeout=60, interval=0.01,
                 what="%d outcomes" % outcomes)
    return d, port, reqs, stream


def finish_stream(env, stream, rids):
    """Waits for the stream to end and for an outcome of every request, and a second more
    (anything republished late shows up then)."""
    stream.wait()
    wait_all_outcomes(env, rids, timeout=120)
    time.sleep(1)


def check_all_and_stop(env, d, rids):
    """check_outcomes() and check_redis(), then a graceful stop with exit status 0."""
    _, chosen = check_outcomes(env, rids)
    check_redis(env.redis, chosen)
    assert d.stop() == 0


# --------------------------------------------------------------------------------------------
# 1. kill -9 mid-stream, twice

def test_kill9_mid_stream():
    with vdtest.Env() as env:
        # Kill 1: a steady stream, after ~150 outcomes.
        d, port, reqs, stream = start_stream(env, n_volunteers=400, n_requests=600,
                                             spread_m=1100, n_streamed=300, outcomes=150)
        rids = _rids(reqs)
        d.kill()
        vdtest.log("kill -9 #1 with %d of 300 streamed requests produced" % stream.produced)
        assert stream.produced < 300, "the stream was over before the kill"
        d.start()
        d.wait_ready(60)
        stream.wait()
        wait_all_outcomes(env, rids[:300])

        # Kill 2: a burst of 300 at once, killed while it is being worked through.
        base = _matches(port)
        job = env.kafka.produce_start("requests", [(vdtest.event_key("requests", e), e)
                                                   for e in reqs[300:]])
        env.wait_for(lambda: _matches(port) >= base + 60, timeout=60, interval=0.003,
                     what="60 outcomes of the burst")
        d.kill()
        job.wait()
        before = outcome_events(env)
        done = sum(1 for r in rids[300:] if r in before)
        vdtest.log("kill -9 #2 with %d of the 300 burst requests published" % done)
        assert done < 300, "the burst was finished before the kill"
        d.start()
        d.wait_ready(60)
        wait_all_outcomes(env, rids, timeout=120)
        time.sleep(1)

        republished = d.find_log(msg="publishing the recorded outcome again")
        vdtest.log("the last run republished %d recorded outcomes, resumed %d searches"
                   % (len(republished), len(d.find_log(msg="resuming a search"))))
        check_all_and_stop(env, d, rids)


# --------------------------------------------------------------------------------------------
# 2. Redis killed mid-stream, restarted with its data

def test_redis_outage():
    # Append-only file on: a kill -9 keeps every write Redis acknowledged (the harness's
    # default --save '' keeps nothing), so restart(keep_data=True) brings back its data.
    # daemon.max_inflight is small so that the requests arriving meanwhile fill it: intake
    # must pause (and resume afterwards) instead of piling up in memory.
    with vdtest.Env(redis_args=("--appendonly", "yes")) as env:
        d, port, reqs, stream = start_stream(env, {"daemon.max_inflight": 40})
        rids = _rids(reqs)

        env.redis.kill()
        t_down = time.monotonic()
        produced_at_kill = stream.produced
        # (503 may also mean back-pressure: wait for the Redis reason.)
        status, _, why = env.wait_for(
            lambda: (lambda a: a if "redis" in a[2].lower() else None)(http_get(port, "/readyz")),
            timeout=10, what="/readyz naming Redis")
        assert status == 503, (status, why)
        m = metrics(port)
        assert m["vd_redis_up"] == 0, m["vd_redis_up"]
        stalled = m["vd_matches_total"]
        env.wait_for(lambda: metrics(port)["vd_intake_paused"] == 1, timeout=20,
                     what="intake paused with 40 inputs waiting for Redis")
        time.sleep(max(0.0, 3 - (time.monotonic() - t_down)))
        m = metrics(port)
        assert d.running(), "the daemon exited while Redis was down (%s)" % d.returncode
        assert stream.produced > produced_at_kill, "no request was sent during the outage"
        assert m["vd_matches_total"] == stalled, "outcomes without Redis"
        assert m["vd_jobs_in_memory"] <= 40 + 500, "%d inputs in memory" % m["vd_jobs_in_memory"]
        vdtest.log("redis down %.1fs: %d outcomes before, %d more requests sent meanwhile, "
                   "%d inputs in memory, intake paused"
                   % (time.monotonic() - t_down, stalled, stream.produced - produced_at_kill,
                      m["vd_jobs_in_memory"]))

        env.redis.restart(keep_data=True)
        assert env.redis.cmd("ZCARD", PREFIX + "pool/city") > 0, "Redis came back empty"
        env.wait_for(lambda: http_get(port, "/readyz")[0] == 200, timeout=30,
                     what="/readyz 200 after the restart")
        finish_stream(env, stream, rids)

        assert d.running(), "the daemon exited (%s)" % d.returncode
        # The loss shows as "connection lost" (or, when Redis died with commands unread, as a
        # command timeout: see test_redis_crash_with_unread_commands), then failed connects.
        lost = (d.find_log(msg="connection lost") + d.find_log(msg="no reply for")
                + d.find_log(msg="connect failed"))
        back = d.find_log(msg="after reconnect")
        vdtest.log("log: %d lost/failed lines, reconnect: %s"
                   % (len(lost), [r["msg"] for r in back]))
        assert lost, "no line about the lost Redis connection"
        assert back, "no line about the reconnect"
        m = metrics(port)
        assert m["vd_redis_reconnects_total"] >= 1 and m["vd_redis_up"] == 1, m
        assert m["vd_intake_paused"] == 0, "intake still paused"
        check_all_and_stop(env, d, rids)


def test_redis_crash_with_unread_commands():
    """Redis dies while commands it has not read yet wait in its socket (a crash under load):
    the kernel answers with a reset instead of a plain close. The daemon must notice the
    lost connection at once, as it does for a plain close, and not only when the oldest
    command passes redis.command_timeout_ms (10 s here): until it notices, /readyz says
    ready and vd_redis_up says 1 for a Redis that is gone."""
    with vdtest.Env(redis_args=("--appendonly", "yes")) as env:
        listen, port = listen_config()
        d = env.daemon({"http.listen": listen, "log.level": "info",
                        "redis.command_timeout_ms": 10000})
        load_volunteers(env, volunteers(20))
        reqs = requests(5, spread_m=100)
        calls = metrics(port)["vd_redis_calls_total"]
        env.redis.proc.send_signal(signal.SIGSTOP)  # commands sent from now on stay unread
        env.send("requests", reqs)
        env.wait_for(lambda: metrics(port)["vd_redis_calls_total"] > calls, timeout=20,
                     what="a command sent to the stopped Redis")
        time.sleep(0.5)
        env.redis.kill()  # SIGKILL works on a stopped process
        t_kill = time.monotonic()
        noticed = None
        while time.monotonic() - t_kill < 15 * vdtest.TIMEOUT_SCALE:
            status, _, why = http_get(port, "/readyz")
            if status == 503 and "redis" in why.lower():
                noticed = time.monotonic() - t_kill
                break
            time.sleep(0.1)
        lines = [r["msg"] for r in d.find_log(msg="redis 127.0.0.1") if r["level"] != "info"]
        vdtest.log("Redis loss noticed after %s s; log: %s"
                   % ("%.1f" % noticed if noticed is not None else "more than 15", lines[:2]))
        assert d.running(), "the daemon exited (%s)" % d.returncode

        # Whatever the delay, it recovers once Redis is back.
        env.redis.restart(keep_data=True)
        evs = wait_all_outcomes(env, _rids(reqs), timeout=60)
        assert all(len({e["id"] for e in g}) == 1 for g in evs.values()), evs
        assert d.stop() == 0
        assert noticed is not None and noticed <= 3 * vdtest.TIMEOUT_SCALE, (
            "a Redis that died with unread commands was noticed only after %s s (at the "
            "command timeout); until then /readyz answered 200 ready"
            % ("%.1f" % noticed if noticed is not None else "more than 15"))


# --------------------------------------------------------------------------------------------
# 3. Redis stalls past the command timeout

def test_redis_stall():
    with vdtest.Env() as env:
        d, port, reqs, stream = start_stream(env, {"redis.command_timeout_ms": 500})
        rids = _rids(reqs)

        env.redis.proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            env.wait_for(lambda: d.find_log(msg="no reply for"), timeout=10,
                         what="a command timeout in the log")
            vdtest.log("timeout logged %.2fs into the stall" % (time.monotonic() - t0))
            time.sleep(max(0.0, 2.5 - (time.monotonic() - t0)))
        finally:
            env.redis.proc.send_signal(signal.SIGCONT)
        vdtest.log("redis stalled for %.2fs" % (time.monotonic() - t0))
        assert d.running(), "the daemon exited during the stall (%s)" % d.returncode

        env.wait_for(lambda: d.find_log(msg="after reconnect"), timeout=30,
                     what="a reconnect after the stall")
        finish_stream(env, stream, rids)
        m = metrics(port)
        vdtest.log("timeouts %d, reconnects %d, retries %d" % (
            m["vd_redis_timeouts_total"], m["vd_redis_reconnects_total"],
            m["vd_redis_retries_total"]))
        assert m["vd_redis_timeouts_total"] >= 1 and m["vd_redis_reconnects_total"] >= 1, m
        check_all_and_stop(env, d, rids)


# --------------------------------------------------------------------------------------------
# 4. Every Kafka broker down for 5 s

def test_kafka_outage():
    with vdtest.Env() as env:
        d, port, reqs, stream = start_stream(env)
        rids = _rids(reqs)

        for broker in (1, 2, 3):
            env.kafka.command("down %d" % broker)
        at_down = stream.produced
        time.sleep(5)
        assert d.running(), "the daemon exited while Kafka was down (%s)" % d.returncode
        for broker in (1, 2, 3):
            env.kafka.command("up %d" % broker)
        vdtest.log("brokers down 5s with %d of %d requests produced" % (at_down, len(reqs)))
        assert at_down < len(reqs), "the stream was over before the outage"

        finish_stream(env, stream, rids)
        assert d.running(), "the daemon exited (%s)" % d.returncode
        check_all_and_stop(env, d, rids)


if __name__ == "__main__":
    vdtest.main(globals())
