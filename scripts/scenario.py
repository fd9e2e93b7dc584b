#!/usr/bin/env python3
"""Generates a deterministic Hohhot volunteer-dispatch scenario as input for vd-produce.

The city is modelled on the Hohhot volunteer service: 580,000 registered volunteers (86,000 of
them party-member cadres), 1,397 community service stations (新时代文明实践站), professional
teams (legal aid: 274 stations; anti-drug outreach: 9,000 volunteers; the taxi drivers who
drive students to their exams; health checks; the Ulan Muqir troupe), university teams (the
"Golden Chain" elderly-care team of Inner Mongolia University of Technology), couriers, and
event volunteers (a concert with 600, the museum expo with 140). Residents who ask for help are
mostly elderly people living alone, low-income households and people with disabilities.

Volunteers are placed around community stations in the four urban districts (Xincheng,
Huimin, Yuquan, Saihan); requests come from residents near those stations, plus a few from
villages of the outer counties (no volunteer within reach), a few that need a combination of
skills nobody on duty has, a few the hotline forwarded after their deadline, some that only
event volunteers serve, some duplicates (a client that retried) and a few malformed messages
(which the daemon must send to the dead-letter topic). Residents appear only as opaque IDs.

Usage:
  scripts/scenario.py --volunteers 3000 --requests 1000 --seed 1 --out DIR [--start now]
Writes, in vd-produce's frame format (u32be key length, key, u32be value length, value):
  DIR/volunteers.bin   vd.volunteer.* events keyed by volunteer_id   -> topic vd.volunteers
  DIR/requests.bin     vd.request.created events keyed by request_id -> topic vd.requests
and DIR/scenario.json with the counts (what the pools should hold, what outcomes to expect).
The same seed and --start give byte-identical output. --start (RFC 3339 or "now", default
2024-12-05T08:00:00+08:00, International Volunteer Day) is the morning the scenario plays on;
event times and the exam escorts' deadlines are relative to it, so for a live run pass now.
"""

import argparse
import json
import math
import os
import random
import struct
import sys
import uuid
from datetime import datetime, timedelta, timezone

CST = timezone(timedelta(hours=8))  # Asia/Shanghai, no daylight saving
DEFAULT_START = "2024-12-05T08:00:00+08:00"
EARTH_RADIUS_M = 6372797.560856  # the radius Redis GEO uses

CITY_CENTRE = (40.8421, 111.7490)  # the municipal government, Chilechuan Street

# District: (centre lat, lon, share of the urban population, spread of its stations in m).
DISTRICTS = {
    "xincheng": (40.8580, 111.6680, 0.28, 2300),
    "huimin": (40.8080, 111.6250, 0.18, 1800),
    "yuquan": (40.7900, 111.6680, 0.18, 1900),
    "saihan": (40.8150, 111.7250, 0.36, 2800),
}

# Community stations named in the Hohhot press: (id, district, lat, lon).
NAMED_STATIONS = [
    ("st-xc-dongfeng-liyuan", "xincheng", 40.8500, 111.6900),  # "Red Bee" station, Liyuan
    ("st-hm-tongdao-sanshundian", "huimin", 40.8150, 111.6450),  # old quarter, many elderly
    ("st-sh-renmin-shiqi", "saihan", 40.8180, 111.7000),  # Yuanlin estate party team
    ("st-xc-imut", "xincheng", 40.8420, 111.6920),  # Inner Mongolia Univ. of Technology
    ("st-sh-vocational-college", "saihan", 40.8000, 111.7700),  # Hohhot Vocational College
    ("st-sh-city-hall", "saihan", 40.8421, 111.7490),
    ("st-yq-dazhao", "yuquan", 40.7990, 111.6570),  # Dazhao temple, old town
]

# Event venues and their volunteers' share of the volunteer pool (600:140, as in 2024).
EVENTS = {
    "concert-phoenix-legend": (40.8170, 111.7630, 0.032),  # stadium
    "expo-museum-10th": (40.8430, 111.7210, 0.008),  # exhibition centre
}

