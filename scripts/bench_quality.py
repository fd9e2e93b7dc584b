"""Matching quality: arrival-order greedy nearest, vdispatch's rounds, and the offline optimum.

For seeded scenarios (the city and an event, volunteers scarce and plentiful) it builds one
instance, then measures three assignments of it:

  greedy     each request in arrival order takes the nearest free eligible volunteer;
  vdispatch  the real daemon (redis-server, the Kafka mock, build/vdispatchd) gets the requests
             as a burst and matches them in rounds (matching.batch_window_ms so that a burst
             falls into one round);
  optimum    the same rule as vdispatch (the most need served, then the least cost: the
             distance, shaded by the volunteer's tasks in earlier waves), solved over every
             eligible pair at once by scipy's linear_sum_assignment, with no candidate limit
             and no time limit.

It prints, per scenario and method: requests served, need served, total / mean / p95
distance of the volunteers sent, and the most tasks one volunteer did (scenarios with several
waves: after each wave every task is completed and volunteers serve again). Then the targets:
in every scarce scenario vdispatch serves as much need as the optimum; its total distance is
within 3% of the optimum's; and, when supply is scarce, its mean distance is at least 15%
below greedy's. Figures, not assertions: it exits 0 unless something failed to run.

    /usr/bin/python3 scripts/bench_quality.py [--quick] [--seed N]   (scripts/bench-quality.sh)
"""

import argparse
import json
import math
import os
import random
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, HERE)
import vdtest  # noqa: E402
import scenario as scen  # noqa: E402

try:
    import numpy as np
    from scipy.optimize import linear_sum_assignment
except ImportError:
    sys.exit("bench_quality: needs Debian's python3-scipy (scripts/bench-quality.sh installs it)")

RMAX = 5000.0  # matching.radius_max_m
CAP = 4  # matching.max_tasks_per_day
LOAD_M = 150  # matching.load_cost_m
NEED = {"urgent": 300, "high": 200, "normal": 100, "low": 0}  # matching.need_* defaults
EVENT = (40.8170, 111.7630)  # the stadium of the scenario's concert


