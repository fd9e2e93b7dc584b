"""Integration tests of a coordinator's assignment (vd.request.assign): a named volunteer sent
to a request nobody could serve, to an open place of a request still searching, and every
refusal (the coordinator is told why, nothing changes); a redelivered assignment; the set of
requests that need a person. Then vdispatchctl, as a separate process against the same
Redis and Kafka: lookups, pools, open requests, assign / cancel / complete through Kafka,
rosters (CSV and JSON lines, with rejected rows), dead letters, and its exit codes.

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_coordinator.py [test names]
"""

import json
import os
import subprocess
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


def test_unstaffed_set_cancel_and_expiry():
    """A cancel takes a request off the list; so does the sweep, once its record expired."""
    with vdtest.Env() as env:
        start(env, **{"redis.request_ttl_s": 60})
        env.send("requests", [vdtest.request_created("rq-x", *place(0)),
                              vdtest.request_created("rq-y", *place(0, 10, 0)),
                              vdtest.request_created("rq-z", *place(0, 20, 0))])
        wait_events(env, "assignments", "vd.request.unmatched", count=3)
        assert sorted(unstaffed(env)) == ["rq-x", "rq-y", "rq-z"], unstaffed(env)
        env.send("requests", [vdtest.request_cancelled("rq-x")])
        wait_events(env, "assignments", "vd.request.cancelled", request_id="rq-x")
        assert sorted(unstaffed(env)) == ["rq-y", "rq-z"], unstaffed(env)
        # rq-z's record "expired" (as Redis would drop it request_ttl_s after its last change).
        now_ms = int(env.redis.cmd("TIME")[0]) * 1000
        env.redis.cmd("ZADD", "vd:unstaffed", "XX", now_ms - 61000, "rq-z")
        env.redis.cmd("DEL", "vd:req/rq-z")
        env.wait_for(lambda: unstaffed(env) == ["rq-y"], timeout=10, what="rq-z swept off the list")


# --------------------------------------------------------------------------------------------
# vdispatchctl

def ctl(d, *args, wait=None, check=None, stdin=None):
    """Runs build/vdispatchctl with the daemon's config; returns (exit code, stdout, stderr).
    check: the exit code it must end with."""
    argv = [vdtest._binary("vdispatchctl"), "-c", d.config_path, "--set", "redis.user=vdispatchctl",
            "--set", "redis.password=" + vdtest.ACL_PASSWORDS["vdispatchctl"]] + list(args)
    if wait is not None:
        argv[3:3] = ["--wait", str(wait)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, input=stdin)
    vdtest.log("vdispatchctl %s -> %d\n%s%s" % (" ".join(args), p.returncode, p.stdout[-2000:],
                                                 p.stderr[-2000:]))
    if check is not None:
        assert p.returncode == check, "exit %d, expected %d: %s %s" % (
            p.returncode, check, p.stdout, p.stderr)
    return p.returncode, p.stdout, p.stderr


def ctl_json(d, *args, check=0):
    _, out, _ = ctl(d, "--json", *args, check=check)
    return json.loads(out)


def test_ctl_lookups_and_pools():
    with vdtest.Env() as env:
        d = start(env)
        add_volunteers(env, [("vol-1", place(0, 100, 0), {"skills": ["first_aid", "driver"],
                                                          "languages": ["zh", "mn"], "team": "red-cross"}),
                             ("vol-2", place(0, 200, 0), {"skills": ["first_aid"]}),
                             ("vol-e", place(2), {"event_id": "expo-1"})])
        env.send("requests", [vdtest.request_created("rq-1", *place(0), service="health_check",
                                                     priority="high", skills=["driver"])])
        wait_events(env, "assignments", "vd.assignment.confirmed", request_id="rq-1")
        env.send("requests", [vdtest.request_created("rq-2", *place(1), service="legal_aid")])
        wait_events(env, "assignments", "vd.request.unmatched", request_id="rq-2")

        _, out, _ = ctl(d, "request", "rq-1", check=0)
        first = out.splitlines()[0]
        assert first.startswith("confirmed "), out
        assert "health_check" in first and "priority high" in first, out
        assert any(l.split()[:2] == ["confirmed", "vol-1"] for l in out.splitlines()[1:]), out
        r = ctl_json(d, "request", "rq-2")
        assert r["state"] == "unmatched" and r["volunteers_missing"] == 1, r
        assert r["unmatched"]["reason"] == "no_volunteer_in_range", r
        assert r["service"] == "legal_aid" and r["volunteers"] == [], r
        assert [f["fact"].split("|")[0] for f in r["log"]] == ["unmatched"], r["log"]

        _, out, _ = ctl(d, "volunteer", "vol-1", check=0)
        assert out.startswith("busy "), out
        assert "rq-1" in out.splitlines()[0], out
        v = ctl_json(d, "volunteer", "vol-2")
        assert v["state"] == "available" and v["pooled"] and v["pool"] == "city", v
        assert v["skills"] == ["first_aid"] and v["tasks_24h"] == 0, v
        v = ctl_json(d, "volunteer", "vol-1")
        assert v["task"] == "rq-1" and v["tasks_24h"] == 1 and not v["pooled"], v
        assert v["team"] == "red-cross" and v["languages"] == ["zh", "mn"], v

        code, out, _ = ctl(d, "request", "rq-none")
        assert code == 1 and "unknown request rq-none" in out, (code, out)
        assert ctl_json(d, "volunteer", "vol-none", check=1)["result"] == "not_found"
        code, _, err = ctl(d, "request", "bad/id")
        assert code == 2 and "not an ID" in err, (code, err)

        p = ctl_json(d, "pools")
        pools = {x["pool"]: x for x in p["pools"]}
        assert pools["city"]["available"] == 1 and pools["city"]["skills"] == {"first_aid": 1}, p
        assert pools["ev/expo-1"]["available"] == 1, p
        assert p["volunteers"] == 3 and p["unstaffed"] == 1, p
        _, out, _ = ctl(d, "pools", check=0)
        assert out.splitlines()[1].split()[:2] == ["city", "1"], out


