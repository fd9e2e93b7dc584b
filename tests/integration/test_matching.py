"""Integration tests of vdispatchd's matching, in direct mode (matching.offer_timeout_ms = 0).

Each test starts its own Redis, Kafka mock and daemon (vdtest.Env). Scenarios that share a
daemon sit at "anchors" 30 km apart, so that no search of one scenario (at most 8 km) reaches
the volunteers of another; every volunteer is in its Redis pool before a request is sent.

What is checked (see each test's docstring): outcomes per request on the assignments topic
(vd.assignment.confirmed / vd.request.unmatched, with the exact `filtered` counts), the
notifications that go with them, and the Redis state the daemon leaves (pools, vd:vol/<id>,
vd:req/<id>, vd:tasks/<id>).

Run: VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_matching.py [test name ...]
"""

import json
import math
import os
import random
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402
from vdtest import (HOHHOT, distance_m, offset_m, outcomes, request_created,  # noqa: E402
                    volunteer_available)

CONFIRMED = "vd.assignment.confirmed"
UNMATCHED = "vd.request.unmatched"
WAIT = 60.0  # generous: a loaded machine (or a sanitizer build) is slow


# --------------------------------------------------------------------------------------------
# Places

def anchor(i):
    """The centre of scenario i: a 5-wide grid of points 30 km apart, from Hohhot."""
    return offset_m(HOHHOT[0], HOHHOT[1], 30000.0 * (i // 5), 30000.0 * (i % 5))


def at(a, north=0.0, east=0.0):
    """The point north/east metres from a (lat, lon)."""
    return offset_m(a[0], a[1], north, east)


def pool_key(event_id=None):
    return "vd:pool/ev/%s" % event_id if event_id else "vd:pool/city"


# --------------------------------------------------------------------------------------------
# Waiting

def until(check, timeout=WAIT, what="condition", interval=0.2):
    """Calls check() until it returns None (done); check returns a description of what is
    still missing otherwise, which the AssertionError after timeout seconds names."""
    deadline = time.monotonic() + timeout
    while True:
        missing = check()
        if missing is None:
            return
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.0fs waiting for %s: %s" % (timeout, what, missing))
        time.sleep(interval)


def start_daemon(env, config=None, args=()):
    return env.daemon(dict(config or {}), args=list(args), timeout=60)


def wait_pooled(env, members, timeout=WAIT):
    """members: [(volunteer_id, event_id or None)]. Waits until each is in its pool."""
    members = list(members)

    def check():
        replies = env.redis.pipeline([("ZSCORE", pool_key(e), v) for v, e in members])
        missing = [v for (v, _), r in zip(members, replies) if r is None or isinstance(r, Exception)]
        return ("not pooled: %s" % missing[:20]) if missing else None
    until(check, timeout, "volunteers in their pools")


def add_volunteers(env, events, timeout=WAIT):
    """Sends vd.volunteer.available events; returns once every one is in its pool (and the
    pools' ZCARDs are at least the number of volunteers sent to them)."""
    env.send("volunteers", events)
    members = [(e["data"]["volunteer_id"], e["data"].get("event_id")) for e in events]
    wait_pooled(env, members, timeout)
    counts = {}
    for _, eid in members:
        counts[pool_key(eid)] = counts.get(pool_key(eid), 0) + 1
    for key, n in counts.items():
        card = env.redis.cmd("ZCARD", key)
        assert card >= n, "%s holds %d, expected at least %d" % (key, card, n)


def complete_tasks(env, pairs, timeout=WAIT):
    """Sends vd.task.completed for (request_id, volunteer_id[, event_id]) and waits until each
    volunteer holds no task and is back in their pool."""
    pairs = [tuple(p) + (None,) * (3 - len(p)) for p in pairs]
    env.send("responses", [vdtest.task_completed(r, v) for r, v, _ in pairs])

    def check():
        cmds = []
        for _, v, e in pairs:
            cmds.append(("HGET", "vd:vol/" + v, "task"))
            cmds.append(("ZSCORE", pool_key(e), v))
        replies = env.redis.pipeline(cmds)
        busy = [v for i, (_, v, _) in enumerate(pairs)
                if replies[2 * i] not in ("", None) or replies[2 * i + 1] is None]
        return ("still holding a task or not pooled: %s" % busy) if busy else None
    until(check, timeout, "completed volunteers back in the pool")


def wait_outcomes(env, expect, timeout=WAIT):
    """expect: {request_id: n}. Waits until each request has at least n outcome events on the
    assignments topic. Returns outcomes() of everything read."""
    last = {}

    def check():
        got = outcomes(env.events("assignments"))
        last["got"] = got
        short = sorted((r, len(got.get(r, []))) for r, n in expect.items() if len(got.get(r, [])) < n)
        return ("(request, outcomes so far): %s" % short[:20]) if short else None
    until(check, timeout, "outcomes of %d request(s)" % len(expect), interval=0.3)
    return last["got"]


def wait_notifications(env, expect, timeout=WAIT):
    """expect: {event id: n}. Waits until each id was seen n times on notifications; returns
    all notification events."""
    last = {}

    def check():
        evs = env.events("notifications")
        last["evs"] = evs
        seen = {}
        for e in evs:
            seen[e.get("id")] = seen.get(e.get("id"), 0) + 1
        short = sorted((i, seen.get(i, 0)) for i, n in expect.items() if seen.get(i, 0) < n)
        return ("(id, seen): %s" % short[:20]) if short else None
    until(check, timeout, "notifications", interval=0.3)
    return last["evs"]


# --------------------------------------------------------------------------------------------
# Assertions

def _show(evs):
    return "; ".join("%s %s" % (e.get("type"), json.dumps(e.get("data"), sort_keys=True)) for e in evs)


def the_outcome(got, rid):
    evs = got.get(rid, [])
    assert len(evs) == 1, "%s: expected exactly one outcome, got %d: %s" % (rid, len(evs), _show(evs))
    return evs[0]


def near(actual, expected, tol=1.0, what="distance_m"):
    assert abs(float(actual) - expected) <= tol, "%s %s, expected %.1f (+-%.1f)" % (
        what, actual, expected, tol)


def check_confirmed_event(e, rid, vid, within_radius=True):
    """The envelope and the fields every confirmed event carries."""
    d = e["data"]
    assert e["type"] == CONFIRMED, "%s: expected %s, got %s" % (rid, CONFIRMED, _show([e]))
    assert d["request_id"] == rid and d["volunteer_id"] == vid, "%s: expected %s, got %s" % (
        rid, vid, _show([e]))
    assert e["id"] == "%s/confirmed/%s" % (rid, vid), "event id %r" % e["id"]
    assert e["specversion"] == "1.0" and e["datacontenttype"] == "application/json", e
    assert e.get("source") and e.get("time"), e
    assert re.fullmatch(r"of-[0-9a-f]{16}", d["offer_id"]), d
    # attempt counts the request's offers: the nth volunteer of a request for several is its nth.
    assert 1 <= d["attempt"] <= 10, d
    assert isinstance(d["distance_m"], (int, float)), d
    if within_radius:
        assert d["distance_m"] <= d["radius_m"], "%s: distance_m beyond radius_m: %s" % (rid, d)
    return d


def expect_confirmed(got, rid, vid, **fields):
    """Exactly one outcome for rid: confirmed with vid; fields are exact data values, except
    distance_m (a float compared within 1 m). Returns data."""
    e = the_outcome(got, rid)
    d = check_confirmed_event(e, rid, vid)
    for k, v in fields.items():
        if k == "distance_m":
            near(d[k], v, what="%s distance_m" % rid)
        else:
            assert d.get(k) == v, "%s: %s is %r, expected %r (%s)" % (rid, k, d.get(k), v, _show([e]))
    return d


def expect_unmatched(got, rid, reason, filtered=None, count=1, **fields):
    """The unmatched event of rid (with `count` outcomes in all, the others confirmed)."""
    evs = got.get(rid, [])
    assert len(evs) == count, "%s: expected %d outcome(s), got %d: %s" % (rid, count, len(evs), _show(evs))
    um = [e for e in evs if e["type"] == UNMATCHED]
    assert len(um) == 1, "%s: expected one %s, got: %s" % (rid, UNMATCHED, _show(evs))
    e = um[0]
    d = e["data"]
    assert e["id"] == "%s/unmatched" % rid, "event id %r" % e["id"]
    assert d["reason"] == reason, "%s: reason %r, expected %r (%s)" % (rid, d["reason"], reason, _show([e]))
    if filtered is not None:
        assert d["filtered"] == filtered, "%s: filtered %r, expected %r (%s)" % (
            rid, d["filtered"], filtered, _show([e]))
    for k, v in fields.items():
        assert d.get(k) == v, "%s: %s is %r, expected %r (%s)" % (rid, k, d.get(k), v, _show([e]))
    return d


def _hash(env, key):
    flat = env.redis.cmd("HGETALL", key) or []
    return dict(zip(flat[0::2], flat[1::2]))


def vol(env, vid):
    """The vd:vol/<id> hash as a dict."""
    return _hash(env, "vd:vol/" + vid)


def req(env, rid):
    return _hash(env, "vd:req/" + rid)


def in_pool(env, vid, event_id=None):
    return env.redis.cmd("ZSCORE", pool_key(event_id), vid) is not None


def assert_held(env, vid, rid, event_id=None):
    h = vol(env, vid)
    assert h.get("task") == rid, "vd:vol/%s task is %r, expected %r" % (vid, h.get("task"), rid)
    assert not in_pool(env, vid, event_id), "%s holds %s but is still in %s" % (vid, rid, pool_key(event_id))


def assert_free(env, vid, event_id=None):
    h = vol(env, vid)
    assert h.get("task", "") == "", "vd:vol/%s holds %r, expected no task" % (vid, h.get("task"))
    assert in_pool(env, vid, event_id), "%s is not in %s" % (vid, pool_key(event_id))


def geopos(env, vid, event_id=None):
    pos = env.redis.cmd("GEOPOS", pool_key(event_id), vid)
    if not pos or pos[0] is None:
        return None
    lon, lat = (float(x) for x in pos[0])
    return lat, lon


# --------------------------------------------------------------------------------------------
# 1. Hundreds of volunteers and requests

def _disc(rng, centre, radius_m):
    r = radius_m * math.sqrt(rng.random())
    t = rng.random() * 2 * math.pi
    return offset_m(centre[0], centre[1], r * math.cos(t), r * math.sin(t))


def test_happy_path_hundreds():
    """300 volunteers and 250 requests within 2 km of Hohhot's centre: every request gets
    exactly one outcome, all confirmed, no volunteer twice; distance_m is the real distance
    of the two points (within 1 m) and at most radius_m; outputs are keyed by request_id with
    deterministic ids; one vd.notify.volunteer and one vd.notify.resident per confirmation;
    Redis: each confirmed volunteer is out of the pool and holds the request, the 50 others are
    pooled and free, each vd:req hash is confirmed and holds its volunteer."""
    rng = random.Random(20241205)
    vols = {"hp-v%03d" % i: _disc(rng, HOHHOT, 2000) for i in range(300)}
    reqs = {"hp-r%03d" % i: _disc(rng, HOHHOT, 2000) for i in range(250)}
    with vdtest.Env() as env:
        start_daemon(env)
        add_volunteers(env, [volunteer_available(v, *p) for v, p in vols.items()])
        until(lambda: None if env.redis.cmd("ZCARD", "vd:pool/city") == 300
              else "ZCARD vd:pool/city = %s" % env.redis.cmd("ZCARD", "vd:pool/city"),
              what="300 pooled volunteers")
        t0 = time.monotonic()
        env.send("requests", [request_created(r, *p, resident_id="res-" + r[3:])
                              for r, p in reqs.items()])
        got = wait_outcomes(env, {r: 1 for r in reqs}, timeout=120)
        vdtest.log("250 outcomes within %.2fs of producing the requests" % (time.monotonic() - t0))

        unmatched = [e for evs in got.values() for e in evs if e["type"] == UNMATCHED]
        assert not unmatched, "%d unmatched: %s" % (len(unmatched), _show(unmatched[:5]))
        assert set(got) == set(reqs), "outcomes for unknown requests: %s" % sorted(set(got) - set(reqs))[:5]
        assigned = {}
        for rid, (lat, lon) in reqs.items():
            e = the_outcome(got, rid)
            vid = e["data"]["volunteer_id"]
            d = check_confirmed_event(e, rid, vid)
            assert vid in vols, "%s confirmed unknown volunteer %s" % (rid, vid)
            assert vid not in assigned, "%s confirmed for both %s and %s" % (vid, assigned.get(vid), rid)
            assigned[vid] = rid
            near(d["distance_m"], distance_m(lat, lon, *vols[vid]), what="%s->%s distance_m" % (rid, vid))
            assert d["radius_m"] in (500, 1000, 2000, 4000, 5000), d
            assert d["service"] == "home_visit" and d["priority"] == "normal", d
            assert d["candidates_considered"] >= 1, d

        # Kafka keys: the request_id, for every output.
        for m in env.kafka.consume("assignments"):
            ev = json.loads(m["value_bytes"])
            assert m["key"] == ev["data"]["request_id"], "key %r for %s" % (m["key"], ev["id"])
        notes = wait_notifications(env, {"%s/notify-resident/%s" % (r, v): 1 for v, r in assigned.items()})
        by_type = {}
        for e in notes:
            by_type.setdefault(e["type"], []).append(e)
        assert sorted(by_type) == ["vd.notify.resident", "vd.notify.volunteer"], sorted(by_type)
        assert len(by_type["vd.notify.volunteer"]) == 250 and len(by_type["vd.notify.resident"]) == 250
        for e in by_type["vd.notify.resident"]:
            d = e["data"]
            assert assigned[d["volunteer_id"]] == d["request_id"], d
            assert d["resident_id"] == "res-" + d["request_id"][3:] and d["kind"] == "volunteer_confirmed", d
        for e in by_type["vd.notify.volunteer"]:
            d = e["data"]
            assert assigned[d["volunteer_id"]] == d["request_id"] and d["kind"] == "assigned", d

        # Redis: held volunteers are out of the pool and hold their request; the rest are free.
        order = sorted(vols)
        replies = env.redis.pipeline([c for v in order for c in (
            ("ZSCORE", "vd:pool/city", v), ("HGET", "vd:vol/" + v, "task"))])
        for i, v in enumerate(order):
            score, task = replies[2 * i], replies[2 * i + 1]
            if v in assigned:
                assert score is None, "%s (held by %s) is still in vd:pool/city" % (v, assigned[v])
                assert task == assigned[v], "vd:vol/%s task %r, expected %r" % (v, task, assigned[v])
            else:
                assert score is not None and task in ("", None), "free %s: pooled %s, task %r" % (v, score, task)
        assert env.redis.cmd("ZCARD", "vd:pool/city") == 50
        replies = env.redis.pipeline([("HMGET", "vd:req/" + r, "state", "held") for r in sorted(reqs)])
        for r, (state, held) in zip(sorted(reqs), replies):
            assert state == "confirmed" and held == got[r][0]["data"]["volunteer_id"], (r, state, held)

        # Still exactly one outcome each once everything above has settled.
        again = outcomes(env.events("assignments"))
        extra = {r: len(evs) for r, evs in again.items() if len(evs) != 1}
        assert not extra, "requests with more than one outcome: %s" % sorted(extra.items())[:10]


# --------------------------------------------------------------------------------------------
# 2. Nearest wins; the radius widens

def test_nearest_and_widening():
    """Nearest of 100/300/900 m wins, found at radius 500 (3 considered); a volunteer at 3 km is found
    at radius 4000 (500->1000->2000->4000); nobody within 5 km: unmatched
    no_volunteer_in_range at radius 5000 with a coordinator notification; max_distance_m 1500
    with a volunteer at 2 km: unmatched at radius 1500; max_distance_m 2500 and one at 1.8 km:
    confirmed at radius 2000; max_distance_m 8000 (beyond radius_max_m) is capped there: the
    volunteer at 7 km is not found."""
    a = [anchor(i) for i in range(6)]
    vols = {
        "nw-100": at(a[0], 100, 0), "nw-300": at(a[0], 0, 300), "nw-900": at(a[0], -900, 0),
        "nw-3k": at(a[1], 0, 3000),
        "nw-6k": at(a[2], 6000, 0),
        "nw-2k": at(a[3], 0, -2000),
        "nw-2k-ok": at(a[4], 0, 1800),
        "nw-7k": at(a[5], 7000, 0),
    }
    with vdtest.Env() as env:
        start_daemon(env)
        add_volunteers(env, [volunteer_available(v, *p) for v, p in vols.items()])
        env.send("requests", [
            request_created("nw-near", *a[0], resident_id="res-1", priority="urgent"),
            request_created("nw-widen", *a[1]),
            request_created("nw-none", *a[2], service="legal_aid"),
            request_created("nw-maxd", *a[3], max_distance_m=1500),
            request_created("nw-maxd-ok", *a[4], max_distance_m=2500),
            request_created("nw-maxd-wide", *a[5], max_distance_m=8000),
        ])
        got = wait_outcomes(env, {r: 1 for r in ("nw-near", "nw-widen", "nw-none", "nw-maxd",
                                                 "nw-maxd-ok", "nw-maxd-wide")})
        # The round weighs the request's 8 nearest (all three in range): nw-100 found at 500 m.
        d = expect_confirmed(got, "nw-near", "nw-100", radius_m=500, distance_m=100.0,
                             candidates_considered=3, priority="urgent", service="home_visit")
        oid = d["offer_id"]
        expect_confirmed(got, "nw-widen", "nw-3k", radius_m=4000, distance_m=3000.0,
                         candidates_considered=1)
        expect_unmatched(got, "nw-none", "no_volunteer_in_range", {}, radius_m=5000,
                         candidates_considered=0, volunteers_needed=1, volunteers_missing=1,
                         service="legal_aid")
        expect_unmatched(got, "nw-maxd", "no_volunteer_in_range", {}, radius_m=1500,
                         candidates_considered=0)
        expect_confirmed(got, "nw-maxd-ok", "nw-2k-ok", radius_m=2000, distance_m=1800.0)
        # max_distance_m narrows matching.radius_max_m, never widens it: one request must not
        # make a search cover the whole city.
        expect_unmatched(got, "nw-maxd-wide", "no_volunteer_in_range", {}, radius_m=5000,
                         candidates_considered=0)

        notes = wait_notifications(env, {"nw-near/notify-volunteer/nw-100": 1,
                                         "nw-near/notify-resident/nw-100": 1,
                                         "nw-none/notify-coordinator": 1,
                                         "nw-maxd/notify-coordinator": 1})
        by_id = {e["id"]: e for e in notes}
        n = by_id["nw-near/notify-volunteer/nw-100"]
        assert n["type"] == "vd.notify.volunteer" and n["data"]["kind"] == "assigned", n
        assert n["data"]["offer_id"] == oid and n["data"]["request_id"] == "nw-near", n
        n = by_id["nw-near/notify-resident/nw-100"]
        assert n["type"] == "vd.notify.resident" and n["data"]["resident_id"] == "res-1", n
        n = by_id["nw-none/notify-coordinator"]
        assert n["type"] == "vd.notify.coordinator", n
        assert n["data"]["reason"] == "no_volunteer_in_range" and n["data"]["volunteers_missing"] == 1, n
        assert n["data"]["service"] == "legal_aid", n
        assert not [e for e in notes if e["data"].get("request_id") == "nw-none"
                    and e["type"] != "vd.notify.coordinator"], "nw-none notified someone else"

        assert_held(env, "nw-100", "nw-near")
        for v in ("nw-300", "nw-900", "nw-6k", "nw-2k"):
            assert_free(env, v)
        assert req(env, "nw-none").get("state") == "unmatched"


# --------------------------------------------------------------------------------------------
# 3. Hard filters, with the exact `filtered` counts

def test_filters():
    """With --set matching.max_tasks_per_day=2. Skills (all required): a volunteer with only
    first_aid, or only sign_language, is skipped for [first_aid, sign_language] (filtered
    {skills: 1}); one with both serves it though a first_aid-only one is nearer. Languages (any
    one): [mn, en] is served by an mn speaker (not the nearer zh one) and by an en speaker,
    never by a zh-only one (filtered {languages: 1}). Fatigue: own cap 1, one task done ->
    filtered {fatigue: 1}; no own cap -> the default 2 applies on the third request; own cap 3
    beats the default 2 (third served, fourth filtered). Event scope: an event volunteer
    never serves a city request, a city volunteer never serves an event request (both
    no_volunteer_in_range: the pools are separate, filtered {}), an event volunteer serves their
    own event and the confirmation names it."""
    f = [anchor(i) for i in range(12)]
    with vdtest.Env() as env:
        start_daemon(env, args=["--set", "matching.max_tasks_per_day=2"])
        add_volunteers(env, [
            volunteer_available("sk-fa", *at(f[0], 100), skills=["first_aid"]),
            volunteer_available("sk-sl", *at(f[1], 100), skills=["sign_language"]),
            volunteer_available("sk-fa2", *at(f[2], 50), skills=["first_aid"]),
            volunteer_available("sk-both", *at(f[2], 0, 400),
                                skills=["driving", "sign_language", "first_aid"]),
            volunteer_available("lg-zh", *at(f[3], 50), languages=["zh"]),
            volunteer_available("lg-mn", *at(f[3], 0, 300), languages=["zh", "mn"]),
            volunteer_available("lg-zh2", *at(f[4], 100), languages=["zh"]),
            volunteer_available("lg-en", *at(f[5], 100), languages=["en"]),
            volunteer_available("ft-1", *at(f[6], 100), max_tasks_per_day=1),
            volunteer_available("ft-d", *at(f[7], 100)),
            volunteer_available("ft-3", *at(f[8], 100), max_tasks_per_day=3),
            volunteer_available("es-ev", *at(f[9], 100), event_id="expo-a"),
            volunteer_available("es-city", *at(f[9], 0, 300)),
            volunteer_available("es-ev2", *at(f[10], 100), event_id="expo-b"),
            volunteer_available("es-city3", *at(f[11], 100)),
            volunteer_available("es-other", *at(f[11], 0, 100), event_id="expo-b"),
        ])
        two = ["first_aid", "sign_language"]
        env.send("requests", [
            request_created("sk-r1", *f[0], skills=two),
            request_created("sk-r2", *f[1], skills=two),
            request_created("sk-r3", *f[2], skills=two),
            request_created("lg-r1", *f[3], languages=["mn", "en"]),
            request_created("lg-r2", *f[4], languages=["mn", "en"]),
            request_created("lg-r3", *f[5], languages=["mn", "en"]),
            request_created("ft-1a", *f[6]),
            request_created("ft-da", *f[7]),
            request_created("ft-3a", *f[8]),
            request_created("es-r-city", *f[9]),
            request_created("es-r-ev", *f[9], event_id="expo-a", service="event_support"),
            request_created("es-r-city2", *f[10]),
            request_created("es-r-ev3", *f[11], event_id="expo-c", service="event_support"),
        ])
        got = wait_outcomes(env, {r: 1 for r in ("sk-r1", "sk-r2", "sk-r3", "lg-r1", "lg-r2",
                                                 "lg-r3", "ft-1a", "ft-da", "ft-3a", "es-r-city",
                                                 "es-r-ev", "es-r-city2", "es-r-ev3")})
        expect_unmatched(got, "sk-r1", "no_eligible_volunteer", {"skills": 1},
                         candidates_considered=1, radius_m=5000)
        expect_unmatched(got, "sk-r2", "no_eligible_volunteer", {"skills": 1},
                         candidates_considered=1, radius_m=5000)
        expect_confirmed(got, "sk-r3", "sk-both", distance_m=400.0)
        expect_confirmed(got, "lg-r1", "lg-mn", distance_m=300.0, candidates_considered=2)
        expect_unmatched(got, "lg-r2", "no_eligible_volunteer", {"languages": 1},
                         candidates_considered=1, radius_m=5000)
        expect_confirmed(got, "lg-r3", "lg-en", distance_m=100.0)
        expect_confirmed(got, "ft-1a", "ft-1")
        expect_confirmed(got, "ft-da", "ft-d")
        expect_confirmed(got, "ft-3a", "ft-3")
        expect_confirmed(got, "es-r-city", "es-city", distance_m=300.0)
        d = expect_confirmed(got, "es-r-ev", "es-ev", distance_m=100.0, event_id="expo-a")
        assert d["service"] == "event_support", d
        expect_unmatched(got, "es-r-city2", "no_volunteer_in_range", {}, candidates_considered=0,
                         radius_m=5000)
        expect_unmatched(got, "es-r-ev3", "no_volunteer_in_range", {}, candidates_considered=0,
                         radius_m=5000)
        for v in ("sk-fa", "sk-sl", "sk-fa2", "lg-zh", "lg-zh2", "es-city3"):
            assert_free(env, v)
        assert_free(env, "es-ev2", "expo-b")
        assert_free(env, "es-other", "expo-b")
        assert not in_pool(env, "es-ev2") and not in_pool(env, "es-city3", "expo-b")
        assert_held(env, "es-ev", "es-r-ev", "expo-a")
        assert vol(env, "sk-both").get("skills") == "driving,sign_language,first_aid"
        assert env.redis.cmd("ZSCORE", "vd:pool/city/s/sign_language", "sk-both") is None, \
            "held sk-both is still in the sign_language skill pool"

        # Fatigue, round 2: ft-1 (cap 1) is tired; ft-d (default 2) and ft-3 (cap 3) are not.
        complete_tasks(env, [("ft-1a", "ft-1"), ("ft-da", "ft-d"), ("ft-3a", "ft-3")])
        env.send("requests", [request_created("ft-1b", *f[6]), request_created("ft-db", *f[7]),
                              request_created("ft-3b", *f[8])])
        got = wait_outcomes(env, {"ft-1b": 1, "ft-db": 1, "ft-3b": 1})
        expect_unmatched(got, "ft-1b", "no_eligible_volunteer", {"fatigue": 1},
                         candidates_considered=1)
        expect_confirmed(got, "ft-db", "ft-d")
        expect_confirmed(got, "ft-3b", "ft-3")
        assert_free(env, "ft-1")

        # Round 3: ft-d reached the configured default (2); ft-3's own cap (3) wins over it.
        complete_tasks(env, [("ft-db", "ft-d"), ("ft-3b", "ft-3")])
        env.send("requests", [request_created("ft-dc", *f[7]), request_created("ft-3c", *f[8])])
        got = wait_outcomes(env, {"ft-dc": 1, "ft-3c": 1})
        expect_unmatched(got, "ft-dc", "no_eligible_volunteer", {"fatigue": 1},
                         candidates_considered=1)
        expect_confirmed(got, "ft-3c", "ft-3")

        # Round 4: ft-3 reached their own cap.
        complete_tasks(env, [("ft-3c", "ft-3")])
        env.send("requests", [request_created("ft-3d", *f[8])])
        got = wait_outcomes(env, {"ft-3d": 1})
        expect_unmatched(got, "ft-3d", "no_eligible_volunteer", {"fatigue": 1},
                         candidates_considered=1)
        counts = env.redis.pipeline([("ZCARD", "vd:tasks/" + v) for v in ("ft-1", "ft-d", "ft-3")])
        assert counts == [1, 2, 3], "tasks in the last 24 h (ft-1, ft-d, ft-3): %s" % counts
        for v in ("ft-1", "ft-d", "ft-3"):
            assert_free(env, v)


# --------------------------------------------------------------------------------------------
# 4. Score shading: preferred volunteer, tasks today

def _give_tasks(env, vid, place, n, prefix):
    """Gives vid n tasks today: n requests at place (vid must be the only volunteer near),
    each completed before the next."""
    for i in range(n):
        rid = "%s-%d" % (prefix, i)
        env.send("requests", [request_created(rid, *place)])
        got = wait_outcomes(env, {rid: 1})
        expect_confirmed(got, rid, vid)
        complete_tasks(env, [(rid, vid)])


def test_score_shading():
    """preferred_volunteer_id at 350 m beats a stranger at 200 m (300 m of shading), but not one
    at 20 m; the confirmation reports the real distance. A volunteer with 2 tasks today (300 m
    of shade) at 100 m loses to a fresh one at 300 m, but beats a fresh one at 450 m."""
    s = [anchor(i) for i in range(4)]
    with vdtest.Env() as env:
        start_daemon(env)
        add_volunteers(env, [
            volunteer_available("pf-a", *at(s[0], 0, 350)),
            volunteer_available("st-a", *at(s[0], 200, 0)),
            volunteer_available("pf-b", *at(s[1], 0, 350)),
            volunteer_available("st-b", *at(s[1], 20, 0)),
            volunteer_available("td-a", *at(s[2], 100, 0)),
            volunteer_available("td-b", *at(s[3], 100, 0)),
        ])
        env.send("requests", [request_created("sc-r1", *s[0], preferred_volunteer_id="pf-a"),
                              request_created("sc-r2", *s[1], preferred_volunteer_id="pf-b")])
        # Two tasks each for td-a and td-b, one after the other, at their own places.
        for i in range(2):
            rids = ["td-a-%d" % i, "td-b-%d" % i]
            env.send("requests", [request_created(rids[0], *at(s[2], 100, 0)),
                                  request_created(rids[1], *at(s[3], 100, 0))])
            got = wait_outcomes(env, {r: 1 for r in rids})
            expect_confirmed(got, rids[0], "td-a", distance_m=0.0)
            expect_confirmed(got, rids[1], "td-b", distance_m=0.0)
            complete_tasks(env, [(rids[0], "td-a"), (rids[1], "td-b")])
        got = wait_outcomes(env, {"sc-r1": 1, "sc-r2": 1})
        expect_confirmed(got, "sc-r1", "pf-a", distance_m=350.0, candidates_considered=2)
        expect_confirmed(got, "sc-r2", "st-b", distance_m=20.0, candidates_considered=2)
        assert_free(env, "st-a")
        assert_free(env, "pf-b")

        counts = env.redis.pipeline([("ZCARD", "vd:tasks/td-a"), ("ZCARD", "vd:tasks/td-b")])
        assert counts == [2, 2], counts
        add_volunteers(env, [volunteer_available("fr-a", *at(s[2], 0, 300)),
                             volunteer_available("fr-b", *at(s[3], 0, 450))])
        env.send("requests", [request_created("sc-r3", *s[2]), request_created("sc-r4", *s[3])])
        got = wait_outcomes(env, {"sc-r3": 1, "sc-r4": 1})
        # td-a: 100 + 2 * 150 = 400 > fr-a: 300.  td-b: 400 < fr-b: 450.
        expect_confirmed(got, "sc-r3", "fr-a", distance_m=300.0)
        expect_confirmed(got, "sc-r4", "td-b", distance_m=100.0)
        assert_free(env, "td-a")
        assert_free(env, "fr-b")


def test_score_shading_across_radius_ring():
    """The score must not depend on where the first search ring (radius_start_m = 500) falls.
    A preferred volunteer at 600 m (score 300) must beat a stranger at 400 m (score 400), just
    as one at 350 m beats one at 200 m; a fresh volunteer at 600 m (score 600) must beat one
    at 400 m with 2 tasks today (400 + 300 = 700), just as fresh at 300 m beats tired at 100 m."""
    r = [anchor(i) for i in range(2)]
    with vdtest.Env() as env:
        start_daemon(env)
        add_volunteers(env, [
            volunteer_available("rg-pf", *at(r[0], 0, 600)),
            volunteer_available("rg-st", *at(r[0], 400, 0)),
            volunteer_available("rg-td", *at(r[1], 400, 0)),
        ])
        _give_tasks(env, "rg-td", at(r[1], 400, 0), 2, "rg-td-task")
        add_volunteers(env, [volunteer_available("rg-fr", *at(r[1], 0, 600))])
        env.send("requests", [request_created("rg-r1", *r[0], preferred_volunteer_id="rg-pf"),
                              request_created("rg-r2", *r[1])])
        got = wait_outcomes(env, {"rg-r1": 1, "rg-r2": 1})
        wrong = []
        for rid, want in (("rg-r1", "rg-pf"), ("rg-r2", "rg-fr")):
            e = the_outcome(got, rid)
            if e["type"] != CONFIRMED or e["data"]["volunteer_id"] != want:
                wrong.append("%s: expected %s, got %s" % (rid, want, _show([e])))
        assert not wrong, "; ".join(wrong)


# --------------------------------------------------------------------------------------------
# 5. Several volunteers per request

def test_volunteers_needed():
    """volunteers_needed 3 with 5 eligible: the 3 nearest, distinct, each confirmed and held,
    the request's Redis record holds all 3. volunteers_needed 3 with 2 eligible (mn) and a
    nearer zh-only one: 2 confirmed and one unmatched no_eligible_volunteer with
    volunteers_needed 3, volunteers_missing 1, filtered {languages: 1}, 3 considered, and a
    coordinator notification with volunteers_missing 1."""
    n = [anchor(i) for i in range(2)]
    with vdtest.Env() as env:
        start_daemon(env)
        add_volunteers(env, [volunteer_available("nd-%d" % i, *at(n[0], 50 * (i + 1), 0))
                             for i in range(1, 6)] + [
            volunteer_available("np-1", *at(n[1], 100, 0), languages=["mn"]),
            volunteer_available("np-2", *at(n[1], 0, 200), languages=["zh", "mn"]),
            volunteer_available("np-zh", *at(n[1], -50, 0), languages=["zh"]),
        ])
        env.send("requests", [request_created("nd-r1", *n[0], volunteers_needed=3),
                              request_created("nd-r2", *n[1], volunteers_needed=3,
                                              languages=["mn"])])
        got = wait_outcomes(env, {"nd-r1": 3, "nd-r2": 3})
        evs = got["nd-r1"]
        assert len(evs) == 3 and all(e["type"] == CONFIRMED for e in evs), _show(evs)
        vids = sorted(e["data"]["volunteer_id"] for e in evs)
        assert vids == ["nd-1", "nd-2", "nd-3"], "nd-r1 got %s, expected the 3 nearest" % vids
        for e in evs:
            v = e["data"]["volunteer_id"]
            check_confirmed_event(e, "nd-r1", v)
            near(e["data"]["distance_m"], 50.0 * (int(v[3:]) + 1))
            assert_held(env, v, "nd-r1")
        assert_free(env, "nd-4")
        assert_free(env, "nd-5")
        rec = req(env, "nd-r1")
        assert rec.get("state") == "confirmed" and sorted(rec.get("held", "").split(",")) == vids, rec

        evs = got["nd-r2"]
        conf = sorted(e["data"]["volunteer_id"] for e in evs if e["type"] == CONFIRMED)
        assert conf == ["np-1", "np-2"], "nd-r2 confirmed %s: %s" % (conf, _show(evs))
        for e in evs:
            if e["type"] == CONFIRMED:
                check_confirmed_event(e, "nd-r2", e["data"]["volunteer_id"])
        expect_unmatched(got, "nd-r2", "no_eligible_volunteer", {"languages": 1}, count=3,
                         volunteers_needed=3, volunteers_missing=1, candidates_considered=3,
                         radius_m=5000)
        assert_held(env, "np-1", "nd-r2")
        assert_held(env, "np-2", "nd-r2")
        assert_free(env, "np-zh")
        rec = req(env, "nd-r2")
        assert rec.get("state") == "unmatched" and sorted(rec.get("held", "").split(",")) == conf, rec

        notes = wait_notifications(env, dict([("nd-r1/notify-volunteer/%s" % v, 1) for v in vids] +
                                             [("nd-r2/notify-coordinator", 1)]))
        coord = [e for e in notes if e["id"] == "nd-r2/notify-coordinator"][0]
        assert coord["data"]["volunteers_missing"] == 1 and \
            coord["data"]["reason"] == "no_eligible_volunteer", coord
        assert not [e for e in notes if e["id"] == "nd-r1/notify-coordinator"]


# --------------------------------------------------------------------------------------------
# 6. Duplicated requests

def _renew(e):
    """The same event as a client retry would send it: a new CloudEvents id and time."""
    c = json.loads(json.dumps(e))
    c["id"] = vdtest.new_id("retry")
    c["time"] = vdtest.now_rfc3339()
    return c


def _same_id_same_data(evs):
    """For events sharing an id, the differences of their data from the first one's."""
    first, diffs = {}, []
    for e in evs:
        d0 = first.setdefault(e["id"], e["data"])
        changed = {k: (d0.get(k), e["data"].get(k)) for k in set(d0) | set(e["data"])
                   if d0.get(k) != e["data"].get(k)}
        if changed:
            diffs.append("%s: %s" % (e["id"], ", ".join(
                "%s %r -> %r" % (k, a, b) for k, (a, b) in sorted(changed.items()))))
    return diffs


def _copies_confirmed(got, rid, vid, n, distance):
    """rid has n outcome events, each confirming vid at `distance` m (within 1 m); returns the
    data of the first."""
    evs = got[rid]
    assert len(evs) == n, _show(evs)
    for e in evs:
        check_confirmed_event(e, rid, vid, within_radius=False)
        near(e["data"]["distance_m"], distance)
    return evs[0]["data"]


def test_duplicate_requests():
    """The same vd.request.created twice in a row, then again with a new CloudEvents id: the
    same outcome every time (same volunteer, same event ids and offer_id, same distance), one
    volunteer held (Redis: one in the request's held list, one task in 24 h, the other
    volunteer free). The same for a request needing 2 volunteers, for an unmatched one and
    for one matched at a widened radius (2000). A duplicate arriving after the task was
    completed republishes the recorded outcome and holds nobody again."""
    d = [anchor(i) for i in range(4)]
    with vdtest.Env() as env:
        start_daemon(env)
        add_volunteers(env, [
            volunteer_available("dp-a", *at(d[0], 100, 0)),
            volunteer_available("dp-b", *at(d[0], 0, 200)),
            volunteer_available("dp-c", *at(d[1], 100, 0)),
            volunteer_available("dp-d", *at(d[1], 0, 200)),
            volunteer_available("dp-e", *at(d[1], -300, 0)),
            volunteer_available("dp-f", *at(d[3], 0, 1500)),
        ])
        e1 = request_created("dp-r1", *d[0], resident_id="res-dp")
        e2 = request_created("dp-r2", *d[1], volunteers_needed=2)
        e3 = request_created("dp-r3", *d[2])
        e4 = request_created("dp-r4", *d[3])
        env.send("requests", [e1, e1, e2, e2, e3, e3, e4, e4])
        got = wait_outcomes(env, {"dp-r1": 2, "dp-r2": 4, "dp-r3": 2, "dp-r4": 2})
        env.send("requests", [_renew(e1), _renew(e2), _renew(e3), _renew(e4)])
        got = wait_outcomes(env, {"dp-r1": 3, "dp-r2": 6, "dp-r3": 3, "dp-r4": 3})

        first = _copies_confirmed(got, "dp-r1", "dp-a", 3, 100.0)
        evs = got["dp-r1"]
        assert len({e["data"]["offer_id"] for e in evs}) == 1, _show(evs)
        assert first["radius_m"] == 500 and first["candidates_considered"] == 2, first
        evs = got["dp-r2"]
        assert len(evs) == 6 and all(e["type"] == CONFIRMED for e in evs), _show(evs)
        assert sorted({e["id"] for e in evs}) == ["dp-r2/confirmed/dp-c", "dp-r2/confirmed/dp-d"], _show(evs)
        for e in evs:
            check_confirmed_event(e, "dp-r2", e["data"]["volunteer_id"], within_radius=False)
        evs = got["dp-r3"]
        assert len(evs) == 3 and all(e["type"] == UNMATCHED and e["id"] == "dp-r3/unmatched"
                                     for e in evs), _show(evs)
        assert evs[0]["data"]["reason"] == "no_volunteer_in_range", _show(evs)
        first = _copies_confirmed(got, "dp-r4", "dp-f", 3, 1500.0)
        assert first["radius_m"] == 2000 and first["candidates_considered"] == 1, _show(
            got["dp-r4"])

        assert_held(env, "dp-a", "dp-r1")
        assert_free(env, "dp-b")
        assert_held(env, "dp-c", "dp-r2")
        assert_held(env, "dp-d", "dp-r2")
        assert_free(env, "dp-e")
        assert_held(env, "dp-f", "dp-r4")
        assert req(env, "dp-r1").get("held") == "dp-a", req(env, "dp-r1")
        assert sorted(req(env, "dp-r2").get("held", "").split(",")) == ["dp-c", "dp-d"]
        assert req(env, "dp-r4").get("held") == "dp-f", req(env, "dp-r4")
        vids = ("dp-a", "dp-b", "dp-c", "dp-d", "dp-e", "dp-f")
        counts = env.redis.pipeline([("ZCARD", "vd:tasks/" + v) for v in vids])
        assert counts == [1, 0, 1, 1, 0, 1], "tasks of %s: %s" % (vids, counts)
        notes = wait_notifications(env, {"dp-r1/notify-resident/dp-a": 3, "dp-r3/notify-coordinator": 3})
        ids = {e["id"] for e in notes if e["data"].get("request_id") == "dp-r1"}
        assert ids == {"dp-r1/notify-resident/dp-a", "dp-r1/notify-volunteer/dp-a"}, ids

        # After the task is done, a late duplicate republishes the outcome and holds nobody.
        complete_tasks(env, [("dp-r1", "dp-a")])
        env.send("requests", [_renew(e1)])
        got = wait_outcomes(env, {"dp-r1": 4})
        evs = got["dp-r1"]
        assert len(evs) == 4 and {e["id"] for e in evs} == {"dp-r1/confirmed/dp-a"}, _show(evs)
        assert_free(env, "dp-a")
        assert env.redis.cmd("ZCARD", "vd:tasks/dp-a") == 1


def test_replayed_outcome_has_the_same_data():
    """A duplicated vd.request.created republishes its outcome under the same event ids; a
    consumer that deduplicates by id keeps whichever copy it saw first, so every copy must
    carry the same data. Checked for a match at radius 500 (2 considered), one at a widened
    radius (2000), and a partial match (2 needed, 1 eligible: confirmed + unmatched), each
    sent twice in a row and once more with a new CloudEvents id; notifications too."""
    d = [anchor(i) for i in range(3)]
    with vdtest.Env() as env:
        start_daemon(env)
        add_volunteers(env, [
            volunteer_available("rp-a", *at(d[0], 100, 0)),
            volunteer_available("rp-b", *at(d[0], 0, 200)),
            volunteer_available("rp-f", *at(d[1], 0, 1500)),
            volunteer_available("rp-g", *at(d[2], 100, 0)),
        ])
        evs = [request_created("rp-r1", *d[0]), request_created("rp-r2", *d[1]),
               request_created("rp-r3", *d[2], volunteers_needed=2)]
        env.send("requests", [e for e in evs for _ in (0, 1)])
        wait_outcomes(env, {"rp-r1": 2, "rp-r2": 2, "rp-r3": 4})
        env.send("requests", [_renew(e) for e in evs])
        got = wait_outcomes(env, {"rp-r1": 3, "rp-r2": 3, "rp-r3": 6})
        first = {rid: got[rid][0]["data"] for rid in ("rp-r1", "rp-r2")}
        assert first["rp-r1"]["volunteer_id"] == "rp-a" and first["rp-r1"]["radius_m"] == 500 \
            and first["rp-r1"]["candidates_considered"] == 2, first
        assert first["rp-r2"]["volunteer_id"] == "rp-f" and first["rp-r2"]["radius_m"] == 2000 \
            and first["rp-r2"]["candidates_considered"] == 1, first
        assert {e["id"] for e in got["rp-r3"]} == {"rp-r3/confirmed/rp-g", "rp-r3/unmatched"}, \
            _show(got["rp-r3"])
        assert_held(env, "rp-a", "rp-r1")
        assert_free(env, "rp-b")
        diffs = []
        for rid in ("rp-r1", "rp-r2", "rp-r3"):
            diffs += _same_id_same_data(got[rid])
        notes = wait_notifications(env, {"rp-r3/notify-coordinator": 3})
        diffs += _same_id_same_data([e for e in notes if e["data"].get("request_id", "").startswith("rp-")])
        assert not diffs, "republished events differ from the first with the same id: " + "; ".join(diffs)


# --------------------------------------------------------------------------------------------
# 7. Volunteer updates

def test_volunteer_updates():
    """vd.volunteer.location moves a pooled volunteer, in their skill pool too (a request at the
    old place is unmatched, a first_aid request near the new place gets them at the new
    distance) and a held one (stored, used when they rejoin the pool); vd.volunteer.unavailable takes one out of the pool (request
    unmatched, no_volunteer_in_range; avail 0) and available brings them back;
    vd.volunteer.available again with other skills and languages replaces them (the old
    skill pool no longer has them: a first_aid request is unmatched with filtered
    {skills: 1}; a driving + mn request gets them)."""
    u = [anchor(i) for i in range(5)]
    with vdtest.Env() as env:
        start_daemon(env)
        add_volunteers(env, [
            volunteer_available("up-mv", *at(u[0], 100, 0), skills=["first_aid"]),
            volunteer_available("up-gone", *at(u[2], 100, 0)),
            volunteer_available("up-re", *at(u[3], 100, 0), skills=["first_aid"], languages=["zh"]),
        ])
        assert env.redis.cmd("ZSCORE", "vd:pool/city/s/first_aid", "up-re") is not None

        new_mv = at(u[1], 0, 100)
        env.send("volunteers", [vdtest.volunteer_location("up-mv", *new_mv),
                                vdtest.volunteer_unavailable("up-gone"),
                                volunteer_available("up-re", *at(u[3], 100, 0), skills=["driving"],
                                                    languages=["mn"])])

        def updated():
            pos = geopos(env, "up-mv")
            if pos is None or distance_m(pos[0], pos[1], *new_mv) > 1.0:
                return "up-mv at %s, not yet at %s" % (pos, new_mv)
            if in_pool(env, "up-gone") or vol(env, "up-gone").get("avail") != "0":
                return "up-gone still available: %s" % vol(env, "up-gone")
            if vol(env, "up-re").get("skills") != "driving":
                return "up-re: %s" % vol(env, "up-re")
            return None
        until(updated, what="volunteer updates applied")
        h = vol(env, "up-re")
        assert h.get("languages") == "mn" and h.get("avail") == "1", h
        assert env.redis.cmd("ZSCORE", "vd:pool/city/s/first_aid", "up-re") is None, \
            "up-re is still in the first_aid skill pool"
        assert env.redis.cmd("ZSCORE", "vd:pool/city/s/driving", "up-re") is not None
        assert in_pool(env, "up-re")
        h = vol(env, "up-mv")
        near(distance_m(float(h["lat"]), float(h["lon"]), *new_mv), 0.0, 0.1, "stored location offset")
        pos = env.redis.cmd("GEOPOS", "vd:pool/city/s/first_aid", "up-mv")[0]
        near(distance_m(float(pos[1]), float(pos[0]), *new_mv), 0.0, 1.0, "first_aid pool position offset")

        env.send("requests", [
            request_created("up-r-old", *u[0]),
            request_created("up-r-new", *u[1], skills=["first_aid"]),
            request_created("up-r-gone", *u[2]),
            request_created("up-r-fa", *u[3], skills=["first_aid"]),
        ])
        got = wait_outcomes(env, {r: 1 for r in ("up-r-old", "up-r-new", "up-r-gone", "up-r-fa")})
        expect_unmatched(got, "up-r-old", "no_volunteer_in_range", {}, candidates_considered=0)
        expect_confirmed(got, "up-r-new", "up-mv", distance_m=100.0, radius_m=500)
        expect_unmatched(got, "up-r-gone", "no_volunteer_in_range", {}, candidates_considered=0)
        expect_unmatched(got, "up-r-fa", "no_eligible_volunteer", {"skills": 1},
                         candidates_considered=1)
        assert_free(env, "up-re")

        # up-mv is held: a move is stored and applies when they rejoin the pool.
        moved = at(u[4], 50, 0)
        env.send("volunteers", [vdtest.volunteer_location("up-mv", *moved),
                                volunteer_available("up-gone", *at(u[2], 100, 0))])
        env.send("requests", [request_created("up-r-dr", *u[3], skills=["driving"],
                                              languages=["en", "mn"])])

        def stored():
            h = vol(env, "up-mv")
            if distance_m(float(h["lat"]), float(h["lon"]), *moved) > 0.1:
                return "up-mv stored at %s,%s" % (h["lat"], h["lon"])
            return None
        until(stored, what="the held volunteer's new location")
        assert_held(env, "up-mv", "up-r-new")
        wait_pooled(env, [("up-gone", None)])
        complete_tasks(env, [("up-r-new", "up-mv")])
        pos = geopos(env, "up-mv")
        near(distance_m(pos[0], pos[1], *moved), 0.0, 1.0, "up-mv pooled position offset")
        env.send("requests", [request_created("up-r-moved", *u[4], skills=["first_aid"]),
                              request_created("up-r-back", *u[2])])
        got = wait_outcomes(env, {"up-r-dr": 1, "up-r-moved": 1, "up-r-back": 1})
        expect_confirmed(got, "up-r-dr", "up-re", distance_m=100.0)
        expect_confirmed(got, "up-r-moved", "up-mv", distance_m=50.0)
        expect_confirmed(got, "up-r-back", "up-gone", distance_m=100.0)


# --------------------------------------------------------------------------------------------
# 8. Deadlines

def test_expired_and_not_before():
    """expires_at in the past: unmatched, reason expired, nobody considered or held, with
    volunteers_missing = volunteers_needed and a coordinator notification; Redis says
    expired. not_before in the past and a future expires_at: matched at once. not_before an
    hour ahead: scheduled, nobody held, no outcome yet (test_offers follows one to its start).
    The daemon keeps running without error logs."""
    x = anchor(0)
    with vdtest.Env() as env:
        daemon = start_daemon(env)
        add_volunteers(env, [volunteer_available("ex-%d" % i, *at(x, 100 * i, 0)) for i in (1, 2, 3)])
        env.send("requests", [
            request_created("ex-r-past", *x, expires_at=vdtest.now_rfc3339(-60)),
            request_created("ex-r-past2", *x, volunteers_needed=2, priority="high",
                            not_before="2019-12-31T08:00:00+08:00",
                            expires_at="2020-01-01T08:00:00+08:00"),
            request_created("ex-r-nb", *x, not_before=vdtest.now_rfc3339(3600),
                            expires_at=vdtest.now_rfc3339(7200)),
            request_created("ex-r-nb-past", *x, not_before=vdtest.now_rfc3339(-3600)),
            request_created("ex-r-future", *x, expires_at=vdtest.now_rfc3339(3600)),
        ])
        got = wait_outcomes(env, {r: 1 for r in ("ex-r-past", "ex-r-past2",
                                                 "ex-r-nb-past", "ex-r-future")})
        expect_unmatched(got, "ex-r-past", "expired", {}, candidates_considered=0,
                         volunteers_needed=1, volunteers_missing=1)
        expect_unmatched(got, "ex-r-past2", "expired", {}, candidates_considered=0,
                         volunteers_needed=2, volunteers_missing=2, priority="high")
        held = []
        for rid in ("ex-r-nb-past", "ex-r-future"):
            e = the_outcome(got, rid)
            assert e["type"] == CONFIRMED, "%s: %s" % (rid, _show([e]))
            check_confirmed_event(e, rid, e["data"]["volunteer_id"])
            held.append(e["data"]["volunteer_id"])
        assert sorted(held) == ["ex-1", "ex-2"], held
        for r in ("ex-r-past", "ex-r-past2"):
            rec = req(env, r)
            assert rec.get("state") == "expired" and rec.get("held", "") == "", (r, rec)
        rec = req(env, "ex-r-nb")
        assert rec.get("state") == "scheduled" and rec.get("held", "") == "" and not got.get("ex-r-nb"), rec
        assert env.redis.cmd("ZSCORE", "vd:due", "ex-r-nb") is not None
        notes = wait_notifications(env, {"ex-r-past/notify-coordinator": 1,
                                         "ex-r-past2/notify-coordinator": 1})
        for e in notes:
            if e["id"] == "ex-r-past2/notify-coordinator":
                assert e["data"]["reason"] == "expired" and e["data"]["volunteers_missing"] == 2, e
        assert daemon.running(), "the daemon exited with %s" % daemon.returncode
        errors = daemon.find_log(level="error")
        assert not errors, "error log lines: %s" % errors[:3]


if __name__ == "__main__":
    vdtest.main(globals())