def need_of(req):
    n = NEED[req["priority"]]
    v = req.get("vulnerability")
    if v:
        if v["age"] > 60:
            n += 10 * ((v["age"] - 60) // 10)
        n += 20 * v["lives_alone"] + 15 * v["low_income"] + 25 * v["disability"]
    return n


def in_disc(rng, centre, radius_m):
    a, d = rng.uniform(0, 2 * math.pi), radius_m * math.sqrt(rng.random())
    return vdtest.offset_m(centre[0], centre[1], d * math.cos(a), d * math.sin(a))


def disc_scenario(name, seed, n_req, n_vol, radius_m, centre, waves=1):
    """The issue's instance: requests and volunteers spread evenly in a disc around the city
    centre, a tenth of the requests needing first aid, a fourth of the volunteers having it."""
    rng = random.Random("%s/%d" % (name, seed))
    vols = []
    for i in range(n_vol):
        lat, lon = in_disc(rng, centre, radius_m)
        vols.append({"id": "%s-v%04d" % (name, i), "lat": lat, "lon": lon,
                     "skills": ["first_aid"] if rng.random() < 0.25 else [], "languages": ["zh"],
                     "cap": CAP, "data": None})
    out = []
    for w in range(waves):
        reqs = []
        for i in range(n_req):
            lat, lon = in_disc(rng, centre, radius_m)
            u = rng.random()
            prio = "urgent" if u < 0.12 else "high" if u < 0.35 else "normal" if u < 0.8 else "low"
            r = {"id": "%s-w%d-r%04d" % (name, w, i), "lat": lat, "lon": lon, "priority": prio,
                 "skills": ["first_aid"] if rng.random() < 0.1 else [], "languages": [],
                 "needed": 1, "rmax": RMAX, "data": None}
            if rng.random() < 0.45:
                r["vulnerability"] = {"age": rng.randint(55, 96), "lives_alone": rng.random() < 0.5,
                                      "low_income": rng.random() < 0.4, "disability": rng.random() < 0.25}
            r["need"] = need_of(r)
            reqs.append(r)
        out.append(reqs)
    return {"name": name, "vols": vols, "waves": out, "event_id": None,
            "scarce": n_req > n_vol}


def _vol(data):
    loc = data["location"]
    return {"id": data["volunteer_id"], "lat": loc["lat"], "lon": loc["lon"],
            "skills": data.get("skills", []), "languages": data.get("languages", []),
            "cap": data.get("max_tasks_per_day") or CAP, "data": data}


def _req(data):
    loc = data["location"]
    r = {"id": data["request_id"], "lat": loc["lat"], "lon": loc["lon"],
         "priority": data.get("priority", "normal"), "skills": data.get("skills", []),
         "languages": data.get("languages", []), "needed": data.get("volunteers_needed", 1),
         "rmax": min(data.get("max_distance_m") or RMAX, RMAX), "data": data}
    if data.get("vulnerability"):
        v = data["vulnerability"]
        r["vulnerability"] = {"age": v.get("age", 0), "lives_alone": bool(v.get("lives_alone")),
                              "low_income": bool(v.get("low_income")),
                              "disability": bool(v.get("disability"))}
    r["need"] = need_of(r)
    return r


def city_scenario(name, seed, n_req, n_vol, waves=1):
    """The Hohhot scenario of the demo (scripts/scenario.py): volunteers on duty at the
    community stations of the four districts, residents' requests weighted to the old
    quarters (home visits, health checks, legal aid, escorts; skills, Mongolian speakers,
    several volunteers for some); only the city's (no event, no past deadline)."""
    b = scen.Builder("%s/%d" % (name, seed), datetime.now(timezone.utc))
    stations = scen.make_stations(b.rng, max(n_vol, 100))
    vols, _, _ = scen.gen_volunteers(b, n_vol, stations)
    vols = [_vol(json.loads(v)["data"]) for _, _, v, pool in vols if pool == "city" and
            json.loads(v)["type"] == "vd.volunteer.available"]
    out = []
    for w in range(waves):
        msgs, _ = scen.gen_requests(b, n_req, stations, 0, 0)
        reqs = []
        for rid, v in msgs:
            data = json.loads(v)["data"]
            if data.get("event_id") or data.get("expires_at"):
                continue
            data["request_id"] = "%s-w%d-%s" % (name, w, data["request_id"])
            reqs.append(_req(data))
        out.append(reqs)
    return {"name": name, "vols": vols, "waves": out, "event_id": None,
            "scarce": sum(r["needed"] for r in out[0]) > len(vols)}


def event_scenario(name, seed, kind, n_vol=None, n_inc=None):
    """An event's volunteers and a surge of its incidents (scripts/scenario.py --event), all
    at once."""
    b = scen.Builder("%s/%d" % (name, seed), datetime.now(timezone.utc))
    vols, incs, stats = scen.gen_event(b, kind, n_vol, n_inc, 1.0)
    vols = [_vol(json.loads(v)["data"]) for _, v in vols]
    reqs = [_req(json.loads(v)["data"]) for _, _, v in incs]
    return {"name": name, "vols": vols, "waves": [reqs], "event_id": stats["event_id"],
            "scarce": sum(r["needed"] for r in reqs) > len(vols)}


def eligible(req, vol):
    return (all(s in vol["skills"] for s in req["skills"]) and
            (not req["languages"] or any(x in vol["languages"] for x in req["languages"])))


def dist(a, b):
    return vdtest.distance_m(a["lat"], a["lon"], b["lat"], b["lon"])


# --------------------------------------------------------------------------------------------
# The two offline methods

def greedy(sc):
    """Each request in arrival order takes its nearest free eligible volunteers (within its
    distance limit, under their daily cap)."""
    load, got = {}, {}
    for reqs in sc["waves"]:
        busy = set()
        for r in reqs:
            for _ in range(r["needed"]):
                best = None
                for v in sc["vols"]:
                    if v["id"] in busy or load.get(v["id"], 0) >= v["cap"] or not eligible(r, v):
                        continue
                    d = dist(r, v)
                    if d <= r["rmax"] and (best is None or d < best[0]):
                        best = (d, v["id"])
                if best:
                    busy.add(best[1])
                    load[best[1]] = load.get(best[1], 0) + 1
                    got.setdefault(r["id"], []).append(best)
    return got, load


def optimum(sc):
    """Per wave, the most need then the least cost (the distance, plus LOAD_M per task the
    volunteer did in earlier waves: vdispatch's rule), over every eligible pair (scipy)."""
    load, got = {}, {}
    for reqs in sc["waves"]:
        vols = [v for v in sc["vols"] if load.get(v["id"], 0) < v["cap"]]
        places = [r for r in reqs for _ in range(r["needed"])]
        nr, nv = len(places), len(vols)
        big = 1e15
        m = (RMAX + LOAD_M * CAP) * nr + 1
        cost = np.full((nr, nv + nr), big)
        for i, r in enumerate(places):
            cost[i, nv + i] = 0.0  # unserved
            for j, v in enumerate(vols):
                if eligible(r, v):
                    d = dist(r, v)
                    if d <= r["rmax"]:
                        cost[i, j] = d + LOAD_M * load.get(v["id"], 0) - m * (r["need"] + 1)
        rows, cols = linear_sum_assignment(cost)
        for i, j in zip(rows, cols):
            if j < nv and cost[i, j] < big:
                vid = vols[j]["id"]
                got.setdefault(places[i]["id"], []).append((dist(places[i], vols[j]), vid))
                load[vid] = load.get(vid, 0) + 1
    return got, load


def vdispatch(sc, env, d):
    """The scenario through the real daemon; returns ({request: [(distance, volunteer)]}, load)."""
    def vol_event(v):
        if v["data"]:
            return vdtest.cloudevent("vd.volunteer.available", v["data"])
        return vdtest.volunteer_available(v["id"], v["lat"], v["lon"], skills=v["skills"])

    def req_event(r):
        if r["data"]:
            return vdtest.cloudevent("vd.request.created", r["data"])
        extra = {"priority": r["priority"], "skills": r["skills"]}
        if r.get("vulnerability"):
            extra["vulnerability"] = r["vulnerability"]
        return vdtest.request_created(r["id"], r["lat"], r["lon"], **extra)

    env.send("volunteers", [vol_event(v) for v in sc["vols"]])
    pool = "vd:pool/ev/%s" % sc["event_id"] if sc["event_id"] else "vd:pool/city"
    env.wait_for(lambda: env.redis.cmd("ZCARD", pool) == len(sc["vols"]), timeout=60,
                 what="the volunteers pooled")
    got, load = {}, {}
    for reqs in sc["waves"]:
        env.send("requests", [req_event(r) for r in reqs])
        want = {r["id"] for r in reqs}
        needed = {r["id"]: r["needed"] for r in reqs}

        def complete():
            o = vdtest.outcomes(env.events("assignments"))
            for rid in want:
                evs = o.get(rid, [])
                conf = {e["data"]["volunteer_id"] for e in evs if e["type"] == "vd.assignment.confirmed"}
                if len(conf) < needed[rid] and not any(e["type"] == "vd.request.unmatched" for e in evs):
                    return None
            return o
        outs = env.wait_for(complete, timeout=300, interval=0.5, what="every request's outcome")
        done = []
        for rid in want:
            seen = set()
            for e in outs.get(rid, []):
                if e["type"] != "vd.assignment.confirmed" or e["data"]["volunteer_id"] in seen:
                    continue
                vid = e["data"]["volunteer_id"]
                seen.add(vid)
                got.setdefault(rid, []).append((e["data"]["distance_m"], vid))
                load[vid] = load.get(vid, 0) + 1
                done.append(vdtest.task_completed(rid, vid))
        if len(sc["waves"]) > 1 and done:
            env.send("responses", done)
            env.wait_for(lambda: env.redis.cmd("ZCARD", pool) >=
                         len([v for v in sc["vols"] if load.get(v["id"], 0) < v["cap"]]), timeout=60,
                         what="the volunteers back")
    return got, load


# --------------------------------------------------------------------------------------------
# Figures

def figures(sc, got, load):
    reqs = [r for w in sc["waves"] for r in w]
    filled = sum(len(got.get(r["id"], [])) for r in reqs)
    ds = sorted(d for r in reqs for d, _ in got.get(r["id"], []))
    p95 = ds[min(len(ds) - 1, int(math.ceil(0.95 * len(ds))) - 1)] if ds else 0.0
    return {"served": filled, "requests": sum(r["needed"] for r in reqs),
            "need": sum((r["need"] + 1) * len(got.get(r["id"], [])) for r in reqs),
            "total": sum(ds), "mean": sum(ds) / len(ds) if ds else 0.0, "p95": p95,
            "max_load": max(load.values()) if load else 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller scenarios")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", action="append", metavar="SCENARIO", help="run only these scenarios")
    a = ap.parse_args()
    q = 0.5 if a.quick else 1.0
    city = vdtest.HOHHOT
    specs = [
        ("city-100x120", lambda: disc_scenario("city-100x120", a.seed, int(100 * q), int(120 * q), 5000, city)),
        ("city-scarce", lambda: city_scenario("city-scarce", a.seed, int(600 * q), int(300 * q))),
        ("city-plentiful", lambda: city_scenario("city-plentiful", a.seed, int(600 * q), int(3000 * q))),
        ("city-4-waves", lambda: city_scenario("city-4-waves", a.seed, int(150 * q), int(600 * q), 4)),
        ("concert-surge", lambda: event_scenario("concert-surge", a.seed, "concert", 600, int(900 * q))),
        ("expo-scarce", lambda: event_scenario("expo-scarce", a.seed, "expo", 140, int(250 * q))),
        ("expo-plentiful", lambda: event_scenario("expo-plentiful", a.seed, "expo", 140, int(60 * q))),
    ]
    rows, checks = [], []
    t_all = time.monotonic()
    for name, make in specs:
        if a.only and name not in a.only:
            continue
        t0 = time.monotonic()
        sc = make()
        nv, nr, waves = len(sc["vols"]), len(sc["waves"][0]), len(sc["waves"])
        res = {"greedy": figures(sc, *greedy(sc)), "optimum": figures(sc, *optimum(sc))}
        with vdtest.Env(topics=dict(vdtest.DEFAULT_TOPICS, **{"vd.requests": 8, "vd.assignments": 8,
                                                              "vd.notifications": 8})) as env:
            listen, _ = vdtest.listen_config()
            d = env.daemon({"matching.offer_timeout_ms": 0, "matching.batch_window_ms": 1500,
                            "matching.max_round": 2000, "log.level": os.environ.get("VD_BENCH_LOG", "info"), "http.listen": listen})
            m0 = vdtest.metrics(d)
            res["vdispatch"] = figures(sc, *vdispatch(sc, env, d))
            m = vdtest.metrics(d)
            d.stop()
        calls = {k: m['vd_redis_calls_by_kind_total{kind="%s"}' % k] -
                 m0['vd_redis_calls_by_kind_total{kind="%s"}' % k] for k in ("round", "widen", "claim")}
        rounds = m["vd_rounds_total"] - m0["vd_rounds_total"]
        matched = max(res["vdispatch"]["served"], 1)
        rounds_note = ("vdispatch: %d round(s) of %.0f requests on average, %d+%d+%d round/widen/claim "
                       "calls (%.3f per volunteer sent), %.1f ms solving" % (
                           rounds, (m["vd_round_requests_total"] - m0["vd_round_requests_total"]) / max(rounds, 1),
                           calls["round"], calls["widen"], calls["claim"], sum(calls.values()) / matched,
                           (m["vd_solve_seconds_total"] - m0["vd_solve_seconds_total"]) * 1000.0))
        print("%s: %d volunteers, %d requests in %d wave(s)%s: %.1f s"
              % (name, nv, nr * waves, waves, ", scarce" if sc["scarce"] else "", time.monotonic() - t0),
              flush=True)
        print("  " + rounds_note, flush=True)
        for meth in ("greedy", "vdispatch", "optimum"):
            rows.append((name, meth, res[meth]))
        v, o, g = res["vdispatch"], res["optimum"], res["greedy"]
        if sc["scarce"]:
            checks.append(("%s: need served, vdispatch = optimum" % name, v["need"] >= o["need"],
                           "%d vs %d" % (v["need"], o["need"])))
            pct = lambda x: 100 * (1 - x / g["mean"]) if g["mean"] else 0  # noqa: E731
            checks.append(("%s: mean distance >= 15%% below greedy" % name,
                           v["mean"] <= 0.85 * g["mean"], "%.0f vs %.0f m (%.0f%% below); the rule's "
                           "optimum: %.0f m (%.0f%% below)" % (v["mean"], g["mean"], pct(v["mean"]),
                                                              o["mean"], pct(o["mean"]))))
        if v["served"] == o["served"] and v["need"] == o["need"]:
            checks.append(("%s: total distance within 3%% of the optimum" % name,
                           v["total"] <= 1.03 * o["total"] + 1e-6,
                           "%.0f vs %.0f m (+%.1f%%)" % (v["total"], o["total"],
                                                        100 * (v["total"] / o["total"] - 1) if o["total"] else 0)))
    print()
    print("| scenario | method | served | need served | total km | mean m | p95 m | max tasks per volunteer |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, meth, f in rows:
        print("| %s | %s | %d / %d | %d | %.1f | %.0f | %.0f | %d |" % (
            name, meth, f["served"], f["requests"], f["need"], f["total"] / 1000.0, f["mean"],
            f["p95"], f["max_load"]))
    print()
    print("| target | holds | figures |")
    print("|---|---|---|")
    for what, ok, fig in checks:
        print("| %s | %s | %s |" % (what, "yes" if ok else "NO", fig))
    print("\n%d of %d targets hold; %.0f s in all" % (sum(1 for c in checks if c[1]), len(checks),
                                                      time.monotonic() - t_all))


if __name__ == "__main__":
    main()
