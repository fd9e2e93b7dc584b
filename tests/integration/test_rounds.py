"""Matching rounds: the greatest need served first, the least travel, continuity, open places.

Runs the real vdispatchd against the harness's redis-server and Kafka mock:

  test_greatest_need_first     10 volunteers, 30 requests in one neighbourhood: the 20 low
                               ones first and nearer, then 10 urgent ones of residents who are
                               90, alone, low-income and disabled: the 10 urgent are served;
                               the others end unmatched, lost_to_greater_need
  test_least_total_travel      two requests, two volunteers, where each request's nearest is
                               the other's only good one: the pair that travels least, also
                               when each request first sees only its nearest (the round widens)
  test_rounds_grow_under_load  a burst of 300: rounds of many, far fewer Redis calls than
                               requests; every fact published is then settled in Redis (the
                               settles held while a round's call is in Redis are all sent)
  test_continuity              the volunteer who last served a resident is preferred next time
  test_open_place_nudged       offer mode: a request waits with an open place, at no cost (no
                               rounds); a volunteer who comes near is offered it at once
  test_round_of_one            a lone request is claimed in its round's own call (no claim
                               call) when its choice is certain, and goes through the solve,
                               a widening and a claim when a volunteer further out could still
                               cost less; a new request with nobody in range ends in its round
                               call
  test_empty_pool_surge        600 requests into an empty pool, with volunteers joining halfway
                               (the pool's rounds overlap while it is empty): every request has
                               one outcome, each volunteer is confirmed once, every fact settled

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_rounds.py [TEST_NAME ...]
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402
from test_faults import check_outcomes  # noqa: E402
from test_lifecycle import (add_volunteers, confirm, no_dead_letters, place, pooled,  # noqa: E402
                            start, vol, wait_events, wait_metric)
from test_ops import wait_all_outcomes  # noqa: E402
from vdtest import metrics  # noqa: E402

SCALE = vdtest.TIMEOUT_SCALE
FRAIL = {"age": 90, "lives_alone": True, "low_income": True, "disability": True}


def test_greatest_need_first():
    with vdtest.Env() as env:
        d = start(env, **{"matching.offer_timeout_ms": 0, "matching.batch_window_ms": int(1500 * SCALE)})
        add_volunteers(env, [("gn-v%02d" % i, place(0, 40 * i, 0), {}) for i in range(10)])
        low = [vdtest.request_created("gn-low-%02d" % i, *place(0, 20 * i, 30), priority="low")
               for i in range(20)]
        urgent = [vdtest.request_created("gn-urg-%02d" % i, *place(0, 30 * i, 600), priority="urgent",
                                         vulnerability=FRAIL) for i in range(10)]
        # The low ones first (they are nearer), then the urgent ones, within one window.
        env.send("requests", low)
        env.send("requests", urgent)
        rids = [e["data"]["request_id"] for e in low + urgent]
        got = wait_all_outcomes(env, rids)
        served = sorted(r for r, evs in got.items() if evs[0]["type"] == "vd.assignment.confirmed")
        vdtest.log("served: %s" % served)
        assert served == sorted(e["data"]["request_id"] for e in urgent), \
            "served %s, not the 10 in greatest need" % served
        for e in low:
            out = got[e["data"]["request_id"]][0]
            assert out["type"] == "vd.request.unmatched", out
            assert out["data"]["reason"] == "lost_to_greater_need", out["data"]
            assert out["data"]["filtered"].get("lost_to_greater_need", 0) >= 1, out["data"]
        note = wait_events(env, "notifications", "vd.notify.coordinator", request_id="gn-low-00")[0]
        assert note["data"]["reason"] == "lost_to_greater_need", note
        m = metrics(d)
        vdtest.log("rounds %d for %d requests; %d Redis calls" % (
            m["vd_rounds_total"], len(rids), m["vd_redis_calls_total"]))
        _, chosen = check_outcomes(env, rids)
        no_dead_letters(env)


def test_least_total_travel():
    # r1 has a at 100 m and b at 300 m; r2 has a at 120 m and b at 2,000 m. Nearest-first
    # (r1 takes a) makes r2 travel 2 km: 2,100 m in all; the best is r1-b, r2-a: 420 m. With
    # matching.candidates 1 each request first sees only a: the round widens the one left
    # without (one more Redis call) before anything is offered.
    for cands in (8, 1):
        with vdtest.Env() as env:
            d = start(env, **{"matching.offer_timeout_ms": 0, "matching.candidates": cands,
                              "matching.batch_window_ms": int(1000 * SCALE)})
            r1, r2 = place(0), place(0, 0, 220)
            add_volunteers(env, [("lt-a", place(0, 0, 100), {}), ("lt-b", place(0, 0, -300), {})])
            env.send("requests", [vdtest.request_created("lt-r1", *r1), vdtest.request_created("lt-r2", *r2)])
            got = wait_all_outcomes(env, ["lt-r1", "lt-r2"])
            who = {r: evs[0]["data"].get("volunteer_id") for r, evs in got.items()}
            assert who == {"lt-r1": "lt-b", "lt-r2": "lt-a"}, (cands, who)
            total = sum(evs[0]["data"]["distance_m"] for evs in got.values())
            assert abs(total - 420) < 2, total
            m = metrics(d)
            widen = m['vd_redis_calls_by_kind_total{kind="widen"}']
            vdtest.log("candidates %d: %.0f m in all, %d round(s), %d widen call(s)"
                       % (cands, total, m["vd_rounds_total"], widen))
            assert m["vd_rounds_total"] == 1 and widen == (1 if cands == 1 else 0), m


def wait_settled(env, rids):
    """Every fact of the requests reached Kafka and Redis was told so (`pub` caught up with
    `seq`): nothing is left for a later step to publish again."""
    def behind():
        rows = env.redis.pipeline([("HMGET", "vd:req/" + r, "seq", "pub") for r in rids])
        return ["%s seq %s pub %s" % (r, seq, pub) for r, (seq, pub) in zip(rids, rows)
                if seq is None or (pub or "0") != seq]
    deadline = time.monotonic() + 15 * SCALE
    while behind() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = behind()
    assert not left, "%d requests with facts not settled: %s" % (len(left), left[:5])


def test_rounds_grow_under_load():
    with vdtest.Env() as env:
        d = start(env, **{"matching.offer_timeout_ms": 0})
        add_volunteers(env, [("gr-v%03d" % i, place(0, 60 * (i // 20), 60 * (i % 20)), {})
                             for i in range(400)])
        m0 = metrics(d)
        reqs = [vdtest.request_created("gr-r%03d" % i, *place(0, 40 * (i // 15), 80 * (i % 15)))
                for i in range(300)]
        env.send("requests", reqs)
        rids = [e["data"]["request_id"] for e in reqs]
        wait_all_outcomes(env, rids)
        m = metrics(d)
        rounds = m["vd_rounds_total"] - m0["vd_rounds_total"]
        calls = m["vd_redis_calls_total"] - m0["vd_redis_calls_total"]
        by_kind = calls_between(m0, m, ("step", "round", "widen", "claim", "settle", "due", "sweep"))
        vdtest.log("300 requests in %d rounds, %d Redis calls (%.2f per request, settles included): %s"
                   % (rounds, calls, calls / 300.0, by_kind))
        assert rounds < 150, "rounds did not grow: %d rounds for 300 requests" % rounds
        assert calls < 300, "%d Redis calls for 300 requests" % calls
        _, chosen = check_outcomes(env, rids)
        assert all(e["type"] == "vd.assignment.confirmed" for e in chosen.values())
        wait_settled(env, rids)


def test_continuity():
    with vdtest.Env() as env:
        start(env, **{"matching.offer_timeout_ms": 0})
        # The resident's first request: only ct-far is there; they complete it.
        add_volunteers(env, [("ct-far", place(0, 200, 0), {})])
        assert confirm(env, "ct-r1", place(0), resident_id="res-ct") == ["ct-far"]
        env.send("responses", [vdtest.task_completed("ct-r1", "ct-far")])
        env.wait_for(lambda: pooled(env, "ct-far"), timeout=20, what="ct-far back")
        assert env.redis.cmd("GET", "vd:res/res-ct") == "ct-far"
        assert 0 < env.redis.cmd("TTL", "vd:res/res-ct") <= 90 * 86400
        # Next time a stranger is nearer (100 m), but the resident's volunteer wins: 200 m, plus
        # 150 for the task done today, less 300 for continuity = 50. Another resident gets the
        # nearer one.
        add_volunteers(env, [("ct-near", place(0, 100, 0), {})])
        got = confirm(env, "ct-r2", place(0), resident_id="res-ct")
        assert got == ["ct-far"], "the resident's second request went to %s" % got
        got = confirm(env, "ct-r3", place(0), resident_id="res-other")
        assert got == ["ct-near"], "another resident's request went to %s" % got


def test_open_place_nudged():
    with vdtest.Env() as env:
        d = start(env, **{"matching.offer_timeout_ms": 60000})
        add_volunteers(env, [("op-a", place(0, 50, 0), {})])
        env.send("requests", [vdtest.request_created("op-r", *place(0), volunteers_needed=2)])
        wait_events(env, "assignments", "vd.assignment.offered", request_id="op-r", volunteer_id="op-a")
        # Nobody else: the request waits with its second place open.
        env.wait_for(lambda: env.redis.cmd("ZSCORE", "vd:pool/city/open", "op-r") is not None,
                     timeout=20, what="op-r waiting with an open place")
        # Waiting costs nothing: no rounds while the offer is out and nobody new comes.
        m0 = metrics(d)
        time.sleep(2)
        m1 = metrics(d)
        assert m1["vd_rounds_total"] == m0["vd_rounds_total"], \
            "%d rounds while waiting" % (m1["vd_rounds_total"] - m0["vd_rounds_total"])
        t0 = time.time()
        env.send("volunteers", [vdtest.volunteer_available("op-b", *place(0, -80, 0))])
        off = wait_events(env, "assignments", "vd.assignment.offered", request_id="op-r",
                          volunteer_id="op-b", timeout=20 * SCALE)[0]
        vdtest.log("the new volunteer was offered the open place %.2f s after coming" % (time.time() - t0))
        assert off["data"]["attempt"] == 2, off
        # Both accept: confirmed; the request leaves the open set.
        o1 = wait_events(env, "assignments", "vd.assignment.offered", request_id="op-r",
                         volunteer_id="op-a")[0]
        env.send("responses", [vdtest.offer_accepted("op-r", "op-a", o1["data"]["offer_id"]),
                               vdtest.offer_accepted("op-r", "op-b", off["data"]["offer_id"])])
        wait_events(env, "assignments", "vd.assignment.confirmed", count=2, request_id="op-r")
        env.wait_for(lambda: env.redis.cmd("ZSCORE", "vd:pool/city/open", "op-r") is None,
                     timeout=20, what="op-r out of the open set")
        no_dead_letters(env)


def calls_between(m0, m, kinds=("round", "widen", "claim")):
    """Redis calls by kind between two scrapes of /metrics."""
    return {k: m['vd_redis_calls_by_kind_total{kind="%s"}' % k] -
            m0['vd_redis_calls_by_kind_total{kind="%s"}' % k] for k in kinds}


def load_up(env, vid, pos, tasks, tag):
    """Gives vid `tasks` completed tasks today (each adds load_cost_m to its cost)."""
    for i in range(tasks):
        assert confirm(env, "%s-%d" % (tag, i), pos) == [vid]
        env.send("responses", [vdtest.task_completed("%s-%d" % (tag, i), vid)])
        env.wait_for(lambda: pooled(env, vid), timeout=20, what="%s back" % vid)


def test_round_of_one():
    # a is 100 m away with 2 tasks today (cost 100 + 2 x 150 = 400), b 300 m away with 1
    # (cost 450): a is the choice. With 8 candidates the first search (500 m) asks for 16 and
    # finds both: it saw everyone within 500 m, so nobody unseen can cost less than 400: the
    # round's own call confirms a. With 1 candidate it asks for 2 and sees only to 300 m: a
    # volunteer at 301-399 m could cost less than 400, so the round widens to 400 m, solves and
    # claims: a again, in three calls.
    for cands, want in ((8, {"round": 1, "widen": 0, "claim": 0}),
                        (1, {"round": 1, "widen": 1, "claim": 1})):
        with vdtest.Env() as env:
            d = start(env, **{"matching.offer_timeout_ms": 0, "matching.candidates": cands})
            add_volunteers(env, [("one-a", place(0, 100, 0), {})])
            load_up(env, "one-a", place(0, 100, 0), 2, "one-la")
            add_volunteers(env, [("one-b", place(0, -300, 0), {})])
            load_up(env, "one-b", place(0, -300, 0), 1, "one-lb")
            before = metrics(d)
            env.send("requests", [vdtest.request_created("one-r", *place(0))])
            got = wait_events(env, "assignments", "vd.assignment.confirmed", count=1,
                              request_id="one-r")
            used = calls_between(before, metrics(d))
            vdtest.log("candidates %d: %s, calls %s" % (cands, got[0]["data"]["volunteer_id"], used))
            assert got[0]["data"]["volunteer_id"] == "one-a", got
            assert abs(got[0]["data"]["distance_m"] - 100) < 2, got
            assert used == want, (cands, used)
            # Nobody within 5 km of a new request: it ends in its round call, no claim.
            before = metrics(d)
            env.send("requests", [vdtest.request_created("one-far", *vdtest.offset_m(*place(0), 20000, 0),
                                                         service="legal_aid")])
            far = wait_events(env, "assignments", "vd.request.unmatched", count=1, request_id="one-far")
            used = calls_between(before, metrics(d))
            assert far[0]["data"]["reason"] == "no_volunteer_in_range", far
            assert far[0]["data"]["radius_m"] == 5000 and far[0]["data"]["service"] == "legal_aid", far
            assert used == {"round": 1, "widen": 0, "claim": 0}, used
            no_dead_letters(env)


def test_empty_pool_surge():
    # An empty pool's rounds end their requests in their own calls, so the daemon sends the
    # next round before the last one's answer is back. Five volunteers join after the first
    # 300 requests: the 300 after them, and any of the first still in a round, may all choose
    # them at once; the claims check again in Redis, so each is confirmed exactly once.
    with vdtest.Env() as env:
        d = start(env, **{"matching.offer_timeout_ms": 0})
        env.send("requests", [vdtest.request_created("es-first", *place(0))])
        wait_events(env, "assignments", "vd.request.unmatched", count=1, request_id="es-first")
        m0 = metrics(d)
        reqs = [vdtest.request_created("es-r%03d" % i, *place(0, 30 * (i // 20), 30 * (i % 20)))
                for i in range(600)]
        env.send("requests", reqs[:300])
        vols = ["es-v%d" % i for i in range(5)]
        # Rounds are running as they join: one may be taken the moment it is pooled, so each is
        # waited for until it is pooled or holds a task.
        env.send("volunteers", [vdtest.volunteer_available(v, *place(0, 100 * i, 0))
                                for i, v in enumerate(vols)])
        for v in vols:
            env.wait_for(lambda v=v: pooled(env, v) or vol(env, v, "task"), timeout=30,
                         what="%s pooled or serving" % v)
        env.send("requests", reqs[300:])
        rids = [e["data"]["request_id"] for e in reqs]
        wait_all_outcomes(env, rids)
        _, chosen = check_outcomes(env, rids + ["es-first"])
        served = {e["data"]["volunteer_id"]: r for r, e in chosen.items()
                  if e["type"] == "vd.assignment.confirmed"}
        m = metrics(d)
        vdtest.log("600 requests: %d served (%s), %d rounds, calls %s" % (
            len(served), sorted(served), m["vd_rounds_total"] - m0["vd_rounds_total"],
            calls_between(m0, m)))
        assert sorted(served) == vols, served
        for v, r in served.items():
            assert vol(env, v, "task") == r, (v, r)
        assert all(e["type"] == "vd.request.unmatched" for r, e in chosen.items() if r not in served.values())
        wait_settled(env, rids)
        no_dead_letters(env)


if __name__ == "__main__":
    vdtest.main(globals())
