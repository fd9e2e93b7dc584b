"""Integration tests of the request life cycle with offers (matching.offer_timeout_ms > 0):
every arrow of the state diagram in docs/states.dot, on the real servers.

  received -> searching -> offered -> confirmed -> completed      test_accept_decline_and_stray_answers
  offered -> searching -> offered (declined: the next best)       test_accept_decline_and_stray_answers
  offered: late, duplicate, mismatched answers change nothing     test_accept_decline_and_stray_answers
  searching -> unmatched (nobody in range)                        test_accept_decline_and_stray_answers
  volunteers_needed 2: two offers, a decline, a third             test_two_volunteers
  unmatched (partly staffed) -> cancelled                         test_two_volunteers
  offered -> searching -> offered (timeout: the next best)        test_timeouts_and_all_declined
  offered -> unmatched (all_declined after max_offers)            test_timeouts_and_all_declined
  offered -> expired (expires_at while an offer is out)           test_expiry_and_cancel
  received -> expired, offered -> cancelled, confirmed -> cancelled  test_expiry_and_cancel
  received -> scheduled -> searching -> offered, across a stop    test_scheduled_requests
  scheduled -> expired, scheduled -> cancelled                    test_scheduled_requests
  kill -9 with offers out, two new instances: one re-offer each   test_kill9_with_outstanding_offers

received -> cancelled (a cancel before its request) is in test_lifecycle; searching ->
confirmed (direct mode) in test_matching. searching -> expired/cancelled are the same Redis
moves as from offered, but searching lasts only between two Redis calls of one match.

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_offers.py [test names]
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402
from vdtest import metrics  # noqa: E402
from test_lifecycle import (add_volunteers, no_dead_letters, place, pooled, req_state,  # noqa: E402
                            select, task, wait_events, wait_metric)

OFFERED = "vd.assignment.offered"
CONFIRMED = "vd.assignment.confirmed"
WITHDRAWN = "vd.assignment.withdrawn"
UNMATCHED = "vd.request.unmatched"
CANCELLED = "vd.request.cancelled"
SCALE = vdtest.TIMEOUT_SCALE
TASK_TIMEOUT_S = 28800  # matching.task_timeout_s's default


def start(env, timeout_ms, **config):
    """A daemon in offer mode with /metrics on a free port."""
    listen, _ = vdtest.listen_config()
    cfg = {"http.listen": listen, "matching.offer_timeout_ms": timeout_ms}
    cfg.update(config)
    return env.daemon(cfg)


def unique(events):
    """Events deduplicated by CloudEvents id (outputs are at-least-once), first copy kept."""
    seen, out = set(), []
    for e in events:
        if e["id"] not in seen:
            seen.add(e["id"])
            out.append(e)
    return out


def log_of(env, rid):
    """The request's assignments events, deduplicated, as (type, volunteer_id, detail)."""
    out = []
    for e in unique(select(env.events("assignments", timeout=5), request_id=rid)):
        d = e["data"]
        detail = d.get("reason") if e["type"] in (WITHDRAWN, UNMATCHED) else d.get("attempt")
        out.append((e["type"], d.get("volunteer_id"), detail))
    return out


def wait_log(env, rid, expected, timeout=30):
    """Waits until the request's event log is exactly `expected` (a list of (type, vid,
    detail)); fails at once if it grows past it or differs in what is there."""
    def check():
        got = log_of(env, rid)
        assert got == expected[:len(got)], "%s: event log %s, expected %s" % (rid, got, expected)
        return got == expected
    env.wait_for(check, timeout=timeout * SCALE, interval=0.3,
                 what="%s: event log %s" % (rid, expected))


def offer_of(env, rid, vid):
    evs = unique(select(env.events("assignments", timeout=5), OFFERED, request_id=rid, volunteer_id=vid))
    assert len(evs) == 1, "%s: offers to %s: %s" % (rid, vid, evs)
    return evs[0]["data"]


def wait_offer(env, rid, vid, timeout=30):
    wait_events(env, "assignments", OFFERED, request_id=rid, volunteer_id=vid, timeout=timeout * SCALE)
    return offer_of(env, rid, vid)