def test_ctl_open_assign_cancel_complete():
    with vdtest.Env() as env:
        d = start(env)
        add_volunteers(env, [("vol-far", place(0, 15000, 0), {}),
                             ("vol-ev", place(0, 15000, 50), {"event_id": "concert-1"})])
        env.send("requests", [vdtest.request_created("rq-old", *place(0), priority="urgent")])
        wait_events(env, "assignments", "vd.request.unmatched", request_id="rq-old")
        env.send("requests", [vdtest.request_created("rq-new", *place(1), volunteers_needed=2)])
        wait_events(env, "assignments", "vd.request.unmatched", request_id="rq-new")

        o = ctl_json(d, "open")
        assert [x["request_id"] for x in o["open"]] == ["rq-old", "rq-new"], o
        assert o["open"][0]["priority"] == "urgent" and o["open"][1]["volunteers_missing"] == 2, o
        assert o["open"][0]["reason"] == "no_volunteer_in_range", o
        _, out, _ = ctl(d, "open", check=0)
        assert "rq-old" in out.splitlines()[1] and "2 requests to staff" in out, out

        code, out, _ = ctl(d, "--coordinator", "coord.li", "assign", "rq-old", "vol-ev")
        assert code == 1 and out.strip() == "refused: the volunteer serves event concert-1", out
        code, out, _ = ctl(d, "--coordinator", "coord.li", "assign", "rq-old", "vol-far")
        assert code == 0 and out.startswith("confirmed: volunteer vol-far assigned to request rq-old by coord.li"), out
        conf = wait_events(env, "assignments", "vd.assignment.confirmed", request_id="rq-old")
        assert conf[0]["data"]["assigned_by"] == "coord.li" and conf[0]["source"] == "vdispatchd", conf
        sent = select(env.events("requests", timeout=5), "vd.request.assign")
        assert len(sent) == 2 and all(e["source"] == "vdispatchctl" for e in sent), sent
        assert ctl_json(d, "open")["total"] == 1
        code, out, _ = ctl(d, "assign", "rq-none", "vol-far")
        assert code == 1 and "unknown request" in out, out

        code, out, _ = ctl(d, "complete", "rq-old", "vol-ev")
        assert code == 1 and "does not hold" in out, out
        r = ctl_json(d, "complete", "rq-old", "vol-far")
        assert r["result"] == "completed" and r["all_done"], r
        assert ctl_json(d, "request", "rq-old")["state"] == "completed"

        r = ctl_json(d, "cancel", "rq-new")
        assert r["result"] == "cancelled", r
        assert ctl_json(d, "open")["open"] == []
        code, out, _ = ctl(d, "cancel", "rq-new")
        assert code == 1 and "already cancelled" in out, out
        code, out, _ = ctl(d, "cancel", "rq-old")
        assert code == 1 and "already completed" in out, out
        assert not env.events("deadletter", timeout=5)


ROSTER_CSV = """name,volunteer_id,phone,lat,lon,skills,languages,max_tasks_per_day,team,event_id
Wang Fang,vol-r1,13800000001,40.8421,111.7490,first_aid;driver,zh;mn,3,red-cross,
"Li, Lei",vol-r2,13800000002,40.8431,111.7500,,zh,,,concert-7
Zhao Min,vol-r3,13800000003,91,111.75,,zh,,,
Sun Li,bad/id,13800000004,40.84,111.75,,zh,,,

Qian Wu,vol-r4,13800000005,40.85,,,zh,,,
"""


