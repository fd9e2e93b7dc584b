#!/usr/bin/env python3
"""Summarises a vdispatch run from what is on its Kafka topics.

Reads `kcat -C -J` JSON lines (one message each: key, payload, partition, offset, ts in ms)
of the requests topic and of the assignments topic, and optionally of the dead-letter topic,
and prints: requests, volunteers confirmed, requests fully confirmed, unmatched requests by
reason, the distance of confirmations (mean, p95), the latency from a request's message to
the message that completed its outcome (p50, p99; Kafka message timestamps), dead letters,
and consistency checks (outcomes per request, volunteers assigned twice).

Usage:
  kcat -C -b BROKERS -t vd.requests    -o beginning -e -J -q > requests.jsonl
  kcat -C -b BROKERS -t vd.assignments -o beginning -e -J -q > assignments.jsonl
  kcat -C -b BROKERS -t vd.deadletter  -o beginning -e -J -q > deadletter.jsonl
  scripts/summary.py requests.jsonl assignments.jsonl [--deadletter deadletter.jsonl] [--json]
  scripts/summary.py --progress requests.jsonl assignments.jsonl [--deadletter FILE]
--scenario DIR/scenario.json (from scripts/scenario.py) adds checks: did the requests built to
go unmatched (suburban villages, rare skills, past deadlines) get exactly those reasons, and
did every malformed message reach the dead-letter topic. --json prints the numbers as one JSON object instead of the table. --progress prints only
"RESOLVED EXPECTED" (requests with a complete outcome, valid requests) and exits 0 when every
request has one, 3 otherwise (for scripts that wait).

A request counts once however often it was sent (duplicates are reported). A request message
the daemon dead-lettered (same partition and offset) is not a request. A request is resolved
when it has as many confirmations as volunteers_needed, or a vd.request.unmatched (a partly
served request has both). Latency is measured from the first message of the request.
"""

import argparse
import json
import math
import sys


def read_jsonl(path, what):
    """Returns the kcat -J records of a file; exits with a clear message when it is not one."""
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    # kcat prints a trailing "% Reached end" only without -q; skip such lines.
                    if line.startswith("%"):
                        continue
                    sys.exit(f"summary.py: {path}:{n}: not a kcat -J JSON line ({what})")
                if not isinstance(rec, dict) or "payload" not in rec:
                    sys.exit(f"summary.py: {path}:{n}: no payload; was it written by kcat -J? ({what})")
                out.append(rec)
    except OSError as e:
        sys.exit(f"summary.py: cannot read {what} file: {e}")
    return out


def event_of(rec):
    """The CloudEvent in a record's payload, or None when it is not a JSON object."""
    p = rec.get("payload")
    if not isinstance(p, str):
        return None
    try:
        e = json.loads(p)
    except ValueError:
        return None
    return e if isinstance(e, dict) else None


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a list; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