def notes_of(env, rid):
    """The request's notifications, deduplicated, as (kind, volunteer_id or reason)."""
    out = set()
    for e in unique(select(env.events("notifications", timeout=5), request_id=rid)):
        d = e["data"]
        out.add((d.get("kind"), d.get("volunteer_id") or d.get("reason")))
    return out


def req_field(env, rid, field):
    return env.redis.cmd("HGET", "vd:req/" + rid, field) or ""


def free(env, vid):
    """The volunteer holds nothing and is back in the pool."""
    return task(env, vid) == "" and pooled(env, vid)


def wait_free(env, *vids):
    for v in vids:
        env.wait_for(lambda v=v: free(env, v), timeout=20 * SCALE, what="%s free and pooled" % v)


def near(area, metres):
    """A volunteer `metres` east of the area's centre."""
    return place(area, 0, metres)


# --------------------------------------------------------------------------------------------

def test_accept_decline_and_stray_answers():
    """An offer holds the nearest volunteer and tells them; a decline frees them and offers the
    next nearest (attempt 2), never the decliner again; an accept confirms with the same
    offer_id and tells the resident; the task completes. Answers with a wrong offer_id, from
    another volunteer, for an unknown request, repeated, or after the request was confirmed
    change nothing and are counted, not dead-lettered. A request nobody is near ends
    unmatched at once."""
    with vdtest.Env() as env:
        d = start(env, 60000, **{"matching.max_offers": 3})
        add_volunteers(env, [("a-a", near(0, 100), {}), ("a-b", near(0, 200), {}),
                             ("a-c", near(0, 300), {})])
        env.send("requests", [vdtest.request_created("a-r1", *place(0), resident_id="res-1"),
                              vdtest.request_created("a-far", *place(5))])
        o1 = wait_offer(env, "a-r1", "a-a")
        assert o1["attempt"] == 1 and o1["offer_id"].startswith("of-") and o1["expires_at"], o1
        assert abs(o1["distance_m"] - 100) < 1 and o1["radius_m"] == 500, o1
        assert task(env, "a-a") == "a-r1" and not pooled(env, "a-a"), "an offer holds its volunteer"
        assert req_state(env, "a-r1") == "offered"
        assert ("offer", "a-a") in notes_of(env, "a-r1")
        assert env.redis.cmd("ZSCORE", "vd:due", "a-r1") is not None, "the deadline is not in Redis"
        wait_log(env, "a-far", [(UNMATCHED, None, "no_volunteer_in_range")])
        assert req_state(env, "a-far") == "unmatched"

        # Stray answers: wrong offer_id, another volunteer, an unknown request.
        env.send("responses", [vdtest.offer_accepted("a-r1", "a-a", "of-0000000000000000"),
                               vdtest.offer_accepted("a-r1", "a-b", o1["offer_id"]),
                               vdtest.offer_declined("a-nope", "a-a", o1["offer_id"])])
        wait_metric(env, d, "vd_ignored_responses_total", 3)
        assert task(env, "a-a") == "a-r1" and req_state(env, "a-r1") == "offered"

        env.send("responses", [vdtest.offer_declined("a-r1", "a-a", o1["offer_id"])])
        o2 = wait_offer(env, "a-r1", "a-b")
        assert o2["attempt"] == 2 and o2["offer_id"] != o1["offer_id"], o2
        wait_free(env, "a-a")
        env.send("responses", [vdtest.offer_accepted("a-r1", "a-b", o2["offer_id"])])
        wait_log(env, "a-r1", [(OFFERED, "a-a", 1), (WITHDRAWN, "a-a", "declined"),
                               (OFFERED, "a-b", 2), (CONFIRMED, "a-b", 2)])
        conf = select(env.events("assignments"), CONFIRMED, request_id="a-r1")[0]["data"]
        assert conf["offer_id"] == o2["offer_id"] and abs(conf["distance_m"] - 200) < 1, conf
        assert req_state(env, "a-r1") == "confirmed" and req_field(env, "a-r1", "held") == "a-b"
        assert req_field(env, "a-r1", "tried") == "a-a"
        assert task(env, "a-b") == "a-r1" and not pooled(env, "a-b")
        env.wait_for(lambda: {("offer", "a-a"), ("offer", "a-b"), ("assigned", "a-b"),
                              ("volunteer_confirmed", "a-b")} <= notes_of(env, "a-r1"),
                     timeout=20, what="offer, assigned and resident notifications")
        assert ("offer_withdrawn", "a-a") not in notes_of(env, "a-r1"), \
            "a volunteer who declined was told of a withdrawal"
        res = [e for e in env.events("notifications") if e["type"] == "vd.notify.resident"]
        assert [e["data"].get("resident_id") for e in res] == ["res-1"], res
        # A confirmed request is due again only when its task would time out.
        due = float(env.redis.cmd("ZSCORE", "vd:due", "a-r1"))
        assert abs(due / 1000 - time.time() - TASK_TIMEOUT_S) < 30, \
            "a confirmed request is due at %s, not at its task timeout" % due

        # After the match: a repeated accept, a late decline, the decliner accepting.
        env.send("responses", [vdtest.offer_accepted("a-r1", "a-b", o2["offer_id"]),
                               vdtest.offer_declined("a-r1", "a-b", o2["offer_id"]),
                               vdtest.offer_accepted("a-r1", "a-a", o1["offer_id"])])
        wait_metric(env, d, "vd_ignored_responses_total", 6)
        env.send("responses", [vdtest.task_completed("a-r1", "a-b")])
        env.wait_for(lambda: req_state(env, "a-r1") == "completed", timeout=20 * SCALE,
                     what="a-r1 completed")
        wait_free(env, "a-b")
        assert free(env, "a-c"), "a-c was held"
        assert log_of(env, "a-r1")[-2:] == [(CONFIRMED, "a-b", 2),
                                            ("vd.request.completed", "a-b", None)], log_of(env, "a-r1")
        m = metrics(d)
        assert m['vd_offers_made_total'] == 2, m
        assert m['vd_offers_resolved_total{result="accepted"}'] == 1, m
        assert m['vd_offers_resolved_total{result="declined"}'] == 1, m
        assert m["vd_rejected_total"] == 0, m["vd_rejected_total"]
        no_dead_letters(env)


