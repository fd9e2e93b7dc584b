"""Nothing half done, nothing stranded, nothing unbounded: the Functions, state and costs.

Against the real redis-server (the Function library called directly where a race cannot be
arranged through Kafka) and the real daemon:

  test_functions_check_before_writing  bad arguments (latitudes beyond GEO's, keys, notes)
                                is refused before any write; a volunteer stored out of GEO
                                range is cancelled and completed cleanly
  test_claim_checks             a stale search result (pool, distance, skills, language,
                                availability) is never offered
  test_task_timeout             a task nobody completes frees its volunteer; coordinator told
  test_volunteer_ttl_and_key_owners   silent volunteers go; every key has a TTL or an owner
  test_schedule_horizon_record_and_stale   not_before too far ahead, the request record
                                holds no resident data, a replay older than the TTL
  test_ids_and_prefixes_cannot_collide     IDs with ':' and two deployments on one Redis
  test_sequence_order           every output carries `sequence`; the highest per request
                                never shows a cancelled request offered or confirmed
  test_prompt_and_batched_outputs   a lone request's outputs leave without the producer's
                                linger, a burst's mostly batched; each request's in order
  test_deadlines_under_load     offer timeouts on time at the head of a 100,000-request
                                backlog, with 100,000 in memory and with intake paused;
                                max_inflight 1
  test_search_bounds            a dense place behind the first radius; long tag lists

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_bounds.py [TEST_NAME ...]
"""

import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402
from test_faults import check_outcomes  # noqa: E402
from test_lifecycle import (add_volunteers, confirm, no_dead_letters, place, pooled,  # noqa: E402
                            req_state, select, start, task, wait_events, wait_metric)
from test_ops import wait_all_outcomes  # noqa: E402
from vdtest import metrics  # noqa: E402

SCALE = vdtest.TIMEOUT_SCALE
LUA = os.path.join(vdtest.SOURCE, "daemon", "vdispatch.lua")
P = "vd:"


def lib():
    with open(LUA) as f:
        text = f.read()
    return int(re.match(r"#!lua name=vdispatch_(\d+)", text).group(1)), text


VERSION, LIBRARY = lib()


def fn(name):
    return "vd%d_%s" % (VERSION, name)


class Lib:
    """The Function library on a bare redis-server, called as the daemon calls it."""

    def __init__(self, redis, timeout_ms=0, task_ms=3600000):
        self.r = redis
        self.timeout_ms, self.task_ms = timeout_ms, task_ms
        redis.cmd("FUNCTION", "LOAD", "REPLACE", LIBRARY)

    def common(self, rid, want_rq=0):
        return [P, rid, 604800, 5000, 5, self.timeout_ms, self.task_ms, want_rq, 5000]

    def settings(self):
        """vd7_round's and vd7_claim's first arguments (ARGV settings)."""
        return [P, 604800, 5000, 5, self.timeout_ms, self.task_ms, 4, 5000]

    def call(self, name, keys, args):
        try:
            return self.r.cmd("FCALL", fn(name), len(keys), *keys, *args)
        except vdtest.RedisError as e:
            return e

    def vol(self, vid, lat, lon, skills="", langs="zh", event_id=""):
        return self.call("vol_available", [P + "vol/" + vid, P + "vols"],
                         [P, vid, lat, lon, skills, langs, 0, "", event_id, 5000])

    def pool(self, event_id=""):
        return P + ("pool/ev/" + event_id if event_id else "pool/city")

    def admit(self, rid, lat, lon, event_id="", needed=1, rq=None):
        """A round of one new request: its entry ({tag, state, open, search, facts, ...})."""
        data = {"request_id": rid, "location": {"lat": lat, "lon": lon}, "service": "home_visit",
                "volunteers_needed": needed}
        if event_id:
            data["event_id"] = event_id
        if rq is None:
            rq = json.dumps(vdtest.cloudevent("vd.request.created", data))
        got = self.call("round", [P + "due", self.pool(event_id)],
                        self.settings() + [500, 8, 0, 150, 300, 0, 1,
                                           rid, 1, lat, lon, 5000, "", "", needed, 0, 0,
                                           int(time.time() * 1000), rq, 100, "", "", 0])
        return got[0] if isinstance(got, list) else got

    def offer(self, rid, lat, lon, cands, event_id="", maxd=5000, skills="", langs=""):
        """A claim of one request's offers: its entry ({tag, state, open, search, facts, made})."""
        args = self.settings() + [1, rid, lat, lon, maxd, skills, langs, "offer", len(cands)]
        for vid in cands:
            args += [vid, "10.0/500/1"]
        got = self.call("claim", [P + "due", self.pool(event_id)], args)
        return got[0] if isinstance(got, list) else got

    def cancel(self, rid):
        return self.call("cancel", [P + "req/" + rid, P + "due"], self.common(rid))

    def complete(self, rid, vid):
        return self.call("complete", [P + "req/" + rid, P + "due"], self.common(rid) + [vid, 86400])


