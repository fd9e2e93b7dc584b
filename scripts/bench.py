#!/usr/bin/env python3
"""Measures vdispatchd in one run and prints figures and side-by-side ratios (stdlib only).

scripts/bench.sh starts redis-server, the Kafka mock and vdispatchd, then runs this with their
ports and PIDs. Steps, all in this one run on the same Redis:
  1. generate a Hohhot scenario (scripts/scenario.py: volunteers around the community
     stations, residents' requests; no malformed or duplicate messages) and load the
     volunteers through Kafka until the daemon's pools in Redis hold them all; load two
     identical copies of the pool under other key prefixes (vdpy1:, vdpy2:) with the same
     Redis Functions, for the Python implementations below;
  2. baseline: raw GEOSEARCH, one per request at radius_start_m on the key vd_search would
     search, pipelined from here: what Redis alone can search per second (again after the
     burst, on the pool the burst left);
  3. the burst: every request produced to vd.requests at once; outcomes read from
     vd.assignments as they come (kcat -J); /metrics and /proc/<pid>/stat sampled meanwhile;
  4. baseline: the same match logic as the daemon in plain Python, one request at a time
     from a pre-generated list (no Kafka), on its copy of the pool: once with every Redis
     command its own round trip, once with each step's reads pipelined;
  5. prints the figures, the ratios and the machine facts.
Nothing is asserted: the machine is shared and noisy, so only ratios within one run mean
much. Exit status 0 when the run completed, 1 when it could not (timeout, a process died).
"""

import argparse
import collections
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenario  # noqa: E402  (the demo's generator, same city and mix)

# The daemon's matching settings: its defaults, replaced by the effective configuration
# (vdispatchd --dump-config, see load_settings) so that both sides match alike.
RADIUS_START_M = 500
RADIUS_MAX_M = 5000
CANDIDATES = 8
MAX_TASKS_PER_DAY = 4
REQUEST_TTL_S = 604800
TASK_TIMEOUT_MS = 28800 * 1000
DAEMON_PREFIX = "vd:"
# Constants of daemon/vd_dispatch.c and common/vd_match.h.
MAX_CLAIM = 32
MAX_CLAIM_ROUNDS = 4
MAX_OFFERS = 5  # matching.max_offers; direct mode confirms the first offer, so it never binds
SCORE_TASK_M = 150.0
SCORE_PREFERRED_M = 300.0
DAY_MS = 86400000
MOCK_PARTITION_BYTES = 5 * 1024 * 1024  # the mock drops a partition's oldest messages past this

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _library_version():
    """The Function library's version, from its first line ("#!lua name=vdispatch_<N>")."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "daemon", "vdispatch.lua")
    with open(path) as f:
        first = f.readline()
    return int(first.strip().rsplit("_", 1)[1])


LIB_VERSION = _library_version()


def fn(name):
    """The name of one of the library's functions: fn("claim") is "vd<N>_claim"."""
    return "vd%d_%s" % (LIB_VERSION, name)


def load_settings(path):
    """Reads the matching settings from the daemon's --dump-config output (INI)."""
    global RADIUS_START_M, RADIUS_MAX_M, CANDIDATES, MAX_TASKS_PER_DAY, REQUEST_TTL_S, DAEMON_PREFIX
    section, conf = "", {}
    with open(path) as f:
        for line in f:
            line = line.split(";", 1)[0].strip()
            if line.startswith("["):
                section = line.strip("[]")
            elif "=" in line:
                k, v = line.split("=", 1)
                conf[section + "." + k.strip()] = v.strip()
    RADIUS_START_M = int(conf.get("matching.radius_start_m", RADIUS_START_M))
    RADIUS_MAX_M = int(conf.get("matching.radius_max_m", RADIUS_MAX_M))
    CANDIDATES = int(conf.get("matching.candidates", CANDIDATES))
    MAX_TASKS_PER_DAY = int(conf.get("matching.max_tasks_per_day", MAX_TASKS_PER_DAY))
    REQUEST_TTL_S = int(conf.get("redis.request_ttl_s", REQUEST_TTL_S))
    DAEMON_PREFIX = conf.get("redis.key_prefix", DAEMON_PREFIX)


def die(msg):
    print("bench: error: " + msg, file=sys.stderr)
    sys.exit(1)


def say(msg):
    print("[bench] " + msg, flush=True)


# ---- a minimal RESP2 client -------------------------------------------------------------------

class RedisError(Exception):
    pass