def test_two_volunteers():
    """volunteers_needed 2: offers go to the two nearest at once (attempts 1 and 2); one
    accepts, the other declines, the third nearest gets attempt 3 and accepts: confirmed with
    both. A request for 2 with one volunteer around: that one is offered and accepts, then it
    ends unmatched with volunteers_missing 1 and the coordinator is told; cancelling it
    releases the one confirmed."""
    with vdtest.Env() as env:
        start(env, 60000)
        add_volunteers(env, [("t-d", near(0, 100), {}), ("t-e", near(0, 200), {}),
                             ("t-f", near(0, 300), {}), ("t-g", near(1, 100), {})])
        env.send("requests", [vdtest.request_created("t-r2", *place(0), volunteers_needed=2),
                              vdtest.request_created("t-r3", *place(1), volunteers_needed=2)])
        od, oe = wait_offer(env, "t-r2", "t-d"), wait_offer(env, "t-r2", "t-e")
        assert {od["attempt"], oe["attempt"]} == {1, 2}, (od, oe)
        assert req_state(env, "t-r2") == "offered"
        env.send("responses", [vdtest.offer_accepted("t-r2", "t-d", od["offer_id"]),
                               vdtest.offer_declined("t-r2", "t-e", oe["offer_id"])])
        of = wait_offer(env, "t-r2", "t-f")
        assert of["attempt"] == 3, of
        assert req_state(env, "t-r2") == "offered" and req_field(env, "t-r2", "held") == "t-d"
        env.send("responses", [vdtest.offer_accepted("t-r2", "t-f", of["offer_id"])])
        env.wait_for(lambda: req_state(env, "t-r2") == "confirmed", timeout=20 * SCALE,
                     what="t-r2 confirmed")
        assert sorted(req_field(env, "t-r2", "held").split(",")) == ["t-d", "t-f"]
        got = log_of(env, "t-r2")
        assert sorted(v for t, v, _ in got if t == CONFIRMED) == ["t-d", "t-f"], got
        assert not [x for x in got if x[0] == UNMATCHED], got
        wait_free(env, "t-e")

        og = wait_offer(env, "t-r3", "t-g")
        env.send("responses", [vdtest.offer_accepted("t-r3", "t-g", og["offer_id"])])
        wait_log(env, "t-r3", [(OFFERED, "t-g", 1), (CONFIRMED, "t-g", 1),
                               (UNMATCHED, None, "no_volunteer_in_range")])
        um = select(env.events("assignments"), UNMATCHED, request_id="t-r3")[0]["data"]
        assert um["volunteers_needed"] == 2 and um["volunteers_missing"] == 1, um
        assert req_state(env, "t-r3") == "unmatched" and task(env, "t-g") == "t-r3"
        env.wait_for(lambda: ("unmatched", "no_volunteer_in_range") in notes_of(env, "t-r3"),
                     timeout=20, what="the coordinator told of t-r3")
        env.send("requests", [vdtest.request_cancelled("t-r3")])
        wait_events(env, "assignments", CANCELLED, request_id="t-r3", volunteer_id="t-g")
        assert req_state(env, "t-r3") == "cancelled"
        wait_free(env, "t-g")
        no_dead_letters(env)