# --------------------------------------------------------------------------------------------
# 2. No Function fails half way

def test_functions_check_before_writing():
    with vdtest.Env() as env:
        r = env.redis
        lb = Lib(r)
        lat, lon = vdtest.HOHHOT
        snapshot = lambda: sorted(r.cmd("KEYS", "*"))  # noqa: E731
        before = snapshot()
        # Out of what GEOADD accepts, bad IDs, bad numbers, keys that are not the IDs': refused
        # with VDINPUT, nothing written.
        bad = [
            lb.vol("v-far-north", 86.0, lon),
            lb.vol("v-bad-lon", lat, 181),
            lb.vol("v bad id", lat, lon),
            lb.vol("v-skills", lat, lon, skills="a,,b"),
            lb.call("vol_available", [P + "vol/other", P + "vols"],
                    [P, "v-keys", lat, lon, "", "", 0, "", "", 5000]),
            lb.admit("r-north", 85.06, lon),
            lb.admit("r-x", lat, lon, rq="not json"),
            lb.call("round", [P + "due", P + "pool/other"], lb.settings() + [500, 8, 0, 150, 300, 0, 0]),
            lb.offer("r-none", lat, lon, ["v1"], maxd="x"),
            lb.call("settle", [P + "due", P + "req/r1"], [P, 5000, 0, "r1", "nan"]),
            lb.call("claim", [P + "due", lb.pool()],
                    lb.settings() + [1, "r1", lat, lon, 5000, "", "", "finish", 1, "{not json"]),
        ]
        for i, b in enumerate(bad):
            assert isinstance(b, vdtest.RedisError) and str(b).startswith("VDINPUT"), \
                "bad call %d answered %r" % (i, b)
        assert snapshot() == before, "a refused call wrote %s" % (set(snapshot()) - set(before))
        vdtest.log("%d bad calls refused before any write: %s" % (len(bad), [str(b) for b in bad][:4]))

        # A location that moved out of range is refused; the stored one stays.
        assert lb.vol("v-ok", lat, lon) == "pooled"
        assert str(lb.call("vol_location", [P + "vol/v-ok", P + "vols"],
                           [P, "v-ok", -89.9, lon, 5000])).startswith("VDINPUT")
        assert float(r.cmd("HGET", P + "vol/v-ok", "lat")) == lat

        # Volunteers whose stored location is out of GEO range (an older version wrote it):
        # cancelling and completing their requests ends cleanly, they are freed, not pooled.
        for vid, rid in (("v-old-c", "r-old-c"), ("v-old-k", "r-old-k")):
            assert lb.vol(vid, lat, lon + 0.01) == "pooled"
            assert lb.admit(rid, lat, lon + 0.01)[0] == "new"
            got = lb.offer(rid, lat, lon + 0.01, [vid])
            assert got[1] == "confirmed", got
            r.cmd("HSET", P + "vol/" + vid, "lat", "89.5")
        got = lb.cancel("r-old-c")
        assert got[0] == "ok" and got[1] == "cancelled", got
        assert any("cancelled|v-old-c" in f for f in got[6]), got[6]
        got = lb.complete("r-old-k", "v-old-k")
        assert got[0] == "ok" and got[1] == "completed", got
        assert any("completed|v-old-k|1" in f for f in got[6]), got[6]
        for vid in ("v-old-c", "v-old-k"):
            assert r.cmd("HGET", P + "vol/" + vid, "task") == "", vid
            assert r.cmd("ZSCORE", lb.pool(), vid) is None, "%s pooled at latitude 89.5" % vid
        # A new, valid place pools them again.
        assert lb.vol("v-old-c", lat, lon) == "pooled"


# --------------------------------------------------------------------------------------------
# 3. Offers checked at claim time against the request

