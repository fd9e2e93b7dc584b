#!/usr/bin/env python3
"""The volunteers' phones, for the demo: follows vd.assignments and answers each
vd.assignment.offered on vd.responses after a human-like pause -- accept, decline, or no answer
at all (the offer then times out) -- with a seeded choice per (request, volunteer), so a run
can be repeated. With --complete MIN:MAX it also reports each confirmed task done
(vd.task.completed) after that many seconds, so volunteers serve again (the demo's events).
Stops on SIGTERM/SIGINT and writes what it did as JSON (--stats).

    volunteer_app.py --brokers HOST:PORT --produce build/vd-produce --stats app.json
                     [--seed 1] [--accept 0.8] [--decline 0.1] [--pause 0.5:4] [--complete 2:6]
"""

import argparse
import heapq
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

stop = False


def on_signal(signum, frame):
    global stop
    stop = True


def frame(key, value):
    k, v = key.encode(), value.encode()
    return struct.pack(">I", len(k)) + k + struct.pack(">I", len(v)) + v


def answer(kind, rid, vid, offer_id):
    now = datetime.now(timezone.utc)
    data = {"request_id": rid, "volunteer_id": vid}
    if offer_id:
        data["offer_id"] = offer_id
    return json.dumps({
        "specversion": "1.0", "type": kind, "source": "/hohhot/volunteer-app",
        "id": str(uuid.uuid4()), "time": now.strftime("%Y-%m-%dT%H:%M:%S.") +
        "%03dZ" % (now.microsecond // 1000), "datacontenttype": "application/json",
        "data": data}, separators=(",", ":"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--produce", required=True, help="path of vd-produce")
    ap.add_argument("--stats", required=True, help="JSON file written at the end")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--accept", type=float, default=0.8)
    ap.add_argument("--decline", type=float, default=0.1)
    ap.add_argument("--pause", default="0.5:4", help="answer after MIN:MAX seconds")
    ap.add_argument("--complete", help="report confirmed tasks done after MIN:MAX seconds")
    ap.add_argument("--assignments", default="vd.assignments")
    ap.add_argument("--responses", default="vd.responses")
    a = ap.parse_args()
    lo, hi = (float(x) for x in a.pause.split(":"))
    done_lo, done_hi = (float(x) for x in a.complete.split(":")) if a.complete else (0, 0)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    follow = subprocess.Popen(["kcat", "-C", "-b", a.brokers, "-t", a.assignments, "-o", "beginning",
                               "-u", "-q", "-f", "%s\n"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    seen, due = set(), []  # due: heap of (when, n, kind, rid, vid, offer_id)
    counts = {"offers": 0, "accepted": 0, "declined": 0, "silent": 0, "completed": 0}
    buf = b""
    n = 0
    while not stop:
        ready, _, _ = select.select([follow.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(follow.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("id") in seen:
                    continue
                if e.get("type") == "vd.assignment.confirmed" and a.complete:
                    seen.add(e["id"])
                    d = e["data"]
                    rng = random.Random("%d/done/%s/%s" % (a.seed, d["request_id"], d["volunteer_id"]))
                    n += 1
                    heapq.heappush(due, (time.time() + rng.uniform(done_lo, done_hi), n,
                                         "vd.task.completed", d["request_id"], d["volunteer_id"], ""))
                    continue
                if e.get("type") != "vd.assignment.offered":
                    continue
                seen.add(e["id"])
                d = e["data"]
                counts["offers"] += 1
                rng = random.Random("%d/%s/%s" % (a.seed, d["request_id"], d["volunteer_id"]))
                x = rng.random()
                kind = ("vd.offer.accepted" if x < a.accept else
                        "vd.offer.declined" if x < a.accept + a.decline else None)
                if kind is None:
                    counts["silent"] += 1
                    continue
                n += 1
                heapq.heappush(due, (time.time() + rng.uniform(lo, hi), n, kind,
                                     d["request_id"], d["volunteer_id"], d["offer_id"]))
        batch = []
        while due and due[0][0] <= time.time():
            _, _, kind, rid, vid, oid = heapq.heappop(due)
            batch.append(frame(rid, answer(kind, rid, vid, oid)))
            counts["accepted" if kind == "vd.offer.accepted" else
                   "completed" if kind == "vd.task.completed" else "declined"] += 1
        if batch:
            p = subprocess.run([a.produce, "-b", a.brokers, "-t", a.responses], input=b"".join(batch),
                               capture_output=True)
            if p.returncode != 0:
                print("volunteer_app: producing answers failed: %s" % p.stderr.decode(errors="replace"),
                      file=sys.stderr)
    follow.terminate()
    follow.wait()
    with open(a.stats, "w") as f:
        json.dump(counts, f)


if __name__ == "__main__":
    main()