class Resp:
    """One RESP2 connection: bulk strings come back as str, nil as None, errors as
    RedisError (raised by call/pipeline when it is the top-level reply). Counts round trips."""

    def __init__(self, port, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rf = self.sock.makefile("rb", buffering=1 << 16)
        self.round_trips = 0

    def close(self):
        self.rf.close()
        self.sock.close()

    @staticmethod
    def encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    def send(self, cmds):
        self.sock.sendall(b"".join(self.encode(c) for c in cmds))

    def read(self):
        line = self.rf.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        k = line[:1]
        if k == b"$":
            n = int(line[1:-2])
            if n < 0:
                return None
            return self.rf.read(n + 2)[:-2].decode("utf-8", "replace")
        if k == b"*":
            n = int(line[1:-2])
            return None if n < 0 else [self.read() for _ in range(n)]
        if k == b":":
            return int(line[1:-2])
        if k == b"+":
            return line[1:-2].decode()
        if k == b"-":
            return RedisError(line[1:-2].decode("utf-8", "replace"))
        raise ConnectionError("bad RESP line %r" % line)

    def call(self, *args):
        self.round_trips += 1
        self.send([args])
        r = self.read()
        if isinstance(r, RedisError):
            raise r
        return r

    def pipeline(self, cmds):
        if not cmds:
            return []
        self.round_trips += 1
        self.send(cmds)
        out = [self.read() for _ in cmds]
        for r in out:
            if isinstance(r, RedisError):
                raise r
        return out


def commandstats(conn):
    """INFO commandstats as {command: (calls, usec)}."""
    out = {}
    for line in conn.call("INFO", "commandstats").splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, rest = line[8:].split(":", 1)
        f = dict(kv.split("=", 1) for kv in rest.split(","))
        out[name] = (int(f["calls"]), int(f["usec"]))
    return out


def cmd_delta(a, b):
    return {k: (v[0] - a.get(k, (0, 0))[0], v[1] - a.get(k, (0, 0))[1]) for k, v in b.items()
            if v[0] - a.get(k, (0, 0))[0] > 0}


# ---- processes, metrics -----------------------------------------------------------------------

def cpu_s(pid):
    """utime + stime of a process, in seconds (None when it is gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def thread_cpu(pid):
    """{tid: (thread name, cpu s)} for every thread of a process."""
    out = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                head, rest = f.read().rsplit(")", 1)
            fields = rest.split()
            out[tid] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / CLK_TCK)
        except (OSError, IndexError, ValueError):
            pass
    return out


def thread_delta(a, b):
    """CPU s per thread name between two thread_cpu snapshots, largest first."""
    by = collections.Counter()
    for tid, (name, c) in b.items():
        by[name] += c - a.get(tid, (name, 0.0))[1]
    return [(n, c) for n, c in by.most_common() if c > 0]


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def scrape(url):
    """The daemon's /metrics as {series: value}, series as printed (with labels)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, val = line.rsplit(" ", 1)
            out[name] = float(val)
    return out


def hist_buckets(m, name):
    """Cumulative buckets [(le, count)] of a histogram, +Inf last."""
    b = []
    pre = name + '_bucket{le="'
    for k, v in m.items():
        if k.startswith(pre):
            le = k[len(pre):-2]
            b.append((math.inf if le == "+Inf" else float(le), v))
    return sorted(b)


def hist_quantile(buckets, q):
    """Prometheus-style quantile: linear within the bucket; (value, True) when it falls in the
    +Inf bucket (then value is the largest finite bound)."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None, False
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == math.inf:
                return prev_le, True
            if c == prev_c:
                return le, False
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c), False
        prev_le, prev_c = le, c
    return prev_le, True


def percentile(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, int(math.ceil(q * len(sorted_vals))) - 1))
    return sorted_vals[i]


class Sampler(threading.Thread):
    """Samples /metrics and the CPU time of the given processes every `period` seconds."""

    KEEP = ("vd_matches_total", "vd_consumed_total", "vd_confirmed_total", "vd_jobs_in_memory",
            "vd_outputs_unacked", "vd_redis_calls_total", "vd_intake_paused")

    def __init__(self, url, pids, period=0.25):
        super().__init__(daemon=True)
        self.url, self.pids, self.period = url, pids, period
        self.samples = []  # (monotonic, {metric: value}, {name: cpu_s})
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.error = None

    def run(self):
        while not self.stop_ev.is_set():
            t = time.monotonic()
            try:
                m = scrape(self.url)
            except OSError as e:
                self.error = str(e)
                m = None
            cpu = {n: cpu_s(p) for n, p in self.pids.items()}
            if m is not None:
                with self.lock:
                    self.samples.append((t, {k: m.get(k, 0.0) for k in self.KEEP}, cpu))
            self.stop_ev.wait(self.period)

    def last(self):
        with self.lock:
            return self.samples[-1] if self.samples else None

    def stop(self):
        self.stop_ev.set()
        self.join()


# ---- the scenario -----------------------------------------------------------------------------

class Req:
    __slots__ = ("rid", "lat", "lon", "service", "priority", "skills", "languages", "needed",
                 "max_distance", "expires_ms", "event_id", "preferred")


def parse_time_ms(s):
    return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000)


def decode_request(value):
    d = json.loads(value)["data"]
    q = Req()
    q.rid = d["request_id"]
    q.lat, q.lon = d["location"]["lat"], d["location"]["lon"]
    q.service = d["service"]
    q.priority = d.get("priority", "normal")
    q.skills = d.get("skills", [])
    q.languages = d.get("languages", [])
    q.needed = d.get("volunteers_needed", 1)
    q.max_distance = d.get("max_distance_m", 0)
    q.expires_ms = parse_time_ms(d["expires_at"]) if "expires_at" in d else 0
    q.event_id = d.get("event_id", "")
    q.preferred = d.get("preferred_volunteer_id", "")
    return q


def generate(args, workdir):
    start = scenario.parse_start("now")
    b = scenario.Builder(args.seed, start)
    stations = scenario.make_stations(b.rng, args.volunteers)
    vols, pools, _ = scenario.gen_volunteers(b, args.volunteers, stations)
    reqs, _ = scenario.gen_requests(b, args.requests, stations, 0, 0)
    vbin, rbin = os.path.join(workdir, "volunteers.bin"), os.path.join(workdir, "requests.bin")
    with open(vbin, "wb") as f:
        for _, key, value, _ in vols:
            f.write(scenario.frame(key, value))
    with open(rbin, "wb") as f:
        for key, value in reqs:
            f.write(scenario.frame(key, value))
    return vols, pools, reqs, vbin, rbin


def volunteer_fcall(prefix, value):
    """The FCALL the daemon makes for one volunteer event, under another key prefix."""
    e = json.loads(value)
    d = e["data"]
    vid = d["volunteer_id"]
    keys = (prefix + "vol/" + vid, prefix + "vols")
    if e["type"] == "vd.volunteer.available":
        return ("FCALL", fn("vol_available"), 2) + keys + (
            prefix, vid, "%.7f" % d["location"]["lat"], "%.7f" % d["location"]["lon"],
            ",".join(d.get("skills", [])), ",".join(d.get("languages", [])),
            d.get("max_tasks_per_day", 0), d.get("team", ""), d.get("event_id", ""), RADIUS_MAX_M)
    if e["type"] == "vd.volunteer.location":
        return ("FCALL", fn("vol_location"), 2) + keys + (
            prefix, vid, "%.7f" % d["location"]["lat"], "%.7f" % d["location"]["lon"], RADIUS_MAX_M)
    return ("FCALL", fn("vol_unavailable"), 2) + keys + (prefix, vid)


def pool_sizes(conn, prefix, pools):
    return {name: conn.call("ZCARD", prefix + "pool/" + name) for name in pools}


# ---- baseline 1: raw GEOSEARCH ---------------------------------------------------------------

def search_key(prefix, q, zcard):
    """The key vd_search searches for q: the smallest of the pool's skill sets, else the pool."""
    pool = prefix + ("pool/ev/" + q.event_id if q.event_id else "pool/city")
    best, key = None, pool
    for s in q.skills:
        k = pool + "/s/" + s
        n = zcard.get(k, 0)
        if best is None or n < best:
            best, key = n, k
    return key


class ReplySkipper:
    """Reads and discards whole RESP replies straight from a socket, counting the elements of
    each top-level array: a client cheap enough that Redis, not Python, sets the pace."""

    def __init__(self, sock):
        self.sock, self.buf, self.pos = sock, b"", 0

    def skip(self, n):
        buf, pos, found = self.buf, self.pos, 0
        while n:
            start = pos
            try:
                remaining, top = 1, None
                while remaining:
                    e = buf.index(b"\r\n", pos)
                    t = buf[pos]
                    if t == 42:  # '*'
                        k = int(buf[pos + 1:e])
                        if top is None:
                            top = max(k, 0)
                        remaining += k - 1 if k > 0 else -1
                        pos = e + 2
                    elif t == 36:  # '$'
                        ln = int(buf[pos + 1:e])
                        end = e + 2 + (ln + 2 if ln >= 0 else 0)
                        if end > len(buf):
                            raise IndexError
                        pos = end
                        remaining -= 1
                    elif t == 45:  # '-'
                        raise RedisError(buf[pos + 1:e].decode("utf-8", "replace"))
                    else:
                        pos = e + 2
                        remaining -= 1
                        top = 0 if top is None else top
                found += top
                n -= 1
            except (ValueError, IndexError):  # incomplete: fetch more, parse this reply again
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("Redis closed the connection")
                buf, pos = buf[start:] + chunk, 0
        self.buf, self.pos = buf, pos
        return found

    def drained(self):
        return self.pos == len(self.buf)


def raw_geosearch(conn, reqs, keys, min_seconds, batch=128):
    """GEOSEARCH at radius_start_m, one per request (cycling through the list until at least
    min_seconds have passed), pipelined with two batches in flight. Returns (searches, wall s,
    found per search)."""
    cmds = [Resp.encode(("GEOSEARCH", k, "FROMLONLAT", q.lon, q.lat, "BYRADIUS", RADIUS_START_M,
                         "m", "ASC", "COUNT", CANDIDATES, "WITHDIST")) for q, k in zip(reqs, keys)]
    batches = [b"".join(cmds[i:i + batch]) for i in range(0, len(cmds), batch)]
    sizes = [min(batch, len(cmds) - i) for i in range(0, len(cmds), batch)]
    done = found = 0
    skipper = ReplySkipper(conn.sock)  # every earlier reply has been read: nothing is buffered
    t0 = time.monotonic()
    inflight = collections.deque()
    i = 0
    while True:
        elapsed = time.monotonic() - t0
        more = i < len(batches) or elapsed < min_seconds
        while more and len(inflight) < 2:
            conn.sock.sendall(batches[i % len(batches)])
            inflight.append(sizes[i % len(batches)])
            i += 1
            more = i < len(batches) or time.monotonic() - t0 < min_seconds
        if not inflight:
            break
        k = inflight.popleft()
        found += skipper.skip(k)
        done += k
    if not skipper.drained():
        raise ConnectionError("unexpected bytes after the GEOSEARCH replies")
    return done, time.monotonic() - t0, found / max(done, 1)


# ---- baseline 2: the same match logic in plain Python ------------------------------------------

def list_has(csv, tag):
    return tag in csv.split(",") if csv else False


class PyMatcher:
    """The daemon's matching (daemon/vd_dispatch.c, common/vd_match.c, vd_search in
    daemon/vdispatch.lua) in plain Python over plain Redis commands, one request at a time.
    The claim and the unmatched record use the same Functions (vd_offer, vd_finish), so the
    guarantees and the Redis state are the daemon's. pipelined=False: every command is its
    own round trip; True: the independent reads of one step go in one round trip.
    It mirrors the steps of on_search/on_claim/next_step; when those change, change it too:
    the report prints both sides' outcomes next to each other, which shows a drift."""

    def __init__(self, conn, prefix, pipelined):
        self.c, self.p, self.pipelined = conn, prefix, pipelined
        self.outcomes = collections.Counter()
        self.searches = 0

    def _reads(self, cmds):
        if self.pipelined:
            return self.c.pipeline(cmds)
        return [self.c.call(*cmd) for cmd in cmds]

    def _finish(self, q, rkey, reason, radius, considered, filtered, held):
        doc = {"request_id": q.rid, "reason": reason, "radius_m": radius,
               "candidates_considered": considered, "filtered": dict(filtered),
               "volunteers_needed": q.needed, "volunteers_missing": q.needed - held,
               "service": q.service, "priority": q.priority}
        pool = self.p + ("pool/ev/" + q.event_id if q.event_id else "pool/city")
        r = self.c.call("FCALL", fn("claim"), 2, self.p + "due", pool, *self._settings(), 1,
                        *self._block(q), "finish", 1,
                        json.dumps(doc, sort_keys=True, separators=(",", ":")))[0]
        state = r[1]
        self.outcomes["unmatched:" + reason if state in ("unmatched", "expired") else state] += 1

    def _settings(self):
        """The settings vd<N>_claim starts with (direct mode: offer_timeout_ms 0)."""
        return (self.p, REQUEST_TTL_S, 5000, MAX_OFFERS, 0, TASK_TIMEOUT_MS, MAX_TASKS_PER_DAY,
                RADIUS_MAX_M)

    def _block(self, q):
        """A request's block in a claim call, up to its kind."""
        return (q.rid, "%.7f" % q.lat, "%.7f" % q.lon, min(q.max_distance or RADIUS_MAX_M, RADIUS_MAX_M),
                ",".join(q.skills), ",".join(q.languages))

    def match(self, q):
        c, p = self.c, self.p
        rkey = p + "req/" + q.rid
        pool = p + ("pool/ev/" + q.event_id if q.event_id else "pool/city")
        rmax = min(q.max_distance or RADIUS_MAX_M, RADIUS_MAX_M)
        radius = min(RADIUS_START_M, rmax)
        seen, first, claim_rounds, held, lacking = 0, True, 0, 0, 0
        considered, filtered = 0, collections.Counter()
        cands = []  # (score, vid, dist), ranked
        exhausted, page_far = False, 0.0
        if q.expires_ms and time.time() * 1000 >= q.expires_ms:
            return self._finish(q, rkey, "expired", radius, considered, filtered, held)
        step = "search"
        while True:
            if step == "search":  # like vd_search, in plain commands
                self.searches += 1
                pre = []
                if first:
                    # The record vd_admit would make (the daemon's first call does this and
                    # the first search in one Function; here plain commands, same round trip).
                    pre += [("HMGET", rkey, "state", "held", "unmatched"),
                            ("HSETNX", rkey, "state", "searching"), ("HSETNX", rkey, "needed", q.needed)]
                sets = [pool + "/s/" + s for s in q.skills]
                pre += [("ZCARD", k) for k in sets]
                r = self._reads(pre)
                if first:
                    st = r.pop(0)
                    r = r[2:]
                    first = False
                    if st[0] is not None:
                        if st[0] != "searching":
                            self.outcomes["replay"] += 1
                            return None
                        held = len(st[1].split(",")) if st[1] else 0
                key, best = pool, None
                for k, n in zip(sets, r):
                    if best is None or n < best:
                        best, key = n, k
                found = c.call("GEOSEARCH", key, "FROMLONLAT", q.lon, q.lat, "BYRADIUS", radius,
                               "m", "ASC", "COUNT", seen + CANDIDATES, "WITHDIST")
                without = 0
                if not found and key != pool:
                    without = len(c.call("GEOSEARCH", pool, "FROMLONLAT", q.lon, q.lat,
                                         "BYRADIUS", radius, "m", "COUNT", CANDIDATES))
                fresh_raw = found[seen:]
                since = int(time.time() * 1000) - DAY_MS
                cmds = []
                for vid, _ in fresh_raw:
                    cmds.append(("HMGET", p + "vol/" + vid, "skills", "languages", "max_tasks"))
                    cmds.append(("ZCOUNT", p + "tasks/" + vid, "(%d" % since, "+inf"))
                r = self._reads(cmds)
                exhausted = len(found) < seen + CANDIDATES
                fresh = []
                for i, (vid, dist) in enumerate(fresh_raw):
                    (skills, langs, max_tasks), tasks = r[2 * i], r[2 * i + 1]
                    skills, langs, dist = skills or "", langs or "", float(dist)
                    considered += 1
                    cap = int(max_tasks or 0) or MAX_TASKS_PER_DAY
                    if not all(list_has(skills, s) for s in q.skills):
                        filtered["skills"] += 1
                    elif q.languages and not any(list_has(langs, lg) for lg in q.languages):
                        filtered["languages"] += 1
                    elif tasks >= cap:
                        filtered["fatigue"] += 1
                    elif q.max_distance and dist > q.max_distance:
                        filtered["distance"] += 1
                    else:
                        score = dist + SCORE_TASK_M * tasks
                        if q.preferred and q.preferred == vid:
                            score -= SCORE_PREFERRED_M
                        fresh.append((score, vid, dist))
                page_far = max(float(d) for _, d in fresh_raw) if fresh_raw else float(radius)
                fresh.sort(key=lambda x: x[0])
                cands = sorted(cands + fresh, key=lambda x: x[0])  # stable: earlier first on ties
                seen += len(fresh_raw)
                lacking = max(lacking, without)
            else:  # claim: the same Function as the daemon
                argv = []
                for _, vid, dist in cands[:MAX_CLAIM]:
                    argv += [vid, "%.1f/%d/%d" % (dist, radius, considered)]
                r = c.call("FCALL", fn("claim"), 2, p + "due", pool, *self._settings(), 1,
                           *self._block(q), "offer", len(argv) // 2, *argv)[0]
                seen = max(seen - min(len(cands), MAX_CLAIM), 0)
                cands = []
                held = q.needed - int(r[2])
                if r[1] != "searching":
                    self.outcomes[r[1]] += 1
                    return None
                claim_rounds += 1
                if claim_rounds >= MAX_CLAIM_ROUNDS:
                    return self._finish(q, rkey, "contention", radius, considered, filtered, held)
            # the next step, as next_step() in daemon/vd_dispatch.c decides it
            need = q.needed - held
            bonus = SCORE_PREFERRED_M if q.preferred else 0.0
            horizon = float(radius) if exhausted else page_far
            more = considered < CANDIDATES * 8
            last = exhausted and radius >= rmax
            if len(cands) >= need and (cands[need - 1][0] <= horizon - bonus or not more or last):
                step = "claim"
            elif more and not exhausted:
                step = "search"  # the next page at this radius
            elif more and radius < rmax:
                radius = min(radius * 2, rmax)
                step = "search"
            elif cands:
                step = "claim"  # not enough for all: claim who there is
            else:
                considered += lacking
                filtered["skills"] += lacking
                return self._finish(q, rkey, "no_eligible_volunteer" if considered
                                    else "no_volunteer_in_range", radius, considered, filtered,
                                    held)


def run_python(conn, prefix, pipelined, reqs, redis_pid):
    m = PyMatcher(conn, prefix, pipelined)
    c0 = commandstats(conn)
    rt0 = conn.round_trips
    r_cpu0, p_cpu0 = cpu_s(redis_pid), time.process_time()
    t0 = time.monotonic()
    for q in reqs:
        m.match(q)
    wall = time.monotonic() - t0
    p_cpu, r_cpu = time.process_time() - p_cpu0, cpu_s(redis_pid) - r_cpu0
    trips = conn.round_trips - rt0
    cs = cmd_delta(c0, commandstats(conn))
    return {"wall": wall, "matches": len(reqs), "py_cpu": p_cpu, "redis_cpu": r_cpu,
            "round_trips": trips, "cmdstats": cs, "outcomes": m.outcomes, "searches": m.searches}


# ---- Kafka helpers ----------------------------------------------------------------------------

def produce(build, brokers, topic, path):
    with open(path, "rb") as f:
        r = subprocess.run([os.path.join(build, "vd-produce"), "-b", brokers, "-t", topic],
                           stdin=f, capture_output=True, text=True)
    if r.returncode != 0:
        die("vd-produce to %s failed: %s" % (topic, (r.stderr or r.stdout).strip()))
    return r.stdout.strip()


def read_jsonl(path):
    out = []
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return out


def outcomes_by_request(msgs):
    """{request_id: (last ts, outcome, widest radius_m)} and a Counter of the messages by kind, from
    vd.assignments. A request's outcome is 'unmatched:<reason>' when it has an unmatched event
    (it may also have confirmed volunteers), else 'confirmed'."""
    per = {}
    kinds = collections.Counter()
    for m in msgs:
        key = m.get("key")
        try:
            ev = json.loads(m["payload"])
        except (ValueError, TypeError, KeyError):
            continue
        t = ev.get("type", "")
        if t == "vd.assignment.confirmed":
            kinds["volunteers confirmed"] += 1
        elif t == "vd.request.unmatched":
            kinds["unmatched:" + ev.get("data", {}).get("reason", "?")] += 1
        else:
            continue
        ts, outcome, radius = per.get(key, (0, "confirmed", 0))
        if t == "vd.request.unmatched":
            outcome = "unmatched:" + ev.get("data", {}).get("reason", "?")
        radius = max(radius, ev.get("data", {}).get("radius_m", 0))
        per[key] = (max(ts, m["ts"]), outcome, radius)
    return per, kinds


# ---- the run ----------------------------------------------------------------------------------

def wait_for(pred, timeout, interval=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def fmt_rate(x):
    return "%.0f/s" % x if x >= 100 else "%.1f/s" % x


def main():
    ap = argparse.ArgumentParser(description="vdispatchd benchmark (run by scripts/bench.sh)")
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--redis-pid", type=int, required=True)
    ap.add_argument("--daemon-pid", type=int, required=True)
    ap.add_argument("--mock-pid", type=int, default=0)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--build", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--volunteers", type=int, default=20000)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--load-before", default="")
    ap.add_argument("--config", help="the daemon's --dump-config output")
    a = ap.parse_args()
    if a.config:
        load_settings(a.config)
    topics = os.path.join(a.workdir, "topics")
    os.makedirs(topics, exist_ok=True)
    pids = {"vdispatchd": a.daemon_pid, "redis-server": a.redis_pid}
    if a.mock_pid:
        pids["vd-kafka-mock"] = a.mock_pid
    quick = a.requests <= 5000

    # -- 1. scenario and pool
    vols, pools, reqs_msgs, vbin, rbin = generate(a, a.workdir)
    req_bytes = os.path.getsize(rbin)
    if req_bytes * 1.3 / a.partitions > MOCK_PARTITION_BYTES:
        die("%d requests are %.1f MiB: over %d partitions the Kafka mock (5 MiB per partition) "
            "would drop requests before they are read; use --partitions %d or more"
            % (a.requests, req_bytes / 2**20, a.partitions,
               math.ceil(req_bytes * 1.3 / MOCK_PARTITION_BYTES)))
    reqs = [decode_request(v) for _, v in reqs_msgs]
    redis = Resp(a.redis_port)
    say("scenario: %d volunteer events (pools %s), %d requests (%.1f MiB)" % (
        len(vols), ", ".join("%s=%d" % kv for kv in sorted(pools.items())), len(reqs),
        req_bytes / 2**20))

    t0 = time.monotonic()
    produce(a.build, a.brokers, "vd.volunteers", vbin)

    def pool_loaded():
        try:
            m = scrape(a.metrics)
        except OSError:
            return False
        return (m.get("vd_consumed_total", 0) >= len(vols) and m.get("vd_jobs_in_memory", 1) == 0
                and pool_sizes(redis, DAEMON_PREFIX, pools) == pools)

    if not wait_for(pool_loaded, 180):
        die("the daemon did not pool all volunteers within 180 s: %s of %s"
            % (pool_sizes(redis, DAEMON_PREFIX, pools), pools))
    load_s = time.monotonic() - t0
    say("daemon pooled %d volunteer events in %.1f s (%s, through Kafka)" % (
        len(vols), load_s, fmt_rate(len(vols) / load_s)))

    for prefix in ("vdpy1:", "vdpy2:"):
        cmds = [volunteer_fcall(prefix, v) for _, _, v, _ in vols]
        for i in range(0, len(cmds), 500):
            redis.pipeline(cmds[i:i + 500])
        got = pool_sizes(redis, prefix, pools)
        if got != pools:
            die("the copy of the pool under %s holds %s, expected %s" % (prefix, got, pools))
    say("loaded two identical copies of the pool for the Python implementations")

    # -- 2. raw GEOSEARCH on the pool as loaded
    zkeys = set()
    for q in reqs:
        base = DAEMON_PREFIX + ("pool/ev/" + q.event_id if q.event_id else "pool/city")
        zkeys.update(base + "/s/" + s for s in q.skills)
    zcard = {k: redis.call("ZCARD", k) for k in zkeys}
    keys = [search_key(DAEMON_PREFIX, q, zcard) for q in reqs]
    min_s = 1.5 if quick else 3.0

    def geo_baseline():
        c0, r0, p0 = commandstats(redis), cpu_s(a.redis_pid), time.process_time()
        n, wall, per = raw_geosearch(redis, reqs, keys, min_s)
        cs = cmd_delta(c0, commandstats(redis)).get("geosearch", (1, 0))
        return {"n": n, "wall": wall, "found": per, "redis_cpu": cpu_s(a.redis_pid) - r0,
                "py_cpu": time.process_time() - p0, "usec": cs[1] / max(cs[0], 1)}

    geo_full = geo_baseline()
    say("raw GEOSEARCH baseline: %d searches in %.2f s" % (geo_full["n"], geo_full["wall"]))

    # -- 3. the burst
    kcat_out = open(os.path.join(topics, "assignments.jsonl"), "wb")
    kcat_err = open(os.path.join(topics, "assignments.err"), "wb")
    kcat = subprocess.Popen(["kcat", "-C", "-b", a.brokers, "-t", "vd.assignments", "-o",
                             "beginning", "-J", "-u", "-q"], stdout=kcat_out, stderr=kcat_err)
    try:
        m0 = scrape(a.metrics)
        c0 = commandstats(redis)
        sampler = Sampler(a.metrics, pids)
        cpu0 = {n: cpu_s(p) for n, p in pids.items()}
        threads0 = thread_cpu(a.daemon_pid)
        load_burst = loadavg()
        t_start = time.monotonic()
        sampler.start()
        out = produce(a.build, a.brokers, "vd.requests", rbin)
        produce_s = time.monotonic() - t_start
        say("requests: %s to vd.requests in %.2f s" % (out, produce_s))
        base_matches = m0.get("vd_matches_total", 0)

        def burst_done():
            s = sampler.last()
            if not s or s[0] < t_start + produce_s:
                return False
            for n, p in pids.items():
                if cpu_s(p) is None:
                    die("%s (pid %d) exited during the burst" % (n, p))
            mm = s[1]
            return (mm["vd_matches_total"] - base_matches >= len(reqs)
                    and mm["vd_jobs_in_memory"] == 0 and mm["vd_outputs_unacked"] == 0)

        if not wait_for(burst_done, a.timeout, 0.1):
            s = sampler.last()
            die("timed out after %.0f s: %d of %d requests matched" % (
                a.timeout, (s[1]["vd_matches_total"] - base_matches) if s else 0, len(reqs)))
        t_done = sampler.last()[0]
        cpu1 = {n: cpu_s(p) for n, p in pids.items()}
        threads1 = thread_cpu(a.daemon_pid)
        sampler.stop()
        m1 = scrape(a.metrics)
        c1 = commandstats(redis)
        burst_wall = t_done - t_start

        # outcomes as Kafka carries them
        def all_outcomes():
            per, _ = outcomes_by_request(read_jsonl(kcat_out.name))
            return len(per) >= len(reqs)

        wait_for(all_outcomes, 60, 0.5)
    finally:
        kcat.terminate()
        try:
            kcat.wait(5)
        except subprocess.TimeoutExpired:
            kcat.kill()
            kcat.wait()
        kcat_out.close()
        kcat_err.close()
    per, kinds = outcomes_by_request(read_jsonl(kcat_out.name))
    rpath = os.path.join(topics, "requests.jsonl")
    with open(rpath, "wb") as f:
        subprocess.run(["kcat", "-C", "-b", a.brokers, "-t", "vd.requests", "-o", "beginning",
                        "-e", "-J", "-q"], stdout=f, check=True, timeout=120)
    req_ts = {m["key"]: m["ts"] for m in read_jsonl(rpath)}
    lat = sorted(per[k][0] - req_ts[k] for k in per if k in req_ts)
    first_req = min(req_ts.values()) if req_ts else 0
    last_out = max(v[0] for v in per.values()) if per else 0
    e2e_span = (last_out - first_req) / 1000.0

    pool_after = pool_sizes(redis, DAEMON_PREFIX, pools)
    geo_after = geo_baseline()

    # -- 4. the same logic in plain Python, on the copies of the pool
    py = {}
    for prefix, pipelined in (("vdpy1:", False), ("vdpy2:", True)):
        say("Python implementation (%s) on %d requests" % (
            "reads pipelined per step" if pipelined else "one command per round trip", len(reqs)))
        py[pipelined] = run_python(redis, prefix, pipelined, reqs, a.redis_pid)
    load_after = loadavg()

    # -- 5. figures
    matches = m1["vd_matches_total"] - m0["vd_matches_total"]
    calls = m1["vd_redis_calls_total"] - m0["vd_redis_calls_total"]
    cs = cmd_delta(c0, c1)
    fc, fro = cs.get("fcall", (0, 0)), cs.get("fcall_ro", (0, 0))
    cpu = {n: (cpu1[n] - cpu0[n]) if cpu1[n] is not None and cpu0[n] is not None else float("nan")
           for n in pids}
    hist = [(le, c1_ - c0_) for (le, c1_), (_, c0_) in
            zip(hist_buckets(m1, "vd_match_seconds"), hist_buckets(m0, "vd_match_seconds"))]
    # counters over time: 10% -> 90% of the burst's matches, interpolated between samples
    samples = sampler.samples

    def crossing(frac):
        target = base_matches + frac * len(reqs)
        prev = None
        for t, mm, _ in samples:
            v = mm["vd_matches_total"]
            if v >= target:
                if prev is None or v == prev[1]:
                    return t
                return prev[0] + (t - prev[0]) * (target - prev[1]) / (v - prev[1])
            prev = (t, v)
        return None

    t10, t90, t100 = crossing(0.10), crossing(0.90), crossing(1.0)
    steady = 0.8 * len(reqs) / (t90 - t10) if t10 is not None and t90 and t90 > t10 else float("nan")
    peak = 0.0
    for i in range(len(samples)):
        for j in range(i + 1, len(samples)):
            if samples[j][0] - samples[i][0] >= 1.0:
                peak = max(peak, (samples[j][1]["vd_matches_total"] - samples[i][1]["vd_matches_total"])
                           / (samples[j][0] - samples[i][0]))
                break
    # CPU use over the busy part of the burst (10% -> 90%)
    def cpu_between(name, ta, tb):
        pa = pb = None
        for t, _, c in samples:
            if t <= ta:
                pa = (t, c[name])
            if t >= tb and pb is None:
                pb = (t, c[name])
        if not pa or not pb or pa[1] is None or pb[1] is None or pb[0] <= pa[0]:
            return float("nan")
        return (pb[1] - pa[1]) / (pb[0] - pa[0])

    metrics_rate = matches / burst_wall
    kafka_rate = len(per) / e2e_span if e2e_span > 0 else float("nan")
    daemon_rate = kafka_rate  # the ratios use the Kafka-timestamp throughput
    geo_rate = geo_full["n"] / geo_full["wall"]
    geo_after_rate = geo_after["n"] / geo_after["wall"]
    pa, pp = py[False], py[True]
    pa_rate, pp_rate = pa["matches"] / pa["wall"], pp["matches"] / pp["wall"]

    W = 66
    def row(label, value):
        print("  %-*s %s" % (W, label, value))

    def section(title):
        print()
        print(title)
        print("-" * len(title))

    print()
    print("=" * 100)
    print("vdispatchd benchmark: %d available volunteers, burst of %d requests, vd.requests in %d "
          "partitions" % (a.volunteers, len(reqs), a.partitions))
    print("=" * 100)
    section("Machine")
    row("cores (nproc)", str(os.cpu_count()))
    row("load average (1, 5, 15 min) before the run", a.load_before or "?")
    row("load average when the burst started", load_burst)
    row("load average after the run", load_after)
    row("redis-server", redis.call("INFO", "server").split("redis_version:")[1].split()[0])
    row("daemon settings", "radius %d..%d m, candidates %d, offer_timeout_ms=0, log.level=warn"
        % (RADIUS_START_M, RADIUS_MAX_M, CANDIDATES))

    section("Pool")
    row("pooled before the burst", ", ".join("%s %d" % kv for kv in sorted(pools.items())))
    row("pooled after the burst (claimed volunteers leave)",
        ", ".join("%s %d" % kv for kv in sorted(pool_after.items())))
    row("loading through Kafka + vd_vol_available", "%.1f s (%s)" % (load_s, fmt_rate(len(vols) / load_s)))

    section("Daemon: burst (Kafka -> vdispatchd -> Redis -> Kafka)")
    row("requests produced (vd-produce)", "%d in %.2f s" % (len(reqs), produce_s))
    row("requests with an outcome on vd.assignments", "%d of %d" % (len(per), len(reqs)))
    row("outcomes per request", ", ".join("%s %d" % kv for kv in sorted(
        collections.Counter(v[1] for v in per.values()).items())))
    row("volunteers confirmed", "%d" % kinds["volunteers confirmed"])
    radii = collections.Counter(v[2] for v in per.values())
    row("requests by the radius their search ended at (m)",
        ", ".join("%d: %d" % kv for kv in sorted(radii.items())))
    row("throughput, Kafka timestamps (first request -> last outcome)",
        "%s  (%d requests in %.2f s)" % (fmt_rate(kafka_rate), len(per), e2e_span))
    row("throughput, /metrics (produce start -> all matched and acked)",
        "%s  (%d matches in %.2f s)" % (fmt_rate(metrics_rate), matches, burst_wall))
    row("throughput, /metrics, 10% -> 90% of the matches", fmt_rate(steady))
    if burst_wall >= 3:
        row("throughput, /metrics, best 1 s window", fmt_rate(peak))
    per_s, k, t_next = [], 0, t_start + 1.0
    for t, mm, _ in samples:  # matches in each second of the burst
        if t >= t_next:
            per_s.append(mm["vd_matches_total"] - base_matches - k)
            k = mm["vd_matches_total"] - base_matches
            t_next += 1.0
    row("matches in each second of the burst", " ".join("%d" % x for x in per_s[:40])
        + (" ..." if len(per_s) > 40 else ""))
    row("end-to-end latency p50 / p95 / p99 / max (Kafka ts)",
        "%.0f / %.0f / %.0f / %.0f ms" % (percentile(lat, .5), percentile(lat, .95),
                                          percentile(lat, .99), lat[-1] if lat else float("nan")))
    row("  (a burst: this is mostly time queued behind earlier requests)", "")
    qs = []
    for q in (0.5, 0.95, 0.99):
        v, over = hist_quantile(hist, q)
        qs.append("n/a" if v is None else (">%.0f" % (v * 1000) if over else "%.2f" % (v * 1000)))
    row("daemon match time p50 / p95 / p99 (vd_match_seconds)", " / ".join(qs) + " ms")
    hsum = m1.get("vd_match_seconds_sum", 0) - m0.get("vd_match_seconds_sum", 0)
    row("daemon match time mean", "%.2f ms" % (1000 * hsum / max(matches, 1)))
    row("Redis round trips per match (vd_redis_calls / vd_matches)",
        "%.2f  (%d / %d)" % (calls / max(matches, 1), calls, matches))
    row("Redis FCALL + FCALL_RO per match (INFO commandstats)",
        "%.2f  (fcall %d + fcall_ro %d)" % ((fc[0] + fro[0]) / max(matches, 1), fc[0], fro[0]))
    inner = sorted(((k, v) for k, v in cs.items() if k not in ("fcall", "fcall_ro", "info")),
                   key=lambda kv: -kv[1][0])
    row("commands run inside the Functions, per match",
        ", ".join("%s %.1f" % (k, v[0] / max(matches, 1)) for k, v in inner[:7]))
    geo = cs.get("geosearch", (0, 0))
    row("GEOSEARCH per vd_search call / usec per GEOSEARCH inside the Functions",
        "%.2f / %.1f us  (more than 1: the skill set had nobody in range, so vd_search counted "
        "the pool too)" % (geo[0] / max(fro[0], 1), geo[1] / max(geo[0], 1)))
    row("Redis time inside the Functions per match, by command",
        ", ".join("%s %.0f us" % (k, v[1] / max(matches, 1)) for k, v in
                  sorted(inner, key=lambda kv: -kv[1][1])[:6]))
    row("Redis usec_per_call: fcall_ro (vd_search) / fcall (admit, offer, finish, settle)",
        "%.1f / %.1f us" % (fro[1] / max(fro[0], 1), fc[1] / max(fc[0], 1)))
    busy_us = fro[1] + fc[1]
    row("Redis time in Functions per match / share of the burst",
        "%.1f us / %.0f%% of one core" % (busy_us / max(matches, 1), 100 * busy_us / 1e6 / burst_wall))
    for n in pids:
        row("CPU during the burst: %s" % n, "%.2f s  (%.0f%% of one core; %.0f%% from 10%% to 90%%)"
            % (cpu[n], 100 * cpu[n] / burst_wall,
               100 * cpu_between(n, t10 or t_start, t90 or t_done)))

    td = thread_delta(threads0, threads1)
    row("vdispatchd CPU by thread", ", ".join("%s %.2f s" % (n, c) for n, c in td[:8]))

    section("Side by side, same run, same Redis, same pool (ratios)")
    print("  (a) daemon vs raw GEOSEARCH capacity of this Redis (pipelined, radius %d m, COUNT %d,"
          " one per request)" % (RADIUS_START_M, CANDIDATES))
    row("raw GEOSEARCH, pool as loaded", "%s  (%.1f found each, %.1f us/call in Redis, Redis %.0f%%"
        " busy, client %.0f%%)" % (fmt_rate(geo_rate), geo_full["found"], geo_full["usec"],
                                   100 * geo_full["redis_cpu"] / geo_full["wall"],
                                   100 * geo_full["py_cpu"] / geo_full["wall"]))
    row("raw GEOSEARCH, pool as the burst left it", "%s  (%.1f found each, %.1f us/call in Redis, "
        "Redis %.0f%% busy)" % (fmt_rate(geo_after_rate), geo_after["found"], geo_after["usec"],
                                100 * geo_after["redis_cpu"] / geo_after["wall"]))
    geo_cap = geo_full["n"] / geo_full["redis_cpu"] if geo_full["redis_cpu"] > 0 else float("nan")
    row("Redis-bound search capacity, pool as loaded (searches / Redis CPU s)", fmt_rate(geo_cap))
    row("daemon requests/s (Kafka ts, first request -> last outcome)", fmt_rate(daemon_rate))
    row("daemon / raw GEOSEARCH (pool as loaded)", "%.3f" % (daemon_rate / geo_rate))
    row("daemon / raw GEOSEARCH (pool as left)", "%.3f" % (daemon_rate / geo_after_rate))
    row("daemon / Redis-bound search capacity (pool as loaded)", "%.3f" % (daemon_rate / geo_cap))
    print("  (b) daemon vs the same match logic in plain Python, one request at a time, same Redis,")
    print("      an identical copy of the pool, requests from a pre-generated list: NO Kafka on the")
    print("      Python side (no consume, no publish); offers and unmatched via the library's offer/finish Functions")
    for label, r, rate in (("Python, one command per round trip", pa, pa_rate),
                           ("Python, each step's reads pipelined", pp, pp_rate)):
        row(label, "%s  (%.2f s; %.1f round trips/match; outcomes %s)" % (
            fmt_rate(rate), r["wall"], r["round_trips"] / r["matches"],
            ", ".join("%s %d" % kv for kv in sorted(r["outcomes"].items()))))
    row("daemon / Python one-command-per-round-trip", "%.2f" % (daemon_rate / pa_rate))
    row("daemon / Python pipelined", "%.2f" % (daemon_rate / pp_rate))
    print("  (c) CPU per match")
    row("daemon: vdispatchd CPU / match", "%.1f us" % (1e6 * cpu["vdispatchd"] / max(matches, 1)))
    row("daemon: redis-server CPU / match", "%.1f us" % (1e6 * cpu["redis-server"] / max(matches, 1)))
    if "vd-kafka-mock" in cpu:
        row("daemon: vd-kafka-mock CPU / match", "%.1f us" % (1e6 * cpu["vd-kafka-mock"] / max(matches, 1)))
    for label, r in (("Python 1 cmd/round trip", pa), ("Python pipelined", pp)):
        row("%s: client / redis-server CPU per match" % label, "%.1f / %.1f us" % (
            1e6 * r["py_cpu"] / r["matches"], 1e6 * r["redis_cpu"] / r["matches"]))
    row("redis-server CPU per match: daemon / Python pipelined", "%.2f" % (
        cpu["redis-server"] / max(matches, 1) / (pp["redis_cpu"] / pp["matches"])))
    row("raw GEOSEARCH: redis-server CPU per search", "%.1f us" % (
        1e6 * geo_full["redis_cpu"] / geo_full["n"]))
    print()
    if sampler.error:
        print("note: some /metrics samples failed: " + sampler.error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