# Villages in the outer counties: far beyond any urban volunteer (radius_max_m = 5 km).
SUBURBS = [
    ("wuchuan", 41.0960, 111.4510),
    ("qingshuihe", 39.9210, 111.6830),
    ("togtoh", 40.2770, 111.1940),
    ("horinger-shengle", 40.3790, 111.8240),
    ("tumd-left-bikeqi", 40.6970, 111.1480),
]

# Teams: (id template, share of volunteers, {skill: probability}, mn probability, cap choices).
# "{d}" is replaced by the volunteer's district. Skills outside the team come from BASE_SKILLS.
TEAMS = [
    ("party-{d}", 0.15, {"legal_aid": 0.06, "first_aid": 0.25, "elderly_care": 0.30}, 0.25, None),
    ("taxi-exam-escort", 0.05, {"driver": 1.0, "first_aid": 0.30}, 0.20, (2, 3)),
    ("legal-aid-hohhot", 0.04, {"legal_aid": 1.0, "psych_support": 0.15}, 0.30, (2, 3, 4)),
    ("health-{d}", 0.09, {"health_check": 1.0, "first_aid": 0.80}, 0.25, (3, 4, 6)),
    ("anti-drug-police", 0.03, {"anti_drug": 1.0, "psych_support": 0.35, "first_aid": 0.3}, 0.25, None),
    ("psych-counsellors", 0.03, {"psych_support": 1.0}, 0.25, (2, 3)),
    ("ulan-muqir", 0.02, {"performance": 1.0, "elderly_care": 0.4}, 1.0, (1, 2)),
    ("imut-golden-chain", 0.08, {"elderly_care": 0.9, "sign_language": 0.06, "first_aid": 0.3}, 0.20, (1, 2)),
    ("courier-pioneers", 0.05, {"driver": 0.25, "errands": 0.9}, 0.15, (1, 2)),
    ("women-{d}", 0.06, {"elderly_care": 0.7, "child_care": 0.5, "health_check": 0.05}, 0.25, None),
    ("yili-yixinxiangyang", 0.03, {"first_aid": 0.4, "child_care": 0.3}, 0.20, None),
]
NO_TEAM_MN = 0.25
BASE_SKILLS = {"first_aid": 0.18, "elderly_care": 0.15, "health_check": 0.04, "driver": 0.04,
               "psych_support": 0.02, "legal_aid": 0.01}

# Request kinds: (service, share, required skills, needs-2 probability, age range).
REQUEST_KINDS = [
    ("home_visit", 0.41, [], 0.10, (68, 95)),
    ("health_check", 0.20, ["health_check"], 0.0, (60, 92)),
    ("legal_aid", 0.08, ["legal_aid"], 0.0, (30, 85)),
    ("escort", 0.10, [], 0.25, (65, 93)),  # to hospital; wheelchair users need two
    ("exam_escort", 0.05, ["driver"], 0.0, (17, 19)),
    ("psych_support", 0.06, ["psych_support"], 0.0, (18, 85)),
    ("anti_drug_outreach", 0.03, ["anti_drug"], 0.6, None),
]
SHARE_EVENT = 0.03
SHARE_SUBURB = 0.012
SHARE_RARE = 0.008
SHARE_EXPIRED = 0.004
SHARE_MN = 0.12
# Combinations of skills that no volunteer on duty has (sign language is only found among
# the university students, who are not lawyers, counsellors or health workers).
RARE_NEEDS = [
    ("legal_aid", ["legal_aid", "sign_language"]),
    ("psych_support", ["psych_support", "sign_language"]),
    ("health_check", ["health_check", "sign_language"]),
]