def test_timeouts_and_all_declined():
    """Offers nobody answers time out after 600 ms: the volunteer is told of the withdrawal,
    freed, and the next nearest gets the offer; after max_offers (2) the request ends
    unmatched, all_declined, and the coordinator is told. The third volunteer is never asked.
    An accept that comes after its deadline changes nothing."""
    with vdtest.Env() as env:
        d = start(env, 600, **{"matching.max_offers": 2})
        add_volunteers(env, [("s-a", near(0, 100), {}), ("s-b", near(0, 200), {}),
                             ("s-c", near(0, 300), {})])
        t0 = time.time()
        env.send("requests", [vdtest.request_created("s-r1", *place(0))])
        wait_log(env, "s-r1", [(OFFERED, "s-a", 1), (WITHDRAWN, "s-a", "timeout"),
                               (OFFERED, "s-b", 2), (WITHDRAWN, "s-b", "timeout"),
                               (UNMATCHED, None, "all_declined")])
        took = time.time() - t0
        um = select(env.events("assignments"), UNMATCHED, request_id="s-r1")[0]["data"]
        assert um["volunteers_missing"] == 1, um
        assert req_state(env, "s-r1") == "unmatched"
        assert sorted(req_field(env, "s-r1", "tried").split(",")) == ["s-a", "s-b"]
        env.wait_for(lambda: {("offer_withdrawn", "s-a"), ("offer_withdrawn", "s-b"),
                              ("unmatched", "all_declined")} <= notes_of(env, "s-r1"),
                     timeout=20, what="withdrawal and coordinator notifications")
        wait_free(env, "s-a", "s-b", "s-c")
        assert env.redis.cmd("ZSCORE", "vd:due", "s-r1") is None
        # The deadlines were hundreds of ms: two of them pass in well under the lease (5 s).
        vdtest.log("s-r1: two timeouts and the outcome within %.1fs" % took)

        oa = offer_of(env, "s-r1", "s-a")
        env.send("responses", [vdtest.offer_accepted("s-r1", "s-a", oa["offer_id"])])
        wait_metric(env, d, "vd_ignored_responses_total", 1)
        assert free(env, "s-a") and req_state(env, "s-r1") == "unmatched"
        m = metrics(d)
        assert m['vd_offers_resolved_total{result="timed_out"}'] == 2, m
        assert m['vd_unmatched_total{reason="all_declined"}'] == 1, m
        no_dead_letters(env)