def test_claim_checks():
    with vdtest.Env() as env:
        r = env.redis
        lb = Lib(r)
        lat, lon = vdtest.HOHHOT
        near = vdtest.offset_m(lat, lon, 300, 0)
        lb.vol("c-good", *near, skills="first_aid", langs="zh,mn")
        lb.vol("c-event", *near, skills="first_aid", langs="mn", event_id="expo")  # another pool
        lb.vol("c-moved", *near, skills="first_aid", langs="mn")
        lb.vol("c-skill", *near, skills="driving", langs="mn")
        lb.vol("c-lang", *near, skills="first_aid", langs="zh")
        lb.vol("c-off", *near, skills="first_aid", langs="mn")
        lb.call("vol_location", [P + "vol/c-moved", P + "vols"],
                [P, "c-moved", *vdtest.offset_m(lat, lon, 3000, 0), 5000])
        lb.call("vol_unavailable", [P + "vol/c-off", P + "vols"], [P, "c-off"])
        assert lb.admit("cr-1", lat, lon)[0] == "new"
        stale = ["c-event", "c-moved", "c-skill", "c-lang", "c-off", "c-gone"]
        got = lb.offer("cr-1", lat, lon, stale, maxd=2000, skills="first_aid", langs="mn")
        assert got[5] == 0 and got[1] == "searching", "a stale candidate was offered: %s" % got
        got = lb.offer("cr-1", lat, lon, stale + ["c-good"], maxd=2000, skills="first_aid", langs="mn")
        assert got[5] == 1 and got[1] == "confirmed", got
        assert r.cmd("HGET", P + "req/cr-1", "held") == "c-good"
        # An event's request never takes a city volunteer, whatever its search said.
        lb.vol("c-city", *near, skills="", langs="zh")
        assert lb.admit("cr-ev", lat, lon, event_id="expo")[0] == "new"
        got = lb.offer("cr-ev", lat, lon, ["c-city"], event_id="expo")
        assert got[5] == 0, got
        got = lb.offer("cr-ev", lat, lon, ["c-event"], event_id="expo")
        assert got[5] == 1, got


# --------------------------------------------------------------------------------------------
# 4. Nothing stranded

def test_task_timeout():
    with vdtest.Env() as env:
        d = start(env, **{"matching.offer_timeout_ms": 0, "matching.task_timeout_s": 2})
        add_volunteers(env, [("tt-v", place(0, 50, 0), {}), ("tt-w1", place(1, 50, 0), {}),
                             ("tt-w2", place(1, -50, 0), {})])
        assert confirm(env, "tt-r1", place(0)) == ["tt-v"]
        t0 = time.time()
        rel = wait_events(env, "assignments", "vd.assignment.released", request_id="tt-r1",
                          timeout=20 * SCALE)[0]
        vdtest.log("released %.1f s after the confirmation" % (time.time() - t0))
        assert rel["data"]["volunteer_id"] == "tt-v" and rel["data"]["reason"] == "task_timeout", rel
        note = wait_events(env, "notifications", "vd.notify.coordinator", request_id="tt-r1",
                           kind="task_timeout")[0]
        assert note["data"]["volunteer_id"] == "tt-v", note
        env.wait_for(lambda: pooled(env, "tt-v"), timeout=10, what="tt-v back in the pool")
        assert task(env, "tt-v") == "" and req_state(env, "tt-r1") == "completed"
        wait_metric(env, d, "vd_task_timeouts_total", 1)
        # The late completion changes nothing.
        env.send("responses", [vdtest.task_completed("tt-r1", "tt-v")])
        wait_metric(env, d, "vd_ignored_responses_total", 1)
        assert not select(env.events("assignments"), "vd.request.completed", request_id="tt-r1")
        # The volunteer serves the next request.
        assert confirm(env, "tt-r2", place(0)) == ["tt-v"]
        # Two volunteers: one completes, the other's task times out: completed then.
        held = confirm(env, "tt-r3", place(1), volunteers_needed=2)
        env.send("responses", [vdtest.task_completed("tt-r3", held[0])])
        wait_events(env, "assignments", "vd.assignment.released", request_id="tt-r3",
                    volunteer_id=held[1], timeout=20 * SCALE)
        env.wait_for(lambda: req_state(env, "tt-r3") == "completed", timeout=10,
                     what="tt-r3 completed")
        assert env.redis.cmd("ZSCORE", "vd:due", "tt-r3") is None
        no_dead_letters(env)


def key_owners(r):
    """Keys with no TTL must belong to a live volunteer or be one of the shared sets; the
    requests to staff must have their records, the listed events their pools."""
    vols = set(r.cmd("ZRANGE", P + "vols", 0, -1))
    orphans = []
    for k in r.cmd("KEYS", "*"):
        if r.cmd("TTL", k) > 0:
            continue
        if k in (P + "vols", P + "due") or k.startswith(P + "pool/"):
            continue
        if k == P + "unstaffed":
            orphans += ["unstaffed request %s without a record" % rid
                        for rid in r.cmd("ZRANGE", k, 0, -1) if not r.cmd("EXISTS", P + "req/" + rid)]
            continue
        if k == P + "events":
            orphans += ["listed event %s without a pool" % ev
                        for ev in r.cmd("SMEMBERS", k) if not r.cmd("EXISTS", P + "pool/ev/" + ev)]
            continue
        if k.startswith(P + "vol/") and k[len(P) + 4:] in vols:
            continue
        orphans.append(k)
    return orphans