def analyse(req_recs, asg_recs, dl_recs, scenario=None):
    # Dead letters: which input messages the daemon rejected.
    rejected = set()
    dl_by_topic = {}
    dl_reasons = {}
    for rec in dl_recs or []:
        e = event_of(rec)
        d = (e or {}).get("data") or {}
        if not isinstance(d, dict):
            continue
        rejected.add((d.get("topic"), d.get("partition"), d.get("offset")))
        dl_by_topic[d.get("topic")] = dl_by_topic.get(d.get("topic"), 0) + 1
        err = str(d.get("error", "?"))
        field = err.split(":", 1)[0]
        dl_reasons[field] = dl_reasons.get(field, 0) + 1

    # Requests: the first message of each request_id.
    requests = {}  # rid -> {ts, needed, service}
    duplicates = 0
    not_requests = 0
    for rec in req_recs:
        e = event_of(rec)
        d = (e or {}).get("data")
        if (rec.get("topic"), rec.get("partition"), rec.get("offset")) in rejected or \
                e is None or e.get("type") != "vd.request.created" or not isinstance(d, dict) or \
                not isinstance(d.get("request_id"), str):
            not_requests += 1
            continue
        rid = d["request_id"]
        if rid in requests:
            duplicates += 1
            continue
        needed = d.get("volunteers_needed", 1)
        requests[rid] = {"ts": rec.get("ts"), "needed": needed if isinstance(needed, int) else 1,
                         "service": str(d.get("service", "?")),
                         "priority": str(d.get("priority", "normal"))}

    # Outcomes, in message-timestamp order.
    confirmed = {}  # rid -> {vid: distance}
    unmatched = {}  # rid -> data of the first unmatched
    resolved_ts = {}  # rid -> ts of the message that completed the outcome
    vol_requests = {}  # vid -> set of rids
    # When each volunteer was held and freed (the events' own times): (vid, rid) -> [from, to].
    held = {}
    conflicts = set()
    out_msgs = 0
    other_types = {}
    withdrawn = {}  # reason -> offers withdrawn (offer mode)
    for rec in sorted(asg_recs, key=lambda r: (r.get("ts") or 0, r.get("partition", 0), r.get("offset", 0))):
        e = event_of(rec)
        if e is None:
            other_types["(not JSON)"] = other_types.get("(not JSON)", 0) + 1
            continue
        t, d = e.get("type"), e.get("data") or {}
        rid = d.get("request_id")
        out_msgs += 1
        vid = d.get("volunteer_id")
        if vid and t in ("vd.assignment.confirmed", "vd.assignment.offered"):
            span = held.setdefault((vid, rid), [e.get("time"), None])
            span[0] = min(span[0], e.get("time") or span[0])
        elif vid and t in ("vd.request.completed", "vd.request.cancelled", "vd.assignment.released",
                           "vd.assignment.withdrawn") and (vid, rid) in held:
            held[(vid, rid)][1] = e.get("time")
        if t == "vd.assignment.confirmed":
            vid, dist = d.get("volunteer_id"), d.get("distance_m")
            c = confirmed.setdefault(rid, {})
            if vid in c and c[vid] != dist:
                conflicts.add(rid)
            c[vid] = dist
            vol_requests.setdefault(vid, set()).add(rid)
        elif t == "vd.request.unmatched":
            prev = unmatched.get(rid)
            if prev is not None and prev.get("reason") != d.get("reason"):
                conflicts.add(rid)
            if prev is None:
                unmatched[rid] = d
        else:
            other_types[t] = other_types.get(t, 0) + 1
            if t == "vd.assignment.withdrawn":
                why = str(d.get("reason", "?"))
                withdrawn[why] = withdrawn.get(why, 0) + 1
            continue
        req = requests.get(rid)
        if req and rid not in resolved_ts and (
                rid in unmatched or len(confirmed.get(rid, {})) >= req["needed"]):
            resolved_ts[rid] = rec.get("ts")

    for rid, c in confirmed.items():
        req = requests.get(rid)
        if req and len(c) > req["needed"]:
            conflicts.add(rid)
        if req and len(c) >= req["needed"] and rid in unmatched:
            conflicts.add(rid)  # fully served and unmatched: two outcomes

    fully = sum(1 for rid, r in requests.items()
                if len(confirmed.get(rid, {})) >= r["needed"] and rid not in unmatched)
    partly = sum(1 for rid in requests if rid in unmatched and confirmed.get(rid))
    by_reason = {}
    for rid, d in unmatched.items():
        if rid in requests:
            reason = str(d.get("reason", "?"))
            by_reason[reason] = by_reason.get(reason, 0) + 1
    dists = [v for rid, c in confirmed.items() if rid in requests for v in c.values()
             if isinstance(v, (int, float))]
    lat = [resolved_ts[rid] - requests[rid]["ts"] for rid in resolved_ts
           if isinstance(resolved_ts[rid], int) and isinstance(requests[rid]["ts"], int)]

    # A volunteer held by two requests at once: a hold that began before the previous one ended
    # (the events' RFC 3339 times, all written by the daemons in UTC, compare as text).
    twice = set()
    spans = {}
    for (vid, rid), (t0, t1) in held.items():
        spans.setdefault(vid, []).append((t0 or "", t1 or "~"))
    for vid, ss in spans.items():
        ss.sort()
        for (a0, a1), (b0, b1) in zip(ss, ss[1:]):
            if b0 < a1:
                twice.add(vid)

    by_priority = {}
    for rid, r in requests.items():
        p = by_priority.setdefault(r["priority"], {"requests": 0, "fully_confirmed": 0, "unmatched": 0})
        p["requests"] += 1
        if rid in unmatched:
            p["unmatched"] += 1
        elif len(confirmed.get(rid, {})) >= r["needed"]:
            p["fully_confirmed"] += 1

    by_service = {}
    for rid, r in requests.items():
        s = by_service.setdefault(r["service"], {"requests": 0, "fully_confirmed": 0, "unmatched": 0,
                                                  "distances": []})
        s["requests"] += 1
        if rid in unmatched:
            s["unmatched"] += 1
        elif len(confirmed.get(rid, {})) >= r["needed"]:
            s["fully_confirmed"] += 1
        s["distances"] += [v for v in confirmed.get(rid, {}).values() if isinstance(v, (int, float))]

    def rnd(x, nd=1):
        return None if x is None else round(x, nd)

    res = {
        "requests": len(requests),
        "request_messages": len(req_recs),
        "duplicate_request_messages": duplicates,
        "volunteers_needed": sum(r["needed"] for r in requests.values()),
        "confirmed_volunteers": sum(len(c) for rid, c in confirmed.items() if rid in requests),
        "requests_fully_confirmed": fully,
        "requests_partly_confirmed": partly,
        "requests_unmatched": sum(by_reason.values()),
        "unmatched_by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        "requests_without_outcome": len(requests) - len(resolved_ts),
        "distance_m": {"mean": rnd(sum(dists) / len(dists)) if dists else None,
                       "p50": rnd(percentile(dists, 50)), "p95": rnd(percentile(dists, 95)),
                       "max": rnd(max(dists)) if dists else None},
        "latency_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99),
                       "max": max(lat) if lat else None},
        "assignment_messages": out_msgs,
        "other_assignment_events": other_types,
        "offer_withdrawals": sum(withdrawn.values()),
        "withdrawn_by_reason": withdrawn,
        "outcomes_for_unknown_requests": len((set(confirmed) | set(unmatched)) - set(requests)),
        "requests_with_conflicting_outcomes": len(conflicts),
        "volunteers_assigned_to_several_requests": sum(1 for s in vol_requests.values() if len(s) > 1),
        "volunteers_held_twice_at_once": len(twice),
        "by_priority": {k: by_priority[k] for k in ("urgent", "high", "normal", "low") if k in by_priority},
        "by_service": {k: {"requests": v["requests"], "fully_confirmed": v["fully_confirmed"],
                           "unmatched": v["unmatched"],
                           "mean_distance_m": rnd(sum(v["distances"]) / len(v["distances"]))
                           if v["distances"] else None}
                       for k, v in sorted(by_service.items(), key=lambda kv: -kv[1]["requests"])},
    }
    if scenario is not None:
        rs = scenario.get("request_stats", {})
        checks = {}
        for reason, rids in sorted(rs.get("expected_unmatched", {}).items()):
            got = sum(1 for rid in rids if unmatched.get(rid, {}).get("reason") == reason)
            checks["unmatched:" + reason] = {"expected": len(rids), "got": got}
        if dl_recs is not None and "malformed" in rs:
            checks["dead_letters"] = {"expected": rs["malformed"], "got": len(dl_recs)}
        if "requests" in scenario:
            checks["requests"] = {"expected": scenario["requests"], "got": len(requests)}
        res["scenario_checks"] = checks
    if dl_recs is not None:
        res["dead_letters"] = len(dl_recs)
        res["dead_letters_by_topic"] = dl_by_topic
        res["dead_letters_by_field"] = dict(sorted(dl_reasons.items()))
    return res