def test_expiry_and_cancel():
    """expires_at passing while an offer is out: the offer's deadline is the request's
    expiry; at it, the offer is withdrawn (reason expired, the volunteer told and freed) and
    the request ends expired (vd.request.unmatched, reason expired; the coordinator told).
    A request already expired on arrival ends at once. Cancelling an offered request
    withdraws the offer; cancelling a confirmed one releases the volunteer."""
    with vdtest.Env() as env:
        start(env, 60000)
        add_volunteers(env, [("x-a", near(0, 100), {}), ("x-b", near(1, 100), {}),
                             ("x-c", near(2, 100), {})])
        exp = vdtest.now_rfc3339(4)
        env.send("requests", [vdtest.request_created("x-r1", *place(0), expires_at=exp),
                              vdtest.request_created("x-old", *place(0), expires_at=vdtest.now_rfc3339(-5)),
                              vdtest.request_created("x-r2", *place(1)),
                              vdtest.request_created("x-r3", *place(2))])
        o1 = wait_offer(env, "x-r1", "x-a")
        assert o1["expires_at"][:19] == exp[:19], (o1["expires_at"], exp)
        wait_log(env, "x-old", [(UNMATCHED, None, "expired")])
        assert req_state(env, "x-old") == "expired"
        wait_log(env, "x-r1", [(OFFERED, "x-a", 1), (WITHDRAWN, "x-a", "expired"),
                               (UNMATCHED, None, "expired")])
        assert req_state(env, "x-r1") == "expired"
        wait_free(env, "x-a")
        env.wait_for(lambda: {("offer_withdrawn", "x-a"), ("unmatched", "expired")}
                     <= notes_of(env, "x-r1"), timeout=20, what="x-r1 notifications")

        o2 = wait_offer(env, "x-r2", "x-b")
        o3 = wait_offer(env, "x-r3", "x-c")
        env.send("responses", [vdtest.offer_accepted("x-r3", "x-c", o3["offer_id"])])
        wait_events(env, "assignments", CONFIRMED, request_id="x-r3")
        env.send("requests", [vdtest.request_cancelled("x-r2"), vdtest.request_cancelled("x-r3")])
        wait_events(env, "assignments", CANCELLED, request_id="x-r2", volunteer_id="x-b")
        wait_events(env, "assignments", CANCELLED, request_id="x-r3", volunteer_id="x-c")
        assert req_state(env, "x-r2") == "cancelled" and req_state(env, "x-r3") == "cancelled"
        wait_free(env, "x-b", "x-c")
        assert ("withdrawn", "x-b") in notes_of(env, "x-r2")
        # The cancelled offer's answer comes too late to matter.
        env.send("responses", [vdtest.offer_accepted("x-r2", "x-b", o2["offer_id"])])
        time.sleep(1)
        assert free(env, "x-b") and req_state(env, "x-r2") == "cancelled"
        assert env.redis.cmd("ZCARD", "vd:due") == 0, env.redis.cmd("ZRANGE", "vd:due", 0, -1)
        no_dead_letters(env)