def test_volunteer_ttl_and_key_owners():
    with vdtest.Env() as env:
        d = start(env, **{"matching.offer_timeout_ms": 0, "redis.volunteer_ttl_s": 2})
        add_volunteers(env, [("vt-idle", place(0, 50, 0), {}), ("vt-busy", place(1, 50, 0), {})])
        assert confirm(env, "vt-r", place(1)) == ["vt-busy"]
        env.send("requests", [vdtest.request_created("vt-far", *place(5))])
        wait_events(env, "assignments", "vd.request.unmatched", request_id="vt-far")
        env.send("requests", [vdtest.request_cancelled("vt-r-never")])
        wait_events(env, "assignments", "vd.request.cancelled", request_id="vt-r-never")
        orphans = key_owners(env.redis)
        assert not orphans, "keys without a TTL or an owner: %s" % orphans
        # The silent volunteer goes; the busy one stays while it holds its task.
        env.wait_for(lambda: env.redis.cmd("EXISTS", P + "vol/vt-idle") == 0, timeout=15 * SCALE,
                     what="vt-idle swept")
        assert not pooled(env, "vt-idle")
        assert env.redis.cmd("ZSCORE", P + "vols", "vt-idle") is None
        assert env.redis.cmd("HGET", P + "vol/vt-busy", "task") == "vt-r"
        env.send("responses", [vdtest.task_completed("vt-r", "vt-busy")])
        env.wait_for(lambda: env.redis.cmd("EXISTS", P + "vol/vt-busy") == 0, timeout=15 * SCALE,
                     what="vt-busy swept once its task ended")
        wait_metric(env, d, "vd_volunteers_swept_total", 2)
        assert not key_owners(env.redis), key_owners(env.redis)
        assert not [k for k in env.redis.cmd("KEYS", P + "pool/*")
                    if env.redis.cmd("ZCARD", k)], "pools still hold swept volunteers"


def test_schedule_horizon_record_and_stale():
    with vdtest.Env() as env:
        d = start(env, **{"matching.offer_timeout_ms": 0, "matching.schedule_horizon_s": 3600,
                          "redis.request_ttl_s": 60})
        add_volunteers(env, [("sh-v", place(0, 50, 0), {})])
        far = vdtest.request_created("sh-far", *place(0), not_before=vdtest.now_rfc3339(7200))
        soon = vdtest.request_created("sh-soon", *place(0), not_before=vdtest.now_rfc3339(1800))
        old = vdtest.request_created("sh-old", *place(0))
        old["time"] = vdtest.now_rfc3339(-120)
        fresh = vdtest.request_created(
            "sh-fresh", *place(0), resident_id="res-77", priority="urgent",
            vulnerability={"age": 91, "lives_alone": True, "low_income": True, "disability": True},
            note="独居老人, 3号楼2单元501, 电话13800000000")
        fresh["time"] = vdtest.now_rfc3339(-30)
        env.send("requests", [far, soon, old, fresh])
        dead = env.wait_for(lambda: (lambda x: x if len(x) >= 2 else None)(
            env.events("deadletter")), timeout=30, what="two dead letters")
        errors = sorted(e["data"]["error"] for e in dead)
        vdtest.log("dead letters: %s" % errors)
        assert errors[0].startswith("data.not_before: ") and "matching.schedule_horizon_s (3600 s)" in errors[0], errors
        assert errors[1].startswith("time: ") and "redis.request_ttl_s (60 s)" in errors[1], errors
        assert env.redis.cmd("EXISTS", P + "req/sh-far") == 0, "a request too far ahead got a record"
        assert env.redis.cmd("EXISTS", P + "req/sh-old") == 0, "a stale request got a record"
        got = wait_events(env, "assignments", "vd.assignment.confirmed", request_id="sh-fresh")
        assert {e["data"]["volunteer_id"] for e in got} == {"sh-v"}, "sh-fresh: %s" % got
        env.wait_for(lambda: req_state(env, "sh-soon") == "scheduled", timeout=20,
                     what="sh-soon scheduled")
        # The record keeps what matching and the outputs need, nothing of the resident.
        rec = env.redis.cmd("HGETALL", P + "req/sh-fresh")
        text = " ".join(rec)
        for secret in ("13800000000", "独居", '"age"', '"vulnerability"', '"lives_alone"', '"note"'):
            assert secret not in text, "the record holds %r: %s" % (secret, text[:300])
        assert "res-77" in text and "urgent" in text, "the record lacks what the outputs need: %s" % text[:300]
        for k in env.redis.cmd("KEYS", "*"):
            if env.redis.cmd("TYPE", k) == "hash":
                assert "13800000000" not in " ".join(env.redis.cmd("HGETALL", k)), k
        m = metrics(d)
        assert m["vd_stale_requests_total"] == 1 and m["vd_horizon_rejected_total"] == 1, m