# Malformed messages the daemon must reject to the dead-letter topic: (key, value bytes).
def bad_messages(rng, start):
    base = {"specversion": "1.0", "type": "vd.request.created", "source": "/hohhot/hotline/12345",
            "id": "", "time": rfc3339(start), "datacontenttype": "application/json",
            "data": {"request_id": "", "location": {"lat": 40.81, "lon": 111.68},
                     "service": "home_visit"}}

    def ev(rid, mutate):
        e = json.loads(json.dumps(base))
        e["id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        e["data"]["request_id"] = rid
        mutate(e)
        return rid, json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode()

    out = [
        ev("rq-bad-lat", lambda e: e["data"]["location"].update(lat=91.2)),
        ev("rq-bad-service", lambda e: e["data"].pop("service")),
        ev("rq-bad-specversion", lambda e: e.update(specversion="0.3")),
        ev("rq-bad-type", lambda e: e.update(type="vd.request.updated")),
        ev("rq-bad-needed", lambda e: e["data"].update(volunteers_needed=0)),
    ]
    rid, full = ev("rq-bad-truncated", lambda e: None)
    out.append((rid, full[: len(full) // 2]))  # a producer that died mid-write
    return out


def rfc3339(t):
    return t.astimezone(CST).isoformat(timespec="seconds")


def parse_start(s):
    if s == "now":
        return datetime.now(CST).replace(microsecond=0)
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        sys.exit(f"scenario.py: --start {s!r} is not RFC 3339 (e.g. {DEFAULT_START}) or 'now'")
    if t.tzinfo is None:
        sys.exit(f"scenario.py: --start {s!r} needs a UTC offset (e.g. +08:00 or Z)")
    return t


def offset(lat, lon, north_m, east_m):
    """The point north_m / east_m metres from (lat, lon)."""
    dlat = north_m / EARTH_RADIUS_M
    dlon = east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat)))
    return lat + math.degrees(dlat), lon + math.degrees(dlon)


def jitter(rng, lat, lon, sigma_m, clip_m=None):
    n, e = rng.gauss(0, sigma_m), rng.gauss(0, sigma_m)
    if clip_m:
        r = math.hypot(n, e)
        if r > clip_m:
            n, e = n * clip_m / r, e * clip_m / r
    return offset(lat, lon, n, e)


def loc(lat, lon):
    return {"lat": round(lat, 6), "lon": round(lon, 6)}


def weighted(rng, items, weights):
    return rng.choices(items, weights=weights, k=1)[0]


class Builder:
    """Holds the RNG and the clock and turns event data into framed CloudEvents."""

    def __init__(self, seed, start):
        self.rng = random.Random(seed)
        self.start = start

    def event(self, etype, source, when, data):
        e = {
            "specversion": "1.0",
            "type": etype,
            "source": source,
            "id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "time": rfc3339(when),
            "datacontenttype": "application/json",
            "data": data,
        }
        return json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode()


def frame(key, value):
    k = key.encode() if isinstance(key, str) else key
    return struct.pack(">I", len(k)) + k + struct.pack(">I", len(value)) + value


def make_stations(rng, n_volunteers):
    """Community stations: the named ones plus generated ones spread over each district."""
    stations = [(sid, d, lat, lon) for sid, d, lat, lon in NAMED_STATIONS]
    n = max(40, n_volunteers // 25)
    names = list(DISTRICTS)
    shares = [DISTRICTS[d][2] for d in names]
    counts = {d: 0 for d in names}
    for _ in range(n - len(stations)):
        d = weighted(rng, names, shares)
        clat, clon, _, spread = DISTRICTS[d]
        lat, lon = jitter(rng, clat, clon, spread, clip_m=2.5 * spread)
        counts[d] += 1
        stations.append((f"st-{d[:2]}-{counts[d]:03d}", d, lat, lon))
    return stations


def gen_volunteers(b, n, stations):
    rng = b.rng
    n_event = {eid: int(round(n * share)) for eid, (_, _, share) in EVENTS.items()}
    n_city = n - sum(n_event.values())
    team_ids = [t[0] for t in TEAMS] + [None]
    team_w = [t[1] for t in TEAMS] + [1.0 - sum(t[1] for t in TEAMS)]
    # Stations weighted by their district's population over its station count; the named
    # stations (the first ones) have larger teams.
    st_w = [3.0 if i < len(NAMED_STATIONS) else 1.0 for i in range(len(stations))]
    per_d = {}
    for s in stations:
        per_d[s[1]] = per_d.get(s[1], 0) + 1
    st_w = [w * DISTRICTS[s[1]][2] / per_d[s[1]] for w, s in zip(st_w, stations)]

    vols = []  # (time, key, value, pool)
    stats = {"teams": {}, "skills": {}, "mn": 0, "with_max_tasks": 0}
    seq = 0

    def add(vid, when, data, pool):
        vols.append((when, vid, b.event("vd.volunteer.available", "/hohhot/volunteer-app", when, data), pool))

    for i in range(n_city):
        seq += 1
        vid = f"vol-{seq:06d}"
        sid, d, slat, slon = weighted(rng, stations, st_w)
        lat, lon = jitter(rng, slat, slon, 350, clip_m=1500)
        tid = weighted(rng, team_ids, team_w)
        skills = set()
        mn_p, caps = NO_TEAM_MN, None
        if tid is not None:
            tmpl, _, tskills, mn_p, caps = next(t for t in TEAMS if t[0] == tid)
            for s, p in tskills.items():
                if rng.random() < p:
                    skills.add(s)
            tid = tmpl.replace("{d}", d)
        for s, p in BASE_SKILLS.items():
            if rng.random() < p:
                skills.add(s)
        if "sign_language" in skills:  # students: not lawyers, counsellors or health workers
            skills -= {"legal_aid", "psych_support", "health_check"}
        langs = ["zh"] + (["mn"] if rng.random() < mn_p else [])
        data = {"volunteer_id": vid, "location": loc(lat, lon), "skills": sorted(skills),
                "languages": langs}
        if caps:
            data["max_tasks_per_day"] = rng.choice(caps)
        elif rng.random() < 0.08:
            data["max_tasks_per_day"] = rng.choice((1, 2))
        if tid:
            data["team"] = tid
        when = b.start - timedelta(minutes=45) + timedelta(seconds=rng.uniform(0, 2400))
        add(vid, when, data, "city")
        stats["teams"][tid or "(none)"] = stats["teams"].get(tid or "(none)", 0) + 1
        for s in skills:
            stats["skills"][s] = stats["skills"].get(s, 0) + 1
        stats["mn"] += "mn" in langs
        stats["with_max_tasks"] += "max_tasks_per_day" in data

    for eid, (elat, elon, _) in EVENTS.items():
        for i in range(n_event[eid]):
            seq += 1
            vid = f"vol-{seq:06d}"
            lat, lon = jitter(rng, elat, elon, 180, clip_m=600)
            skills = ["guide"] + (["first_aid"] if rng.random() < 0.2 else [])
            langs = ["zh"] + (["mn"] if rng.random() < 0.2 else []) + (["en"] if rng.random() < 0.15 else [])
            data = {"volunteer_id": vid, "location": loc(lat, lon), "skills": skills,
                    "languages": langs, "team": "students-" + eid.split("-")[0],
                    "event_id": eid}
            when = b.start - timedelta(minutes=30) + timedelta(seconds=rng.uniform(0, 1200))
            add(vid, when, data, "ev:" + eid)

    # A few volunteers move (location updates from the app) and a few go off duty again.
    city = [v for v in vols if v[3] == "city"]
    movers = rng.sample(city, k=min(len(city), n // 50))
    moved = []
    for when, vid, value, _ in movers:
        d = json.loads(value)["data"]["location"]
        lat, lon = jitter(rng, d["lat"], d["lon"], 200, clip_m=500)
        w = when + timedelta(seconds=rng.uniform(60, 600))
        moved.append((w, vid, b.event("vd.volunteer.location", "/hohhot/volunteer-app", w,
                                      {"volunteer_id": vid, "location": loc(lat, lon)}), None))
    leavers = rng.sample(city, k=min(len(city), n // 100))
    left = []
    for when, vid, _, _ in leavers:
        w = when + timedelta(seconds=rng.uniform(700, 900))  # after any move of the same volunteer
        left.append((w, vid, b.event("vd.volunteer.unavailable", "/hohhot/volunteer-app", w,
                                     {"volunteer_id": vid}), None))
    out = sorted(vols + moved + left, key=lambda v: (v[0], v[1]))
    pools = {"city": n_city - len(leavers)}
    for eid in EVENTS:
        pools["ev/" + eid] = n_event[eid]
    stats["event_scoped"] = sum(n_event.values())
    stats["location_updates"] = len(moved)
    stats["went_unavailable"] = len(leavers)
    return out, pools, stats


def resident_id(rng):
    return "res-" + "".join(rng.choice("0123456789abcdef") for _ in range(12))


def vulnerability(rng, service, ages):
    if ages is None:
        return None
    age = rng.randint(*ages)
    v = {"age": age}
    if service in ("home_visit", "health_check", "escort"):
        v["lives_alone"] = rng.random() < (0.70 if service == "home_visit" else 0.45)
    v["low_income"] = rng.random() < (0.55 if service == "legal_aid" else 0.25)
    v["disability"] = rng.random() < (0.30 if service == "escort" else 0.08)
    return v


def priority(rng, service, vul):
    if service == "exam_escort":
        return "high"
    p = rng.choices(["urgent", "high", "normal", "low"], weights=[4, 16, 68, 12])[0]
    if vul and vul.get("age", 0) >= 85 and vul.get("lives_alone") and p in ("normal", "low"):
        p = "high"
    return p


def gen_requests(b, n, stations, n_bad, n_dup):
    rng = b.rng
    n_event = int(round(n * SHARE_EVENT))
    n_suburb = max(1, int(round(n * SHARE_SUBURB)))
    n_rare = max(1, int(round(n * SHARE_RARE)))
    n_expired = max(1, int(round(n * SHARE_EXPIRED)))
    n_regular = n - n_event - n_suburb - n_rare - n_expired
    if n_regular < 0:
        sys.exit("scenario.py: --requests is too small for the scenario's mix (need at least 4)")
    kinds = ["regular"] * n_regular + ["event"] * n_event + ["suburb"] * n_suburb + \
            ["rare"] * n_rare + ["expired"] * n_expired
    rng.shuffle(kinds)
    per_d = {}
    for s in stations:
        per_d[s[1]] = per_d.get(s[1], 0) + 1
    # The old quarters (Huimin's Sanshundian, Yuquan) have more elderly residents per station.
    st_w = [DISTRICTS[s[1]][2] / per_d[s[1]] * (1.6 if s[1] in ("huimin", "yuquan") else 1.0)
            for s in stations]
    services = [k[0] for k in REQUEST_KINDS]
    shares = [k[1] for k in REQUEST_KINDS]
    day = timedelta(hours=9)  # 08:00 .. 17:00
    reqs = []
    # The outcome the scenario was built to produce for some requests, by reason.
    expect = {"no_volunteer_in_range": [], "no_eligible_volunteer": [], "expired": []}
    expect_kind = {"suburb": "no_volunteer_in_range", "rare": "no_eligible_volunteer",
                   "expired": "expired"}
    stats = {"services": {}, "kinds": {}, "mn": 0, "needs_two_or_more": 0, "volunteers_needed": 0}
    for i, kind in enumerate(kinds):
        rid = f"rq-{i + 1:06d}"
        when = b.start + timedelta(seconds=rng.uniform(0, day.total_seconds()))
        if kind == "expired":  # asked for last evening, stuck in the hotline's overnight queue
            when = b.start - timedelta(hours=rng.uniform(10, 14))
        source = rng.choices(["/hohhot/hotline/12345", "/hohhot/app/residents",
                              "/hohhot/community-stations"], weights=[45, 35, 20])[0]
        data = {"request_id": rid}
        if kind == "event":
            eid = rng.choices(list(EVENTS), weights=[e[2] for e in EVENTS.values()])[0]
            elat, elon, _ = EVENTS[eid]
            lat, lon = jitter(rng, elat, elon, 200, clip_m=500)
            data.update(location=loc(lat, lon), service="event_support", event_id=eid,
                        priority=rng.choice(["high", "normal", "normal"]))
            if rng.random() < 0.3:
                data["volunteers_needed"] = 2
            source = "/hohhot/events/" + eid
        else:
            if kind == "suburb":
                name, slat, slon = rng.choice(SUBURBS)
                lat, lon = jitter(rng, slat, slon, 300, clip_m=800)
                service = rng.choice(["home_visit", "health_check"])
                skills = ["health_check"] if service == "health_check" else []
                ages = (65, 92)
            else:
                sid, d, slat, slon = weighted(rng, stations, st_w)
                lat, lon = jitter(rng, slat, slon, 500, clip_m=2000)
                if kind == "rare":
                    service, skills = rng.choice(RARE_NEEDS)
                    ages = (20, 80)
                else:
                    k = weighted(rng, REQUEST_KINDS, shares)
                    service, skills, p2, ages = k[0], list(k[2]), k[3], k[4]
                    if service == "escort" and rng.random() < 0.3:
                        skills = ["first_aid"]
            data.update(location=loc(lat, lon), service=service)
            if skills:
                data["skills"] = skills
            vul = vulnerability(rng, service, ages)
            if vul:
                data["vulnerability"] = vul
            data["priority"] = priority(rng, service, vul)
            if kind == "regular":
                p2 = next(k[3] for k in REQUEST_KINDS if k[0] == service)
                if service == "escort" and vul and vul.get("disability"):
                    p2 = 0.8
                if rng.random() < p2:
                    data["volunteers_needed"] = 3 if service == "anti_drug_outreach" and rng.random() < 0.3 else 2
            if service != "exam_escort" and service != "anti_drug_outreach" and rng.random() < SHARE_MN:
                data["languages"] = ["mn"]
            if service == "exam_escort":
                # The exam starts two hours after the request: late is no use.
                data["expires_at"] = rfc3339(when + timedelta(hours=2))
            if kind == "expired":
                # The visit was due early this morning; the queue delivers it too late.
                data["expires_at"] = rfc3339(b.start - timedelta(minutes=rng.randint(30, 90)))
            if service == "anti_drug_outreach":
                source = "/hohhot/community-stations"  # asked for by a station, not a resident
            else:
                data["resident_id"] = resident_id(rng)
            if service in ("home_visit", "health_check") and rng.random() < 0.25:
                data["max_distance_m"] = 3000  # station rule: a volunteer from the neighbourhood
        reqs.append((when, rid, b.event("vd.request.created", source, when, data)))
        svc = data["service"]
        stats["services"][svc] = stats["services"].get(svc, 0) + 1
        stats["kinds"][kind] = stats["kinds"].get(kind, 0) + 1
        if kind in expect_kind:
            expect[expect_kind[kind]].append(rid)
        stats["mn"] += "mn" in data.get("languages", [])
        need = data.get("volunteers_needed", 1)
        stats["needs_two_or_more"] += need > 1
        stats["volunteers_needed"] += need
    reqs.sort(key=lambda r: (r[0], r[1]))
    msgs = [(rid, value) for _, rid, value in reqs]
    # Malformed messages at random places in the stream, and duplicates (a client retrying a
    # send it thought had failed: the same event again, later).
    bad = bad_messages(rng, b.start)[:n_bad] if n_bad else []
    for m in bad:
        msgs.insert(rng.randint(0, len(msgs)), m)
    dups = rng.sample([m for m in msgs if m[0].startswith("rq-0")], k=min(n_dup, n))
    for m in dups:
        pos = msgs.index(m)
        msgs.insert(rng.randint(pos + 1, len(msgs)), m)
    stats["malformed"] = len(bad)
    stats["expected_unmatched"] = {k: sorted(v) for k, v in expect.items()}
    stats["duplicates"] = len(dups)
    return msgs, stats


# Large events, as the Hohhot press describes them: {kind: (event_id, venue, volunteers, spread of
# the volunteers' posts in m, incidents, minutes)}. The incidents of a concert come in surges
# (the doors opening, the interval, the way out).
EVENT_KINDS = {
    "concert": ("concert-phoenix-legend", EVENTS["concert-phoenix-legend"][:2], 600, 350, 2000, 3.0),
    "expo": ("expo-museum-10th", EVENTS["expo-museum-10th"][:2], 140, 150, 300, 3.0),
}

# Incidents at an event: (service, share, priority, required skills, vulnerability?, needs 2).
INCIDENTS = [
    ("first_aid", 0.08, "urgent", ["first_aid"], True, 0.0),  # someone fainted, a fall
    ("lost_person", 0.12, "high", [], False, 0.0),  # a lost child, a confused elder
    ("accessibility", 0.15, "high", [], True, 0.35),  # a wheelchair user to their seat
    ("crowd_guidance", 0.45, "normal", [], False, 0.1),
    ("information", 0.20, "low", [], False, 0.0),
]


def gen_event(b, kind, n_vol=None, n_inc=None, minutes=None):
    """An event's volunteers (all in its pool) and incidents over minutes, in surges. Returns
    (volunteer messages, incident messages with their offset in seconds, stats)."""
    rng = b.rng
    eid, (elat, elon), dv, spread, di, dm = EVENT_KINDS[kind]
    n_vol, n_inc, minutes = n_vol or dv, n_inc or di, minutes or dm
    vols = []
    for i in range(n_vol):
        lat, lon = jitter(rng, elat, elon, spread, clip_m=2.5 * spread)
        skills = ["guide"] + (["first_aid"] if rng.random() < 0.2 else [])
        langs = ["zh"] + (["mn"] if rng.random() < 0.2 else []) + (["en"] if rng.random() < 0.15 else [])
        vid = f"ev-{kind}-{i:04d}"
        data = {"volunteer_id": vid, "location": loc(lat, lon), "skills": skills,
                "languages": langs, "team": "students-" + kind, "event_id": eid}
        vols.append((vid, b.event("vd.volunteer.available", "/hohhot/volunteer-app", b.start, data)))
    # Surges: most incidents come around three moments of the event.
    total = minutes * 60.0
    surges = [0.1 * total, 0.5 * total, 0.9 * total]
    incs, stats = [], {"priorities": {}, "services": {}}
    for i in range(n_inc):
        at = min(max(rng.gauss(rng.choice(surges), total * 0.08), 0.0), total)
        if rng.random() < 0.3:
            at = rng.uniform(0, total)
        svc, _, prio, skills, vul, p2 = weighted(rng, INCIDENTS, [k[1] for k in INCIDENTS])
        lat, lon = jitter(rng, elat, elon, spread * 0.8, clip_m=2.5 * spread)
        rid = f"inc-{kind}-{i:05d}"
        data = {"request_id": rid, "location": loc(lat, lon), "service": svc, "priority": prio,
                "event_id": eid}
        if skills:
            data["skills"] = skills
        if vul:
            data["vulnerability"] = {"age": rng.randint(8, 92), "lives_alone": False,
                                     "low_income": rng.random() < 0.2, "disability": svc == "accessibility"}
        if rng.random() < p2:
            data["volunteers_needed"] = 2
        when = b.start + timedelta(seconds=at)
        incs.append((at, rid, b.event("vd.request.created", "/hohhot/events/" + eid, when, data)))
        stats["priorities"][prio] = stats["priorities"].get(prio, 0) + 1
        stats["services"][svc] = stats["services"].get(svc, 0) + 1
    incs.sort(key=lambda x: (x[0], x[1]))
    stats.update(event_id=eid, volunteers=n_vol, incidents=n_inc, minutes=minutes)
    return vols, incs, stats


def main_event(a):
    start = parse_start(a.start)
    b = Builder(a.seed, start)
    vols, incs, stats = gen_event(b, a.event, a.volunteers, a.requests, a.minutes)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "volunteers.bin"), "wb") as f:
        for key, value in vols:
            f.write(frame(key, value))
    with open(os.path.join(a.out, "requests.bin"), "wb") as f:
        for _, key, value in incs:
            f.write(frame(key, value))
    summary = {"seed": a.seed, "start": rfc3339(start), "event": a.event, "volunteers": len(vols),
               "volunteer_messages": len(vols), "pools": {"ev/" + stats["event_id"]: len(vols)},
               "requests": len(incs), "request_messages": len(incs),
               "request_offsets_s": [round(at, 3) for at, _, _ in incs], "request_stats": stats}
    with open(os.path.join(a.out, "scenario.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(
        description="Generate a deterministic Hohhot volunteer-dispatch scenario (framed for vd-produce).")
    ap.add_argument("--volunteers", type=int, default=3000, help="volunteers on duty (default 3000)")
    ap.add_argument("--requests", type=int, default=1000, help="valid requests (default 1000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--start", default=DEFAULT_START,
                    help=f"RFC 3339 morning of the scenario, or 'now' (default {DEFAULT_START})")
    ap.add_argument("--bad", type=int, default=6, help="malformed request messages, 0..6 (default 6)")
    ap.add_argument("--duplicates", type=int, default=5, help="re-sent request events (default 5)")
    ap.add_argument("--out", required=True, help="output directory (created if missing)")
    ap.add_argument("--event", choices=sorted(EVENT_KINDS),
                    help="a large event instead of the city: its volunteers (all in its pool, default "
                         "600 for the concert, 140 for the expo) and incidents (2000 / 300) over "
                         "--minutes; --volunteers and --requests override the sizes")
    ap.add_argument("--minutes", type=float, default=None, help="the event's length (default 3)")
    a = ap.parse_args()
    if a.event:
        if "--volunteers" not in sys.argv:
            a.volunteers = None
        if "--requests" not in sys.argv:
            a.requests = None
        return main_event(a)
    if a.volunteers < 100:
        ap.error("--volunteers must be at least 100")
    if a.requests < 4:
        ap.error("--requests must be at least 4")
    if not 0 <= a.bad <= 6 or a.duplicates < 0:
        ap.error("--bad must be 0..6 and --duplicates >= 0")
    start = parse_start(a.start)
    b = Builder(a.seed, start)
    stations = make_stations(b.rng, a.volunteers)
    vols, pools, vstats = gen_volunteers(b, a.volunteers, stations)
    reqs, rstats = gen_requests(b, a.requests, stations, a.bad, a.duplicates)

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "volunteers.bin"), "wb") as f:
        for _, key, value, _ in vols:
            f.write(frame(key, value))
    with open(os.path.join(a.out, "requests.bin"), "wb") as f:
        for key, value in reqs:
            f.write(frame(key, value))
    summary = {
        "seed": a.seed,
        "start": rfc3339(start),
        "stations": len(stations),
        "volunteers": a.volunteers,
        "volunteer_messages": len(vols),
        "pools": pools,
        "volunteer_stats": vstats,
        "requests": a.requests,
        "request_messages": len(reqs),
        "request_stats": rstats,
    }
    with open(os.path.join(a.out, "scenario.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
