"""Integration tests of a coordinator's assignment (vd.request.assign): a named volunteer sent
to a request nobody could serve, to an open place of a request still searching, and every
refusal (the coordinator is told why, nothing changes); a redelivered assignment; the set of
requests that need a person.

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_coordinator.py [test names]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402
from vdtest import metrics  # noqa: E402

LAT, LON = vdtest.HOHHOT
POOL = "vd:pool/city"


def place(area, north=0.0, east=0.0):
    """A point north/east metres from the centre of area number `area` (areas 30 km apart)."""
    return vdtest.offset_m(LAT, LON, north, 30000.0 * area + east)


def start(env, **config):
    listen, _ = vdtest.listen_config()
    cfg = {"http.listen": listen}
    cfg.update(config)
    return env.daemon(cfg)


def select(events, type_=None, **data):
    return [e for e in events
            if (type_ is None or e.get("type") == type_)
            and all((e.get("data") or {}).get(k) == v for k, v in data.items())]


def wait_events(env, topic_kind, type_=None, count=1, timeout=30, **data):
    def found():
        evs = select(env.events(topic_kind, timeout=5), type_, **data)
        return evs if len(evs) >= count else None
    return env.wait_for(found, timeout=timeout, interval=0.3,
                        what="%d x %s %s on %s" % (count, type_, data, topic_kind))


def assign(rid, vid, coordinator="coord.wang", id=None):
    return vdtest.cloudevent("vd.request.assign", {"request_id": rid, "volunteer_id": vid,
                                                   "coordinator_id": coordinator},
                             source="/vd/desk", id=id)


def add_volunteers(env, vols):
    env.send("volunteers", [vdtest.volunteer_available(v, *pos, **extra) for v, pos, extra in vols])
    for v, _, _ in vols:
        env.wait_for(lambda v=v: env.redis.cmd("ZSCORE", POOL, v) is not None
                     or env.redis.cmd("HGET", "vd:vol/" + v, "pool"),
                     timeout=30, what="%s pooled" % v)


def state(env, rid):
    return env.redis.cmd("HGET", "vd:req/" + rid, "state")


def unstaffed(env):
    return env.redis.cmd("ZRANGE", "vd:unstaffed", 0, -1)


def refusals(env, rid, count=1):
    return wait_events(env, "notifications", "vd.notify.coordinator", count=count,
                       request_id=rid, kind="assignment_refused")


def test_assign_staffs_an_unmatched_request():
    """Nobody within reach: unmatched, listed as unstaffed; the coordinator sends a volunteer
    from 12 km away, who is confirmed with assigned_by; the request leaves the list."""
    with vdtest.Env() as env:
        d = start(env)
        far = place(0, 12000, 0)
        add_volunteers(env, [("vol-far", far, {"skills": ["first_aid"]})])
        env.send("requests", [vdtest.request_created("rq-u1", *place(0), resident_id="res-9")])
        unm = wait_events(env, "assignments", "vd.request.unmatched", request_id="rq-u1")
        assert unm[0]["data"]["reason"] == "no_volunteer_in_range", unm
        assert state(env, "rq-u1") == "unmatched"
        assert unstaffed(env) == ["rq-u1"], unstaffed(env)

        env.send("requests", [assign("rq-u1", "vol-far")])
        conf = wait_events(env, "assignments", "vd.assignment.confirmed", request_id="rq-u1")
        data = conf[0]["data"]
        assert data["volunteer_id"] == "vol-far" and data["assigned_by"] == "coord.wang", data
        want = vdtest.distance_m(*place(0), *far)
        assert abs(data["distance_m"] - want) < 5, (data["distance_m"], want)
        assert data["offer_id"].startswith("as-"), data
        assert int(conf[0]["sequence"]) > int(unm[0]["sequence"]), (conf[0], unm[0])
        assert state(env, "rq-u1") == "confirmed"
        assert env.redis.cmd("HGET", "vd:vol/vol-far", "task") == "rq-u1"
        assert env.redis.cmd("ZSCORE", POOL, "vol-far") is None
        assert env.redis.cmd("ZSCORE", POOL + "/s/first_aid", "vol-far") is None
        assert unstaffed(env) == [], unstaffed(env)
        told = wait_events(env, "notifications", "vd.notify.volunteer", request_id="rq-u1",
                           kind="assigned")
        assert told[0]["data"]["volunteer_id"] == "vol-far", told
        assert told[0]["data"]["assigned_by"] == "coord.wang", told
        env.wait_for(lambda: metrics(d).get("vd_coordinator_assigned_total") == 1, timeout=10,
                     what="vd_coordinator_assigned_total 1")
        assert metrics(d).get("vd_confirmed_total") == 0, "a coordinator's choice is not a match"

        # The task runs its course like any other.
        env.send("responses", [vdtest.task_completed("rq-u1", "vol-far")])
        wait_events(env, "assignments", "vd.request.completed", request_id="rq-u1")
        env.wait_for(lambda: state(env, "rq-u1") == "completed", timeout=10, what="completed")
        env.wait_for(lambda: env.redis.cmd("ZSCORE", POOL, "vol-far") is not None, timeout=10,
                     what="vol-far back in the pool")
        assert not env.events("deadletter", timeout=5)


def test_refusals_change_nothing():
    """Each refusal names its reason to the coordinator and leaves requests and volunteers as
    they were."""
    with vdtest.Env() as env:
        start(env)
        add_volunteers(env, [("vol-a", place(0, 100, 0), {}),
                             ("vol-ev", place(0, 300, 0), {"event_id": "concert-7"}),
                             ("vol-off", place(0, 400, 0), {}),
                             ("vol-tired", place(0, 9000, 0), {"max_tasks_per_day": 1})])
        env.send("volunteers", [vdtest.volunteer_unavailable("vol-off")])
        env.wait_for(lambda: env.redis.cmd("HGET", "vd:vol/vol-off", "avail") == "0",
                     timeout=10, what="vol-off off duty")
        # rq-a takes vol-a (direct mode); rq-b is out of everyone's reach.
        env.send("requests", [vdtest.request_created("rq-a", *place(0))])
        wait_events(env, "assignments", "vd.assignment.confirmed", request_id="rq-a")
        env.send("requests", [vdtest.request_created("rq-b", *place(1))])
        wait_events(env, "assignments", "vd.request.unmatched", request_id="rq-b")
        # vol-tired used their one task of the day on rq-t, then finished it.
        env.send("requests", [vdtest.request_created("rq-t", *place(0, 9000, 50))])
        wait_events(env, "assignments", "vd.assignment.confirmed", request_id="rq-t")
        env.send("responses", [vdtest.task_completed("rq-t", "vol-tired")])
        wait_events(env, "assignments", "vd.request.completed", request_id="rq-t")

        cases = [
            ("rq-a", "vol-ev", "the request has every volunteer it needs"),
            ("rq-b", "vol-a", "the volunteer is busy with request rq-a"),
            ("rq-b", "vol-nobody", "unknown volunteer"),
            ("rq-b", "vol-off", "the volunteer is not available"),
            ("rq-b", "vol-ev", "the volunteer serves event concert-7"),
            ("rq-b", "vol-tired", "the volunteer reached their daily cap (1 tasks in 24 h)"),
            ("rq-t", "vol-ev", "the request is completed"),
            ("rq-none", "vol-ev", "unknown request"),
        ]
        before = {rid: env.redis.cmd("HGET", "vd:req/" + rid, "state") for rid in ("rq-a", "rq-b")}
        env.send("requests", [assign(rid, vid) for rid, vid, _ in cases])
        for rid, vid, why in cases:
            got = refusals(env, rid, count=sum(1 for c in cases if c[0] == rid))
            reasons = {e["data"]["volunteer_id"]: e["data"]["reason"] for e in got}
            assert reasons.get(vid) == why, (rid, vid, reasons)
            assert all(e["data"]["coordinator_id"] == "coord.wang" for e in got), got
        after = {rid: env.redis.cmd("HGET", "vd:req/" + rid, "state") for rid in ("rq-a", "rq-b")}
        assert before == after, (before, after)
        assert env.redis.cmd("HGET", "vd:vol/vol-ev", "task") in (None, "")
        assert env.redis.cmd("ZSCORE", "vd:pool/ev/concert-7", "vol-ev") is not None
        assert env.redis.cmd("EXISTS", "vd:req/rq-none") == 0, "an unknown request got a record"
        out = env.events("assignments", timeout=5)
        assert len(select(out, "vd.assignment.confirmed")) == 2, select(out, "vd.assignment.confirmed")
        assert unstaffed(env) == ["rq-b"], unstaffed(env)
        assert not env.events("deadletter", timeout=5)


def test_redelivered_assignment_is_a_replay():
    """The same assignment event twice: one confirmation (published again with the same id
    and sequence), no refusal; a new assignment event for the same pair is refused."""
    with vdtest.Env() as env:
        d = start(env)
        add_volunteers(env, [("vol-r", place(0, 15000, 0), {})])
        env.send("requests", [vdtest.request_created("rq-r", *place(0))])
        wait_events(env, "assignments", "vd.request.unmatched", request_id="rq-r")
        ev = assign("rq-r", "vol-r", id="desk-assign-1")
        env.send("requests", [ev])
        wait_events(env, "assignments", "vd.assignment.confirmed", request_id="rq-r")
        env.wait_for(lambda: metrics(d).get("vd_coordinator_assigned_total") == 1, timeout=10,
                     what="assigned")
        env.send("requests", [ev])
        env.wait_for(lambda: metrics(d).get("vd_replays_total", 0) >= 1, timeout=20,
                     what="the replay")
        confs = select(env.events("assignments", timeout=5), "vd.assignment.confirmed",
                       request_id="rq-r")
        assert len({(e["id"], e["sequence"]) for e in confs}) == 1, confs
        assert not select(env.events("notifications", timeout=5), "vd.notify.coordinator",
                          kind="assignment_refused"), "a replay was refused"
        env.send("requests", [assign("rq-r", "vol-r", id="desk-assign-2")])
        got = refusals(env, "rq-r")
        assert got[0]["data"]["reason"] == "the request has every volunteer it needs", got
        assert metrics(d).get("vd_coordinator_assigned_total") == 1


def test_assign_fills_an_open_place_of_a_searching_request():
    """Offer mode, a request for two volunteers with one offer out and one place nobody can
    fill: the coordinator's volunteer takes the open place at once; when the offered volunteer
    accepts, the request is confirmed. A place covered by an offer is refused."""
    with vdtest.Env() as env:
        start(env, **{"matching.offer_timeout_ms": 60000})
        add_volunteers(env, [("vol-o1", place(0, 50, 0), {}), ("vol-c", place(0, 20000, 0), {}),
                             ("vol-c2", place(0, 20000, 100), {})])
        env.send("requests", [vdtest.request_created("rq-o", *place(0), volunteers_needed=2)])
        offer = wait_events(env, "assignments", "vd.assignment.offered", request_id="rq-o")[0]
        env.wait_for(lambda: state(env, "rq-o") == "offered", timeout=10, what="offered")
        env.send("requests", [assign("rq-o", "vol-c")])
        conf = wait_events(env, "assignments", "vd.assignment.confirmed", request_id="rq-o")
        assert conf[0]["data"]["volunteer_id"] == "vol-c", conf
        assert state(env, "rq-o") == "offered"
        env.send("requests", [assign("rq-o", "vol-c2")])
        got = refusals(env, "rq-o")
        assert got[0]["data"]["reason"] == "every open place has an offer outstanding", got
        env.send("responses", [vdtest.offer_accepted("rq-o", "vol-o1", offer["data"]["offer_id"])])
        wait_events(env, "assignments", "vd.assignment.confirmed", count=2, request_id="rq-o")
        env.wait_for(lambda: state(env, "rq-o") == "confirmed", timeout=10, what="confirmed")
        assert env.redis.cmd("HGET", "vd:vol/vol-c2", "task") in (None, "")


def test_cancel_leaves_the_unstaffed_set():
    with vdtest.Env() as env:
        start(env)
        env.send("requests", [vdtest.request_created("rq-x", *place(0)),
                              vdtest.request_created("rq-y", *place(0, 10, 0))])
        wait_events(env, "assignments", "vd.request.unmatched", count=2)
        assert sorted(unstaffed(env)) == ["rq-x", "rq-y"], unstaffed(env)
        env.send("requests", [vdtest.request_cancelled("rq-x")])
        wait_events(env, "assignments", "vd.request.cancelled", request_id="rq-x")
        assert unstaffed(env) == ["rq-y"], unstaffed(env)


if __name__ == "__main__":
    vdtest.main(globals())