def test_ctl_roster():
    with vdtest.Env() as env:
        d = start(env)
        path = os.path.join(d.dir, "roster.csv")
        with open(path, "w") as f:
            f.write(ROSTER_CSV)
        r = ctl_json(d, "--dry-run", "roster", path, check=1)
        assert r["rows"] == 5 and r["sent"] == 0 and r["dry_run"], r
        assert env.redis.cmd("ZCARD", "vd:vols") == 0
        code, out, err = ctl(d, "roster", path)
        assert code == 1, (code, out, err)
        assert out.splitlines()[0] == "roster %s: 5 rows, 2 sent, 3 rejected" % path, out
        lines = out.splitlines()[1:]
        assert lines[0].startswith("  line 4: data.location.lat: 91"), lines
        assert lines[1].startswith("  line 5: data.volunteer_id:"), lines
        assert lines[2].startswith("  line 7: data.location.lon:"), lines
        assert "100%" in err, err
        env.wait_for(lambda: env.redis.cmd("ZSCORE", POOL, "vol-r1") is not None, timeout=20,
                     what="vol-r1 pooled")
        env.wait_for(lambda: env.redis.cmd("ZSCORE", "vd:pool/ev/concert-7", "vol-r2") is not None,
                     timeout=20, what="vol-r2 pooled in concert-7")
        v = ctl_json(d, "volunteer", "vol-r1")
        assert v["skills"] == ["first_aid", "driver"] and v["languages"] == ["zh", "mn"], v
        assert v["max_tasks_per_day"] == 3 and v["team"] == "red-cross", v
        raw = [m["value"] for m in env.kafka.consume(env.kafka.topic("volunteers"))]
        assert len(raw) == 2 and not any("1380000" in x or "Wang" in x for x in raw), raw

        jl = os.path.join(d.dir, "roster.jsonl")
        with open(jl, "w") as f:
            f.write(json.dumps({"volunteer_id": "vol-j1", "location": {"lat": 40.8, "lon": 111.7},
                                "skills": ["legal"], "languages": ["zh"], "phone": "138"}) + "\n")
            f.write(json.dumps({"volunteer_id": "vol-j2", "lat": 40.81, "lon": 111.71}) + "\n")
            f.write("{not json\n")
            f.write(json.dumps({"volunteer_id": "vol-j3", "location": {"lat": 40.8, "lon": 111.7},
                                "skills": "legal"}) + "\n")
        r = ctl_json(d, "roster", jl, check=1)
        assert r["rows"] == 4 and r["sent"] == 2, r
        assert [x["line"] for x in r["rejected"]] == [3, 4], r
        assert r["rejected"][1]["error"].startswith("data.skills"), r
        env.wait_for(lambda: env.redis.cmd("ZSCORE", POOL, "vol-j2") is not None, timeout=20,
                     what="vol-j2 pooled")
        code, out, _ = ctl(d, "roster", "-", stdin="volunteer_id,lat,lon\nvol-s1,40.8,111.7\n")
        assert code == 0 and "1 rows, 1 sent, 0 rejected" in out, out
        code, _, err = ctl(d, "roster", "-", stdin="id,lat,lon\nvol-s1,40.8,111.7\n")
        assert code == 2 and "no column volunteer_id" in err, err


def test_ctl_deadletters_and_failures():
    with vdtest.Env() as env:
        d = start(env)
        env.send("requests", [("rq-bad", b'{"specversion":"1.0"'),
                              vdtest.request_created("rq-lat", 95.0, 111.7)])
        wait_events(env, "deadletter", count=2)
        dl = ctl_json(d, "deadletters")["deadletters"]
        assert len(dl) == 2, dl
        assert any(x["error"].startswith("message:") for x in dl), dl
        assert any(x["error"].startswith("data.location.lat") for x in dl), dl
        _, out, _ = ctl(d, "--limit", "1", "deadletters", check=0)
        assert out.splitlines()[-1] == "1 dead letter", out

        # Redis unreachable: exit 3, naming it.
        code, _, err = ctl(d, "--set", "redis.port=1", "request", "rq-1")
        assert code == 3 and "Redis" in err, (code, err)
        # Kafka unreachable for an action: exit 3 once --wait runs out.
        env.send("requests", [vdtest.request_created("rq-k", *place(0))])
        wait_events(env, "assignments", "vd.request.unmatched", request_id="rq-k")
        code, _, err = ctl(d, "--set", "kafka.brokers=127.0.0.1:1", "cancel", "rq-k", wait=2)
        assert code == 3 and "Kafka" in err, (code, err)
        # Bad config: exit 2, naming the line.
        bad = os.path.join(d.dir, "bad.ini")
        with open(bad, "w") as f:
            f.write("[matching]\nradius_max_m = far\n")
        p = subprocess.run([vdtest._binary("vdispatchctl"), "-c", bad, "pools"], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 2 and "bad.ini:2" in p.stderr, (p.returncode, p.stderr)
        code, _, err = ctl(d, "assign", "rq-k")
        assert code == 2 and "usage" in err, err


if __name__ == "__main__":
    vdtest.main(globals())