# --------------------------------------------------------------------------------------------
# 6. IDs and prefixes

def test_ids_and_prefixes_cannot_collide():
    topics = dict(vdtest.DEFAULT_TOPICS)
    b_topics = {"requests": "b.requests", "volunteers": "b.volunteers", "responses": "b.responses",
                "assignments": "b.assignments", "notifications": "b.notifications",
                "deadletter": "b.deadletter"}
    for name in b_topics.values():
        topics[name] = 2
    with vdtest.Env(topics=topics) as env:
        a = start(env, **{"matching.offer_timeout_ms": 0})
        b_cfg = {"matching.offer_timeout_ms": 0, "redis.key_prefix": "vd:vol:",
                 "kafka.group_id": "deployment-b"}
        b_cfg.update({"kafka.topic." + k: v for k, v in b_topics.items()})
        b = start(env, **b_cfg)
        pa, pb = place(0), place(1)
        # Under a layout of prefix + "vol:" + id, A's volunteer "vol:v1" and B's "v1" would be
        # one key (vd:vol:vol:v1).
        env.send("volunteers", [vdtest.volunteer_available("vol:v1", *vdtest.offset_m(*pa, 50, 0))])
        env.kafka.produce("b.volunteers", [("v1", vdtest.volunteer_available("v1", *vdtest.offset_m(*pb, 50, 0)))])
        # Event IDs with ':' (an event "ex" whose skill set would be pool:ev:ex:s:b, and an
        # event named "ex:s:b").
        env.send("volunteers", [
            vdtest.volunteer_available("ex-skilled", *vdtest.offset_m(*pa, 0, 80), skills=["b"], event_id="ex"),
            vdtest.volunteer_available("exsb-plain", *vdtest.offset_m(*pa, 0, 200), event_id="ex:s:b")])
        # Nothing orders two topics: the requests go once every volunteer is pooled.
        for key, n in (("vd:pool/ev/ex:s:b", 1), ("vd:pool/ev/ex", 1), ("vd:pool/city", 1),
                       ("vd:vol:pool/city", 1)):
            env.wait_for(lambda key=key, n=n: env.redis.cmd("ZCARD", key) == n, timeout=20,
                         what="%s holding %d" % (key, n))
        env.send("requests", [vdtest.request_created("ra", *pa),
                              vdtest.request_created("r-exsb", *pa, event_id="ex:s:b"),
                              vdtest.request_created("r-ex-b", *pa, event_id="ex", skills=["b"])])
        env.kafka.produce("b.requests", [("rb", vdtest.request_created("rb", *pb))])
        got = wait_all_outcomes(env, ["ra", "r-exsb", "r-ex-b"])
        who = {rid: e[0]["data"].get("volunteer_id") for rid, e in got.items()}
        assert who == {"ra": "vol:v1", "r-exsb": "exsb-plain", "r-ex-b": "ex-skilled"}, who
        bout = vdtest.outcomes(env.kafka.events("b.assignments", min_count=1, timeout=30))
        assert bout["rb"][0]["data"]["volunteer_id"] == "v1", bout
        assert abs(float(env.redis.cmd("HGET", "vd:vol/vol:v1", "lat")) - pa[0]) < 0.01
        assert abs(float(env.redis.cmd("HGET", "vd:vol:vol/v1", "lat")) - pb[0]) < 0.01
        keys = env.redis.cmd("KEYS", "*")
        b_keys = [k for k in keys if k.startswith("vd:vol:")]
        assert b_keys and all(k[len("vd:vol:"):].split("/")[0] in ("vol", "vols", "pool", "req", "due", "tasks", "probe")
                              for k in b_keys), b_keys


# --------------------------------------------------------------------------------------------
# 7. Output order: the sequence attribute

def by_request(events):
    out = {}
    for e in events:
        rid = (e.get("data") or {}).get("request_id")
        if rid:
            out.setdefault(rid, []).append(e)
    return out