def fmt(v, unit=""):
    return "-" if v is None else f"{v:,}{unit}" if isinstance(v, int) else f"{v:,.1f}{unit}"


def print_table(r):
    def pct(n, d):
        return f"({100.0 * n / d:5.1f}%)" if d else ""

    rows = [
        ("requests", fmt(r["requests"]),
         f"{r['request_messages']} messages, {r['duplicate_request_messages']} duplicates"),
        ("volunteers needed", fmt(r["volunteers_needed"]), ""),
        ("volunteers confirmed", fmt(r["confirmed_volunteers"]),
         pct(r["confirmed_volunteers"], r["volunteers_needed"])),
        ("requests fully confirmed", fmt(r["requests_fully_confirmed"]),
         pct(r["requests_fully_confirmed"], r["requests"])),
        ("requests unmatched", fmt(r["requests_unmatched"]),
         pct(r["requests_unmatched"], r["requests"]) +
         (f", {r['requests_partly_confirmed']} of them partly served" if r["requests_partly_confirmed"] else "")),
    ]
    for reason, n in r["unmatched_by_reason"].items():
        rows.append(("  " + reason, fmt(n), ""))
    rows += [
        ("requests without outcome", fmt(r["requests_without_outcome"]), ""),
        ("distance mean / p95", f"{fmt(r['distance_m']['mean'])} / {fmt(r['distance_m']['p95'])} m",
         f"median {fmt(r['distance_m']['p50'])} m, max {fmt(r['distance_m']['max'])} m"),
        ("latency p50 / p99", f"{fmt(r['latency_ms']['p50'])} / {fmt(r['latency_ms']['p99'])} ms",
         f"max {fmt(r['latency_ms']['max'])} ms (request message to outcome message)"),
    ]
    offers = r["other_assignment_events"].get("vd.assignment.offered", 0)
    if offers:
        rows.append(("offers made", fmt(offers),
                     f"{r['offer_withdrawals']} withdrawn (" +
                     ", ".join(f"{k} {v}" for k, v in sorted(r["withdrawn_by_reason"].items())) + ")"))
    if "dead_letters" in r:
        detail = ", ".join(f"{k} {v}" for k, v in r["dead_letters_by_field"].items())
        rows.append(("dead letters", fmt(r["dead_letters"]), detail))
    rows += [
        ("conflicting outcomes", fmt(r["requests_with_conflicting_outcomes"]), "(must be 0)"),
        ("volunteers on >1 request", fmt(r["volunteers_assigned_to_several_requests"]),
         "(one after the other: their tasks completed in between)"),
        ("volunteers held twice at once", fmt(r["volunteers_held_twice_at_once"]), "(must be 0)"),
    ]
    w0 = max(len(x[0]) for x in rows)
    w1 = max(len(x[1]) for x in rows)
    print("vdispatch run summary")
    print("-" * (w0 + w1 + 4))
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip())
    print()
    checks = r.get("scenario_checks")
    if checks:
        print("scenario checks (outcomes the scenario was built to produce)")
        w = max(len(k) for k in checks)
        for name, c in checks.items():
            ok = "ok" if c["got"] == c["expected"] else "MISMATCH"
            print(f"  {name:<{w}}  {c['got']:>5}/{c['expected']:<5}  {ok}")
        print()
    prio = r["by_priority"]
    if prio:
        print(f"{'priority':<8}  {'requests':>8}  {'confirmed':>9}  {'unmatched':>9}  {'served':>6}")
        for k, v in prio.items():
            print(f"{k:<8}  {v['requests']:>8}  {v['fully_confirmed']:>9}  {v['unmatched']:>9}  "
                  f"{100.0 * v['fully_confirmed'] / v['requests']:>5.1f}%")
        print()
    svc = r["by_service"]
    if svc:
        w = max(len(k) for k in svc)
        print(f"{'service':<{w}}  {'requests':>8}  {'confirmed':>9}  {'unmatched':>9}  {'mean dist':>9}")
        for k, v in svc.items():
            print(f"{k:<{w}}  {v['requests']:>8}  {v['fully_confirmed']:>9}  {v['unmatched']:>9}  "
                  f"{fmt(v['mean_distance_m'], ' m'):>9}")


def main():
    ap = argparse.ArgumentParser(description="Summarise a vdispatch run from kcat -J dumps.")
    ap.add_argument("requests", help="kcat -J lines of the requests topic")
    ap.add_argument("assignments", help="kcat -J lines of the assignments topic")
    ap.add_argument("--deadletter", help="kcat -J lines of the dead-letter topic")
    ap.add_argument("--scenario", help="scenario.json written by scripts/scenario.py: check its expectations")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--progress", action="store_true",
                    help="print 'RESOLVED EXPECTED'; exit 0 when all are resolved, else 3")
    a = ap.parse_args()
    req = read_jsonl(a.requests, "requests")
    asg = read_jsonl(a.assignments, "assignments")
    dl = read_jsonl(a.deadletter, "dead letters") if a.deadletter else None
    scenario = None
    if a.scenario:
        try:
            with open(a.scenario, encoding="utf-8") as f:
                scenario = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"summary.py: cannot read the scenario file: {e}")
    r = analyse(req, asg, dl, scenario)
    if a.progress:
        done = r["requests"] - r["requests_without_outcome"]
        print(done, r["requests"])
        sys.exit(0 if done == r["requests"] else 3)
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        print_table(r)


if __name__ == "__main__":
    main()
