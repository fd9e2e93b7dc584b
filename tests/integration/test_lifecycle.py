"""Integration tests of a request's life after its match, in direct mode: cancellation (also
before the request arrives, and twice), completion (by the right volunteer, the wrong one, a
volunteer who went off duty meanwhile, a request that needs two), the daily fatigue cap that
completed tasks leave behind, stray offer answers, and the outputs of a cancel or completion
when the daemon dies before Kafka has them.

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_lifecycle.py [test names]
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402
from vdtest import metrics  # noqa: E402

LAT, LON = vdtest.HOHHOT
POOL = "vd:pool/city"


# --------------------------------------------------------------------------------------------
# Helpers

def place(area, north=0.0, east=0.0):
    """A point `north`/`east` metres from the centre of area number `area`; areas are 30 km
    apart, beyond any search radius, so scenarios in one test do not see each other."""
    return vdtest.offset_m(LAT, LON, north, 30000.0 * area + east)


def start(env, **config):
    """A daemon with /metrics on a free port (metrics(d) reads it)."""
    listen, _ = vdtest.listen_config()
    cfg = {"http.listen": listen}
    cfg.update(config)
    return env.daemon(cfg)


def wait_metric(env, d, name, value, timeout=30):
    """Waits until the series `name` reaches `value`; fails if it goes beyond it."""
    def check():
        v = metrics(d).get(name)
        assert v is None or v <= value, "%s is %s, expected %s" % (name, v, value)
        return v == value
    env.wait_for(check, timeout=timeout, interval=0.2, what="%s == %s" % (name, value))


def matches(type_=None, **data):
    def pred(e):
        if type_ is not None and e.get("type") != type_:
            return False
        d = e.get("data") or {}
        return all(d.get(k) == v for k, v in data.items())
    return pred


def select(events, type_=None, **data):
    return [e for e in events if matches(type_, **data)(e)]


def wait_events(env, topic_kind, type_=None, count=1, timeout=30, **data):
    """Waits until `topic_kind` holds at least `count` events of type_ whose data has the given
    fields; returns them all."""
    def found():
        evs = select(env.events(topic_kind, timeout=5), type_, **data)
        return evs if len(evs) >= count else None
    return env.wait_for(found, timeout=timeout, interval=0.3,
                        what="%d x %s %s on %s" % (count, type_, data, topic_kind))


def pooled(env, vid):
    return env.redis.cmd("ZSCORE", POOL, vid) is not None


def vol(env, vid, field):
    return env.redis.cmd("HGET", "vd:vol/" + vid, field)


def task(env, vid):
    """The request a volunteer is held by ("" when none)."""
    return vol(env, vid, "task") or ""


def req_state(env, rid):
    return env.redis.cmd("HGET", "vd:req/" + rid, "state")


def add_volunteers(env, vols):
    """vols: [(vid, (lat, lon), extra)]; sends them and waits until they are pooled."""
    env.send("volunteers", [vdtest.volunteer_available(v, *pos, **extra) for v, pos, extra in vols])
    for v, _, _ in vols:
        env.wait_for(lambda v=v: pooled(env, v), timeout=30, what="%s pooled" % v)


def confirm(env, rid, pos, **extra):
    """Sends a request and waits for its confirmations; returns the volunteer ids."""
    env.send("requests", [vdtest.request_created(rid, *pos, **extra)])
    n = extra.get("volunteers_needed", 1)
    evs = wait_events(env, "assignments", "vd.assignment.confirmed", count=n, request_id=rid)
    return [e["data"]["volunteer_id"] for e in evs]


def no_dead_letters(env):
    dl = env.events("deadletter", timeout=5)
    assert not dl, "dead letters: %s" % [e["data"]["error"] for e in dl]


# --------------------------------------------------------------------------------------------
# Cancel

def test_cancel_confirmed_request_releases_volunteer():
    with vdtest.Env() as env:
        d = start(env)
        add_volunteers(env, [("vol-c1", place(0, 40, 0), {})])
        geo_before = env.redis.cmd("GEOPOS", POOL, "vol-c1")[0]
        assert confirm(env, "rq-c1", place(0)) == ["vol-c1"]
        assert not pooled(env, "vol-c1") and task(env, "vol-c1") == "rq-c1"
        assert req_state(env, "rq-c1") == "confirmed"

        env.send("requests", [vdtest.request_cancelled("rq-c1")])
        cancelled = wait_events(env, "assignments", "vd.request.cancelled", request_id="rq-c1")
        assert len(cancelled) == 1, cancelled
        assert cancelled[0]["data"] == {"request_id": "rq-c1", "volunteer_id": "vol-c1"}, \
            cancelled[0]["data"]
        assert cancelled[0]["id"] == "rq-c1/cancelled/vol-c1", cancelled[0]["id"]
        notes = wait_events(env, "notifications", "vd.notify.volunteer", request_id="rq-c1",
                            kind="withdrawn")
        assert len(notes) == 1 and notes[0]["data"]["volunteer_id"] == "vol-c1", notes
        assert notes[0]["id"] == "rq-c1/notify-withdrawn/vol-c1", notes[0]["id"]

        env.wait_for(lambda: pooled(env, "vol-c1"), timeout=10, what="vol-c1 back in the pool")
        geo_after = env.redis.cmd("GEOPOS", POOL, "vol-c1")[0]
        rounded = lambda xy: [round(float(x), 5) for x in xy]  # noqa: E731
        assert rounded(geo_after) == rounded(geo_before), \
            "back in the pool at another place: %s, was %s" % (geo_after, geo_before)
        assert req_state(env, "rq-c1") == "cancelled"
        assert task(env, "vol-c1") == ""
        wait_metric(env, d, "vd_cancelled_total", 1)

        # The volunteer serves the next request.
        assert confirm(env, "rq-c2", place(0, -30, 10)) == ["vol-c1"]
        assert not pooled(env, "vol-c1") and task(env, "vol-c1") == "rq-c2"
        out = env.events("assignments")
        assert not select(out, "vd.request.unmatched"), select(out, "vd.request.unmatched")
        assert len(select(out, "vd.request.cancelled")) == 1
        no_dead_letters(env)


def test_cancel_before_created_and_duplicate_cancel():
    with vdtest.Env() as env:
        d = start(env)
        add_volunteers(env, [("vol-t1", place(0, 20, 20), {})])

        # A cancel that comes first leaves a tombstone: the request is never matched.
        env.send("requests", [vdtest.request_cancelled("rq-t1")], partition=0)
        early = wait_events(env, "assignments", "vd.request.cancelled", request_id="rq-t1")
        assert [e["data"] for e in early] == [{"request_id": "rq-t1"}], early
        assert early[0]["id"] == "rq-t1/cancelled", early[0]["id"]
        assert req_state(env, "rq-t1") == "cancelled"
        # The request, then (same partition, so after it) one that nobody is near.
        env.send("requests", [vdtest.request_created("rq-t1", *place(0)),
                              vdtest.request_created("rq-t-far", *place(3))], partition=0)
        wait_events(env, "assignments", "vd.request.unmatched", request_id="rq-t-far")
        out = env.events("assignments")
        for_t1 = select(out, request_id="rq-t1")
        # The request, seen after its cancel, only republishes the cancel (same id, sequence).
        assert {(e["type"], e["id"], e["sequence"]) for e in for_t1} == {
            ("vd.request.cancelled", "rq-t1/cancelled", "0000000001")}, \
            "outputs for the cancelled request: %s" % [(e["type"], e["data"]) for e in for_t1]
        assert pooled(env, "vol-t1") and task(env, "vol-t1") == "", "vol-t1 was taken"
        assert req_state(env, "rq-t1") == "cancelled"
        notes = env.events("notifications")
        assert not select(notes, request_id="rq-t1"), select(notes, request_id="rq-t1")

        # Duplicate cancels: of a confirmed request (the same event twice) and of the tombstone.
        # A cancel seen again republishes the first one's outputs under the same ids (they may
        # never have reached Kafka the first time); it releases nothing more.
        assert confirm(env, "rq-t2", place(0, -10, 0)) == ["vol-t1"]
        cancel = vdtest.request_cancelled("rq-t2")
        env.send("requests", [cancel, cancel, vdtest.request_cancelled("rq-t2")])
        env.send("requests", [vdtest.request_cancelled("rq-t1")])
        # Replays: rq-t1's created (after its tombstone), two repeats of rq-t2's cancel, rq-t1's.
        wait_metric(env, d, "vd_replays_total", 4)
        wait_metric(env, d, "vd_cancelled_total", 2)
        time.sleep(1)
        out = env.events("assignments")
        c2 = select(out, "vd.request.cancelled", request_id="rq-t2")
        assert {e["id"] for e in c2} == {"rq-t2/cancelled/vol-t1"}, [e["id"] for e in c2]
        assert len(c2) == 3 and all(e["data"] == {"request_id": "rq-t2", "volunteer_id": "vol-t1"}
                                    for e in c2), "cancelled events for rq-t2: %s" % [e["data"] for e in c2]
        c1 = select(out, "vd.request.cancelled", request_id="rq-t1")
        assert {e["id"] for e in c1} == {"rq-t1/cancelled"}, [e["id"] for e in c1]
        assert all(e["data"] == {"request_id": "rq-t1"} for e in c1), [e["data"] for e in c1]
        notes = select(env.events("notifications"), "vd.notify.volunteer", kind="withdrawn")
        assert {(e["id"], e["data"]["request_id"], e["data"]["volunteer_id"]) for e in notes} == \
            {("rq-t2/notify-withdrawn/vol-t1", "rq-t2", "vol-t1")}, \
            "withdrawals: %s" % [e["data"] for e in notes]
        m = metrics(d)
        assert m["vd_ignored_responses_total"] == 0, m["vd_ignored_responses_total"]
        assert pooled(env, "vol-t1") and task(env, "vol-t1") == ""
        no_dead_letters(env)


# --------------------------------------------------------------------------------------------
# Complete

def test_complete():
    with vdtest.Env() as env:
        d = start(env)
        # Area 0: the right volunteer completes.
        add_volunteers(env, [("vol-k1", place(0, 30, 0), {})])
        assert confirm(env, "rq-k1", place(0)) == ["vol-k1"]
        env.send("responses", [vdtest.task_completed("rq-k1", "vol-k1")])
        done = wait_events(env, "assignments", "vd.request.completed", request_id="rq-k1")
        assert len(done) == 1 and done[0]["data"] == {
            "request_id": "rq-k1", "volunteer_id": "vol-k1", "all_done": True}, done
        assert done[0]["id"] == "rq-k1/completed/vol-k1", done[0]["id"]
        env.wait_for(lambda: pooled(env, "vol-k1"), timeout=10, what="vol-k1 back in the pool")
        assert task(env, "vol-k1") == "" and req_state(env, "rq-k1") == "completed"
        wait_metric(env, d, "vd_completed_total", 1)

        # Area 1: completions that do not match what Redis holds change nothing.
        add_volunteers(env, [("vol-k2", place(1, 30, 0), {})])
        assert confirm(env, "rq-k2", place(1)) == ["vol-k2"]
        add_volunteers(env, [("vol-k3", place(1, -40, 0), {})])
        env.send("responses", [vdtest.task_completed("rq-k2", "vol-k3"),       # wrong volunteer
                               vdtest.task_completed("rq-k-unknown", "vol-k2"),  # unknown request
                               vdtest.task_completed("rq-k2", "vol-k-nobody"),   # unknown volunteer
                               vdtest.task_completed("rq-k1", "vol-k1")])       # again
        wait_metric(env, d, "vd_ignored_responses_total", 3)
        wait_metric(env, d, "vd_replays_total", 1)
        time.sleep(1)
        out = env.events("assignments")
        comp = select(out, "vd.request.completed")
        # The repeated completion republishes the first one, same id and data; nothing else.
        assert [(e["id"], e["data"]) for e in comp] == [
            ("rq-k1/completed/vol-k1",
             {"request_id": "rq-k1", "volunteer_id": "vol-k1", "all_done": True})] * 2, \
            [e["data"] for e in comp]
        assert not pooled(env, "vol-k2") and task(env, "vol-k2") == "rq-k2"
        assert pooled(env, "vol-k3") and task(env, "vol-k3") == ""
        assert req_state(env, "rq-k2") == "confirmed"
        assert not env.redis.cmd("HGET", "vd:req/rq-k2", "done")
        assert env.redis.cmd("EXISTS", "vd:req/rq-k-unknown") == 0
        assert env.redis.cmd("EXISTS", "vd:vol/vol-k-nobody") == 0
        wait_metric(env, d, "vd_completed_total", 1)

        # Area 2: the volunteer went off duty before completing: not pooled afterwards.
        add_volunteers(env, [("vol-k4", place(2, 30, 0), {})])
        assert confirm(env, "rq-k4", place(2)) == ["vol-k4"]
        env.send("volunteers", [vdtest.volunteer_unavailable("vol-k4")])
        env.wait_for(lambda: vol(env, "vol-k4", "avail") == "0", timeout=10, what="vol-k4 off duty")
        env.send("responses", [vdtest.task_completed("rq-k4", "vol-k4")])
        wait_events(env, "assignments", "vd.request.completed", request_id="rq-k4",
                    volunteer_id="vol-k4", all_done=True)
        assert task(env, "vol-k4") == "" and not pooled(env, "vol-k4"), \
            "an unavailable volunteer was put back in the pool"
        assert req_state(env, "rq-k4") == "completed"
        # Back on duty: pooled again.
        env.send("volunteers", [vdtest.volunteer_available("vol-k4", *place(2, 30, 0))])
        env.wait_for(lambda: pooled(env, "vol-k4"), timeout=10, what="vol-k4 pooled again")

        # Area 3: a request that needs two; all_done only with the second completion.
        add_volunteers(env, [("vol-k5a", place(3, 30, 0), {}), ("vol-k5b", place(3, -30, 0), {})])
        held = confirm(env, "rq-k5", place(3), volunteers_needed=2)
        assert sorted(held) == ["vol-k5a", "vol-k5b"], held
        env.send("responses", [vdtest.task_completed("rq-k5", "vol-k5b"),
                               vdtest.task_completed("rq-k5", "vol-k5a")])
        comp = wait_events(env, "assignments", "vd.request.completed", count=2, request_id="rq-k5")
        # A fact not yet settled is published again by the request's next step (same id, same
        # sequence): consumers deduplicate by id.
        first = {}
        for e in comp:
            first.setdefault(e["id"], e)
        got = [(e["data"]["volunteer_id"], e["data"]["all_done"], e["sequence"]) for e in first.values()]
        assert [g[:2] for g in got] == [("vol-k5b", False), ("vol-k5a", True)], got
        assert got[0][2] < got[1][2], got
        assert pooled(env, "vol-k5a") and pooled(env, "vol-k5b")
        assert req_state(env, "rq-k5") == "completed"
        wait_metric(env, d, "vd_completed_total", 4)
        wait_metric(env, d, "vd_ignored_responses_total", 3)
        no_dead_letters(env)


def test_fatigue_cap_counts_completed_tasks():
    with vdtest.Env() as env:
        d = start(env)
        add_volunteers(env, [("vol-f1", place(0, 50, 0), {"max_tasks_per_day": 2})])
        for i in (1, 2):
            rid = "rq-f%d" % i
            assert confirm(env, rid, place(0, 0, 10 * i)) == ["vol-f1"]
            env.send("responses", [vdtest.task_completed(rid, "vol-f1")])
            wait_events(env, "assignments", "vd.request.completed", request_id=rid)
            env.wait_for(lambda: pooled(env, "vol-f1"), timeout=10, what="vol-f1 back in the pool")
        assert env.redis.cmd("ZCARD", "vd:tasks/vol-f1") == 2

        def third(rid):
            env.send("requests", [vdtest.request_created(rid, *place(0, -20, 0))])
            un = wait_events(env, "assignments", "vd.request.unmatched", request_id=rid)[0]["data"]
            assert un["reason"] == "no_eligible_volunteer", un
            assert un["filtered"] == {"fatigue": 1}, un
            assert un["candidates_considered"] == 1, un
            out = env.events("assignments")
            assert not select(out, "vd.assignment.confirmed", request_id=rid)
            assert pooled(env, "vol-f1") and task(env, "vol-f1") == ""

        third("rq-f3")
        # The record is in Redis, not in the daemon: it holds across a restart.
        d.restart()
        third("rq-f4")
        assert env.redis.cmd("ZCARD", "vd:tasks/vol-f1") == 2
        no_dead_letters(env)


# --------------------------------------------------------------------------------------------
# Offer answers in direct mode

def test_offer_answers_ignored_in_direct_mode():
    with vdtest.Env() as env:
        d = start(env)
        add_volunteers(env, [("vol-o1", place(0, 30, 0), {})])
        assert confirm(env, "rq-o1", place(0)) == ["vol-o1"]
        conf = wait_events(env, "assignments", "vd.assignment.confirmed", request_id="rq-o1")[0]
        oid = conf["data"]["offer_id"]
        n_assign = len(env.events("assignments"))
        n_notify = len(env.events("notifications"))
        env.send("responses", [vdtest.offer_accepted("rq-o1", "vol-o1", oid),
                               vdtest.offer_declined("rq-o1", "vol-o1", oid),
                               vdtest.offer_accepted("rq-o-unknown", "vol-o-x", "of-1"),
                               vdtest.offer_declined("rq-o-unknown", "vol-o-x", "of-2")])
        wait_metric(env, d, "vd_ignored_responses_total", 4)
        m = metrics(d)
        assert m['vd_inputs_total{type="vd.offer.accepted"}'] == 2, m
        assert m['vd_inputs_total{type="vd.offer.declined"}'] == 2, m
        assert m["vd_rejected_total"] == 0, m["vd_rejected_total"]
        time.sleep(1)
        assert len(env.events("assignments")) == n_assign, "offer answers caused assignments"
        assert len(env.events("notifications")) == n_notify, "offer answers caused notifications"
        no_dead_letters(env)
        assert not pooled(env, "vol-o1") and task(env, "vol-o1") == "rq-o1"
        assert req_state(env, "rq-o1") == "confirmed"
        assert env.redis.cmd("EXISTS", "vd:req/rq-o-unknown") == 0


# --------------------------------------------------------------------------------------------
# At-least-once for the outputs of cancel and complete

def test_outputs_of_cancel_and_complete_survive_a_crash():
    """Redis has recorded a cancel and a completion, but their outputs never reached Kafka
    (the leaders of the output topics are down) when the daemon is killed. The inputs were
    not committed, so they come again after the restart; their outputs must come then."""
    outs = [("vd.assignments", 2), ("vd.notifications", 2)]
    ins = [("vd.requests", 4), ("vd.volunteers", 4), ("vd.responses", 4), ("vd.deadletter", 2)]
    with vdtest.Env() as env:
        k = env.kafka
        # Inputs and the group on brokers 1 and 2, outputs on broker 3.
        for topic, parts in ins:
            for p in range(parts):
                k.command("leader %s %d %d" % (topic, p, 1 + p % 2))
        for topic, parts in outs:
            for p in range(parts):
                k.command("leader %s %d 3" % (topic, p))
        k.command("coordinator group vdispatch-test 1")
        d = start(env)
        add_volunteers(env, [("vol-x1", place(0, 30, 0), {}), ("vol-x2", place(1, 30, 0), {})])
        assert confirm(env, "rq-x1", place(0)) == ["vol-x1"]
        assert confirm(env, "rq-x2", place(1)) == ["vol-x2"]
        time.sleep(2)  # the inputs so far are committed (auto commit every second)

        k.command("down 3")
        env.send("requests", [vdtest.request_cancelled("rq-x1")])
        env.send("responses", [vdtest.task_completed("rq-x2", "vol-x2")])
        env.wait_for(lambda: req_state(env, "rq-x1") == "cancelled"
                     and req_state(env, "rq-x2") == "completed", timeout=20,
                     what="the cancel and the completion applied in Redis")
        time.sleep(0.5)
        assert metrics(d)["vd_outputs_unacked"] > 0, "outputs were acknowledged with broker 3 down"
        d.kill()
        k.command("up 3")

        d.start()
        d.wait_ready(timeout=60)
        # Both inputs come again (they were never committed); wait until the new run has
        # handled them, then for their outputs.
        env.wait_for(lambda: (lambda m: m['vd_inputs_total{type="vd.request.cancelled"}'] >= 1
                              and m['vd_inputs_total{type="vd.task.completed"}'] >= 1)(metrics(d)),
                     timeout=30, what="the cancel and the completion redelivered")
        # A gauge that rises while outputs are in flight: wait for it to drain (the producer
        # also has to reconnect to the broker that came back).
        env.wait_for(lambda: metrics(d).get("vd_outputs_unacked") == 0, timeout=60, interval=0.2,
                     what="vd_outputs_unacked == 0")
        m = metrics(d)
        out = env.events("assignments", timeout=10)
        notes = env.events("notifications", timeout=10)
        missing = []
        if not select(out, "vd.request.cancelled", request_id="rq-x1", volunteer_id="vol-x1"):
            missing.append("vd.request.cancelled {rq-x1, vol-x1}")
        if not select(notes, "vd.notify.volunteer", request_id="rq-x1", volunteer_id="vol-x1",
                      kind="withdrawn"):
            missing.append("vd.notify.volunteer withdrawn {rq-x1, vol-x1}")
        if not select(out, "vd.request.completed", request_id="rq-x2", volunteer_id="vol-x2"):
            missing.append("vd.request.completed {rq-x2, vol-x2}")
        assert not missing, (
            "outputs lost: %s. Redis had applied the cancel and the completion before the "
            "crash, and their inputs came again after the restart; that run counted "
            "vd_ignored_responses_total %d, vd_cancelled_total %d, vd_completed_total %d" % (
                ", ".join(missing), m["vd_ignored_responses_total"], m["vd_cancelled_total"],
                m["vd_completed_total"]))


if __name__ == "__main__":
    vdtest.main(globals())