def test_sequence_order():
    with vdtest.Env() as env:
        d = start(env, **{"matching.offer_timeout_ms": 20000})
        add_volunteers(env, [("sq-a", place(0, 30, 0), {}), ("sq-b", place(0, 90, 0), {})])
        env.send("requests", [vdtest.request_created("sq-r", *place(0))])
        o1 = wait_events(env, "assignments", "vd.assignment.offered", request_id="sq-r")[0]
        env.send("responses", [vdtest.offer_declined("sq-r", "sq-a", o1["data"]["offer_id"])])
        wait_events(env, "assignments", "vd.assignment.offered", request_id="sq-r", volunteer_id="sq-b")
        env.send("requests", [vdtest.request_cancelled("sq-r")])
        wait_events(env, "assignments", "vd.request.cancelled", request_id="sq-r")
        # A replay of the request after its cancel republishes its log, each fact with its own
        # sequence.
        env.send("requests", [vdtest.request_created("sq-r", *place(0))])
        wait_metric(env, d, "vd_replays_total", 1)
        time.sleep(1)
        outs = env.events("assignments") + env.events("notifications")
        mine = by_request(outs)["sq-r"]
        assert all(re.fullmatch(r"\d{10}", e.get("sequence", "")) for e in mine), \
            [(e["type"], e.get("sequence")) for e in mine]
        by_seq = {}
        for e in mine:
            by_seq.setdefault(int(e["sequence"]), set()).add((e["type"], e["data"].get("volunteer_id")))
        assert by_seq == {
            1: {("vd.assignment.offered", "sq-a"), ("vd.notify.volunteer", "sq-a")},
            2: {("vd.assignment.withdrawn", "sq-a")},
            3: {("vd.assignment.offered", "sq-b"), ("vd.notify.volunteer", "sq-b")},
            4: {("vd.request.cancelled", "sq-b"), ("vd.notify.volunteer", "sq-b")},
        }, by_seq
        # The same id always carries the same sequence, and a consumer that keeps the highest
        # sequence per request ends with the cancel, whatever the order it read.
        assert len({(e["id"], e["sequence"]) for e in mine}) == len({e["id"] for e in mine})
        assigned = [e for e in env.events("assignments") if e["data"].get("request_id") == "sq-r"]
        best = max(assigned, key=lambda e: e["sequence"])
        assert best["type"] == "vd.request.cancelled", best
        republished = [e["type"] for e in assigned[assigned.index(best) + 1:]]
        assert "vd.assignment.offered" in republished, "the replay did not republish: %s" % republished
        assert all(e["sequence"] <= best["sequence"] for e in assigned[assigned.index(best) + 1:])
        # Direct mode: confirmed, cancelled; and every output about a request has a sequence.
        no_dead_letters(env)
        for e in outs:
            if (e.get("data") or {}).get("request_id"):
                assert "sequence" in e, e