def test_scheduled_requests():
    """not_before, with a lead time of 2 s: requests wait (scheduled, nobody held, nothing
    published) while the daemon is stopped and started again; one is offered once not_before
    less the lead has come; one whose expires_at passed while no daemon ran ends expired
    straight from scheduled, never offered; one cancelled while scheduled never is."""
    with vdtest.Env() as env:
        d = start(env, 60000, **{"matching.schedule_lead_ms": 2000})
        add_volunteers(env, [("n-a", near(0, 100), {}), ("n-b", near(1, 100), {}),
                             ("n-c", near(2, 100), {})])
        t0 = time.time()
        env.send("requests", [
            vdtest.request_created("n-r1", *place(0), not_before=vdtest.now_rfc3339(12)),
            vdtest.request_created("n-r2", *place(1), not_before=vdtest.now_rfc3339(4),
                                   expires_at=vdtest.now_rfc3339(5)),
            vdtest.request_created("n-r3", *place(2), not_before=vdtest.now_rfc3339(3600)),
        ])
        rids = ("n-r1", "n-r2", "n-r3")
        env.wait_for(lambda: all(req_state(env, r) == "scheduled" for r in rids),
                     timeout=20 * SCALE, what="three requests scheduled")
        assert time.time() - t0 < 2, "too slow to test the schedule: %.1fs" % (time.time() - t0)
        wait_metric(env, d, "vd_scheduled_total", 3)
        d.stop()
        assert all(req_state(env, r) == "scheduled" for r in rids)
        assert all(free(env, v) for v in ("n-a", "n-b", "n-c"))
        time.sleep(max(0.0, t0 + 6 - time.time()))
        d.start()
        d.wait_ready()
        env.send("requests", [vdtest.request_cancelled("n-r3")])
        wait_log(env, "n-r2", [(UNMATCHED, None, "expired")])
        assert req_state(env, "n-r2") == "expired" and free(env, "n-b")
        o = wait_offer(env, "n-r1", "n-a", timeout=30)
        lag = time.time() - (t0 + 10)
        assert lag > -0.5, "offered %.1fs before not_before less the lead" % -lag
        assert o["attempt"] == 1 and req_state(env, "n-r1") == "offered"
        wait_events(env, "assignments", CANCELLED, request_id="n-r3")
        assert req_state(env, "n-r3") == "cancelled" and free(env, "n-c")
        assert log_of(env, "n-r3") == [(CANCELLED, None, None)], log_of(env, "n-r3")
        assert env.redis.cmd("ZSCORE", "vd:due", "n-r3") is None
        vdtest.log("n-r1 offered %.1fs after not_before less the lead" % lag)
        no_dead_letters(env)


def test_kill9_with_outstanding_offers():
    """Five requests hold offers (deadline 8 s) when their daemon is killed (kill -9). Two
    new instances start; as the deadlines pass, each request gets exactly one re-offer (the
    deadline is in Redis, and only one instance takes each), then, with max_offers 2 and
    nobody answering, ends all_declined once. Every volunteer ends free."""
    areas = range(5)
    with vdtest.Env() as env:
        cfg = {"matching.offer_timeout_ms": 8000, "matching.max_offers": 2}
        first = env.daemon(cfg)
        vols = [("k-%d-%d" % (a, i), near(a, 100 * (i + 1)), {}) for a in areas for i in range(3)]
        add_volunteers(env, vols)
        env.send("requests", [vdtest.request_created("k-r%d" % a, *place(a)) for a in areas])
        env.wait_for(lambda: len(unique(select(env.events("assignments", timeout=5), OFFERED))) == 5,
                     timeout=30 * SCALE, interval=0.2, what="five offers")
        first.kill()
        killed_at = time.time()
        others = [env.daemon(cfg, wait=False), env.daemon(cfg, wait=False)]
        for a in areas:
            rid = "k-r%d" % a
            wait_log(env, rid, [(OFFERED, "k-%d-0" % a, 1), (WITHDRAWN, "k-%d-0" % a, "timeout"),
                                (OFFERED, "k-%d-1" % a, 2), (WITHDRAWN, "k-%d-1" % a, "timeout"),
                                (UNMATCHED, None, "all_declined")], timeout=60)
        vdtest.log("all five ended %.1fs after the kill" % (time.time() - killed_at))
        # The re-offers were made after the kill, so by the new instances.
        for e in select(env.events("assignments"), OFFERED):
            if e["data"]["attempt"] == 2:
                made = vdtest.parse_time(e["time"])
                assert made > killed_at, "%s re-offered %.1fs before the kill" % (
                    e["data"]["request_id"], killed_at - made)
        # Nothing more comes: no instance re-offers what the other already did.
        time.sleep(2)
        for a in areas:
            rid = "k-r%d" % a
            assert len(log_of(env, rid)) == 5, log_of(env, rid)
            assert req_state(env, rid) == "unmatched"
            wait_free(env, *("k-%d-%d" % (a, i) for i in range(3)))
        assert env.redis.cmd("ZCARD", "vd:due") == 0
        for d in others:
            assert d.running(), "%s exited with %s" % (d.name, d.returncode)
        no_dead_letters(env)


if __name__ == "__main__":
    vdtest.main(globals())