def test_prompt_and_batched_outputs():
    """A lone request's outputs go through the prompt producer (no linger), a burst's mostly
    through the batching one, and each request's outputs stay in order in their partition."""
    with vdtest.Env() as env:
        d = start(env, **{"matching.offer_timeout_ms": 0})
        add_volunteers(env, [("pb-v%03d" % i, place(0, 60 * (i // 20), 60 * (i % 20)), {})
                             for i in range(320)])
        env.wait_for(lambda: metrics(d).get("vd_outputs_unacked") == 0, timeout=30 * SCALE,
                     what="no output unacknowledged")
        m0 = metrics(d)
        env.send("requests", [vdtest.request_created("pb-lone", *place(0))])
        lone = wait_events(env, "assignments", "vd.assignment.confirmed", request_id="pb-lone")[0]
        m1 = metrics(d)
        produced = m1["vd_produced_total"] - m0["vd_produced_total"]
        prompt = m1["vd_produced_prompt_total"] - m0["vd_produced_prompt_total"]
        vdtest.log("the lone request: %d outputs, %d prompt" % (produced, prompt))
        assert produced >= 2 and prompt == produced, (produced, prompt)

        reqs = [vdtest.request_created("pb-r%03d" % i, *place(0, 40 * (i // 15), 80 * (i % 15)))
                for i in range(300)]
        env.send("requests", reqs)
        env.send("responses", [vdtest.task_completed("pb-lone", lone["data"]["volunteer_id"])])
        rids = [e["data"]["request_id"] for e in reqs]
        wait_all_outcomes(env, rids)
        wait_events(env, "assignments", "vd.request.completed", request_id="pb-lone")
        m2 = metrics(d)
        produced = m2["vd_produced_total"] - m1["vd_produced_total"]
        prompt = m2["vd_produced_prompt_total"] - m1["vd_produced_prompt_total"]
        vdtest.log("300 at once: %d outputs, %d prompt" % (produced, prompt))
        assert produced >= 600 and prompt < produced / 2, (produced, prompt)
        # In each partition, a request's outputs come in the order of their sequence.
        for topic in ("assignments", "notifications"):
            for rid, evs in by_request(env.events(topic)).items():
                seqs = [int(e["sequence"]) for e in evs]
                assert seqs == sorted(seqs), (topic, rid, [(e["type"], e["sequence"]) for e in evs])
        mine = [e["type"] for e in by_request(env.events("assignments"))["pb-lone"]]
        assert mine == ["vd.assignment.confirmed", "vd.request.completed"], mine
        confirmed = {e["data"]["request_id"] for e in env.events("assignments")
                     if e["type"] == "vd.assignment.confirmed"}
        assert confirmed == set(rids) | {"pb-lone"}, sorted(set(rids) - confirmed)[:5]
        no_dead_letters(env)


# --------------------------------------------------------------------------------------------
# 8. Deadlines keep time under load

def burst(n, prefix):
    """n requests whose expires_at has passed: each costs one Redis call and two outputs."""
    past = vdtest.now_rfc3339(-60)
    return [vdtest.request_created("%s-%06d" % (prefix, i), *place(3), expires_at=past)
            for i in range(n)]


def offers_timed_out(env, rids):
    """Every first offer of the requests timed out (its volunteer is in `tried`)."""
    return all(env.redis.cmd("HGET", P + "req/" + r, "tried") for r in rids)


# The mock keeps at most 5 MiB per partition: a 100,000-request burst and its outputs need more
# partitions than the project's defaults.
BURST_TOPICS = dict(vdtest.DEFAULT_TOPICS, **{"vd.requests": 16, "vd.assignments": 16,
                                              "vd.notifications": 16})
OFFER_S = 2  # the offers' deadline: the backlog takes the daemon longer than this to work through (4-8 s here)


def deadline_run(env, label, config, n):
    """Five offers made at the head of a backlog of n requests, which the daemon is still
    working through when their deadline comes. The backlog is produced while no daemon runs
    (how long producing takes no longer decides how much is left at the deadline): a first
    daemon pools the volunteers and stops, the five requests and the burst behind them are
    produced, and the daemon under test starts on them."""
    listen, port = vdtest.listen_config()
    cfg = {"http.listen": listen, "matching.offer_timeout_ms": OFFER_S * 1000}
    cfg.update(config)
    d0 = env.daemon(cfg)
    vids = ["%s-v%d" % (label, i) for i in range(5)]
    add_volunteers(env, [(v, place(2, 40 * i, 0), {}) for i, v in enumerate(vids)])
    assert d0.stop() == 0
    rids = ["%s-r%d" % (label, i) for i in range(5)]
    env.send("requests", [vdtest.request_created(r, *place(2, 0, 30 * i)) for i, r in enumerate(rids)])
    job = env.kafka.produce_start("requests", [(e["data"]["request_id"], e) for e in burst(n, label)])
    job.wait(300)
    d = env.daemon(cfg)

    def offer_deadlines():
        # From each request's record (o:<vid> "offer_id|attempt|deadline_ms"): the topic holds
        # the backlog's outcomes too, and reading it all would take longer than the deadline.
        out = []
        for r in rids:
            rec = env.redis.cmd("HGETALL", P + "req/" + r) or []
            offs = [rec[k + 1] for k in range(0, len(rec), 2) if rec[k].startswith("o:")]
            if not offs:
                return None
            out.append(int(offs[0].split("|")[2]) / 1000.0)
        return out
    deadline = max(env.wait_for(offer_deadlines, timeout=30 * SCALE, interval=0.05,
                                what="the five offers made"))
    vdtest.log("%s: offers made with a backlog of %d behind them, %.1f s before their deadline"
               % (label, n, deadline - time.time()))
    assert time.time() < deadline, "%s: the offers were seen only after their deadline" % label
    seen = {"max_mem": 0, "paused": 0}

    def watch():
        while not offers_timed_out(env, rids):
            m = metrics(port)
            seen["max_mem"] = max(seen["max_mem"], m["vd_inputs_in_memory"])
            seen["paused"] += m["vd_intake_paused"]
            time.sleep(0.05)
    watch()
    late = time.time() - deadline
    m = metrics(port)
    vdtest.log("%s: offers withdrawn %.2f s after their deadline; %d inputs in memory then "
               "(peak seen %d, highest ever %d), %d of the backlog done, intake paused in %d samples"
               % (label, late, m["vd_inputs_in_memory"], seen["max_mem"],
                  m["vd_inputs_in_memory_max"], m.get('vd_unmatched_total{reason="expired"}', 0),
                  seen["paused"]))
    assert late < 1.5 * SCALE, "%s: offers timed out %.2f s late" % (label, late)
    expired = 'vd_unmatched_total{reason="expired"}'
    assert m.get(expired, 0) < n, "%s: the backlog was done before the deadline: not a test under load" % label
    wait_metric(env, d, expired, n, timeout=300 * SCALE)
    assert m["vd_inputs_in_memory_max"] <= cfg.get("daemon.max_inflight", 700), m
    return d, seen, m


def test_deadlines_under_load():
    with vdtest.Env(topics=BURST_TOPICS) as env:
        # 100,000 inputs in memory at once (librdkafka's own defaults, 64 MiB of prefetch and
        # 50 MiB a fetch, let intake outrun matching, even on a busy machine).
        d, seen, m = deadline_run(env, "dl1", {"daemon.max_inflight": 100000,
                                               "kafka.consumer.queued.max.messages.kbytes": 65536,
                                               "kafka.consumer.fetch.max.bytes": 52428800},
                                  100000)
        # Under the sanitizers (a Debug build) decoding at intake is slow enough that matching
        # keeps up better: a backlog of 10,000 still makes the point.
        want = 10000 if vdtest.SANITIZED else 50000
        assert m["vd_inputs_in_memory_max"] >= want, "never more than %d in memory" % m["vd_inputs_in_memory_max"]
        assert d.stop() == 0
    with vdtest.Env(topics=BURST_TOPICS) as env:
        # Intake paused by back-pressure most of the time.
        d, seen, m = deadline_run(env, "dl2", {"daemon.max_inflight": 500}, 100000)
        assert seen["paused"] > 0, "intake never paused"
        assert d.stop() == 0
    with vdtest.Env() as env:
        # Any max_inflight works: 1.
        d = start(env, **{"matching.offer_timeout_ms": 0, "daemon.max_inflight": 1})
        add_volunteers(env, [("mi-v%d" % i, place(0, 20 * i, 0), {}) for i in range(30)])
        reqs = [vdtest.request_created("mi-r%d" % i, *place(0, 0, 10 * i)) for i in range(30)]
        env.send("requests", reqs)
        wait_all_outcomes(env, ["mi-r%d" % i for i in range(30)])
        m = metrics(d)
        assert m["vd_inputs_in_memory_max"] == 1, m["vd_inputs_in_memory_max"]
        check_outcomes(env, ["mi-r%d" % i for i in range(30)])


# --------------------------------------------------------------------------------------------
# 9. Cost bounds

def test_search_bounds():
    with vdtest.Env() as env:
        d = start(env, **{"matching.offer_timeout_ms": 0, "matching.radius_start_m": 100,
                          "matching.max_search_points": 50})
        # 300 volunteers crowded 300-400 m away: the first radius finds nobody, the widened
        # one would sort them all; the bounded probe takes 50.
        crowd = [vdtest.volunteer_available("dn-%03d" % i, *vdtest.offset_m(
            *place(0), 300 + (i % 10) * 10, (i // 10) * 3)) for i in range(300)]
        env.send("volunteers", crowd)
        env.wait_for(lambda: env.redis.cmd("ZCARD", P + "pool/city") == 300, timeout=30,
                     what="the crowd pooled")
        got = confirm(env, "dn-r", place(0))
        assert got and got[0].startswith("dn-"), got
        assert metrics(d)["vd_dense_searches_total"] >= 1
        # Tag lists at their longest are compared whole: the last of 32 skills of 64
        # characters is there, and no cut tag matches.
        skills = ["s%02d" % i + "x" * 61 for i in range(32)]
        env.send("volunteers", [vdtest.volunteer_available("tg-v", *place(1, 30, 0), skills=skills)])
        env.wait_for(lambda: pooled(env, "tg-v"), timeout=20, what="tg-v pooled")
        env.send("requests", [vdtest.request_created("tg-cut", *place(1), skills=["s31" + "x" * 40]),
                              vdtest.request_created("tg-last", *place(1), skills=[skills[31]])])
        got = wait_all_outcomes(env, ["tg-cut", "tg-last"])
        assert got["tg-cut"][0]["type"] == "vd.request.unmatched", got["tg-cut"]
        assert got["tg-last"][0]["data"].get("volunteer_id") == "tg-v", got["tg-last"]
        no_dead_letters(env)


if __name__ == "__main__":
    vdtest.main(globals())
