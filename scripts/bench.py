#!/usr/bin/env python3
"""Measures vdispatchd against the limits of its parts, side by side in one run (stdlib only,
plus python3-confluent-kafka for the scripting-language reference).

scripts/bench.sh starts redis-server, the Kafka mock and vdispatchd, then runs this with their
ports and PIDs. One seeded Hohhot scenario (scripts/scenario.py): a pool of available
volunteers, a warm-up request, requests paced at --rate, then a burst. Every program gets the
same requests on topics of its own and is read by the same collector (vd-collect), so a
request's latency is always: its Kafka timestamp -> its first outcome arriving at a consumer.
  1. the Kafka path alone: vd-echo, a worker that does no matching and makes a match's three
     outputs per request (the daemon's producer settings);
  2. the raw Redis limit of the daemon's own Functions: a second vdispatchd on database 1
     takes the pool and the burst while MONITOR records its FCALLs; they are replayed,
     pipelined from one client, on an empty database 1 (the pool's calls first, untimed);
  3. vdispatchd takes the pool through Kafka; GEOSEARCH alone on it, pipelined (Redis' raw
     search capacity); then the paced requests and the burst, with the daemon's peak RSS, its
     CPU and Redis' CPU, Redis calls per match (the daemon's count and commandstats);
  4. the reference in plain Python: a confluent-kafka worker matching one request at a time
     (PyMatcher, the daemon's rule in plain Redis commands and the library's claim Function)
     on its own copy of the pool;
  5. prints the table and the ratios against the targets.
Nothing is asserted: the machine is shared and noisy, so only ratios within one run mean
much. Exit status 0 when the run completed, 1 when it could not (timeout, a process died).
"""

import argparse
import collections
import json
import math
import os
import random
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
    return conf


def mode_of(conf):
    """How the daemon assigns, in words, from its effective settings."""
    offer = int(conf.get("matching.offer_timeout_ms", 0))
    window = int(conf.get("matching.batch_window_ms", 0))
    out = ("offer mode (offers wait %d s for answers nobody gives; the offer is the outcome)"
           % (offer // 1000)) if offer > 0 else "direct mode"
    if window:
        out += ", batch window %d ms" % window
    return out


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


def sched_s(pid):
    """(ran, waited for a core) of a process's main thread, in seconds, from the scheduler's
    own accounting (/proc/PID/task/PID/schedstat); None when it is not there."""
    try:
        with open("/proc/%d/task/%d/schedstat" % (pid, pid)) as f:
            ran, waited = f.read().split()[:2]
        return int(ran) / 1e9, int(waited) / 1e9
    except (OSError, ValueError):
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


def machine_cpu():
    """(busy, total) jiffies of all cores together, from /proc/stat (idle and iowait are not
    busy)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


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


def register(conn, n, seed, batch=1000):
    """The rest of the registry: n volunteers with a record who are not available now (each
    made available, then unavailable, by the daemon's own Functions, around the city centre),
    so that the pool is a small part of what Redis holds."""
    rng = random.Random(seed + 7)
    t0 = time.monotonic()
    lat0, lon0 = scenario.CITY_CENTRE
    for i in range(0, n, batch):
        cmds = []
        for k in range(i, min(n, i + batch)):
            vid = "reg-%07d" % k
            keys = (DAEMON_PREFIX + "vol/" + vid, DAEMON_PREFIX + "vols")
            cmds.append(("FCALL", fn("vol_available"), 2) + keys + (
                DAEMON_PREFIX, vid, "%.7f" % (lat0 + rng.uniform(-0.12, 0.12)),
                "%.7f" % (lon0 + rng.uniform(-0.16, 0.16)), "", "", 0, "", "", RADIUS_MAX_M))
            cmds.append(("FCALL", fn("vol_unavailable"), 2) + keys + (DAEMON_PREFIX, vid))
        conn.pipeline(cmds)
        if (i // batch) % 100 == 99:
            say("registry: %d of %d unavailable volunteers recorded" % (i + batch, n))
    say("registry: %d unavailable volunteers recorded in %.1f s (not in any pool)" % (n, time.monotonic() - t0))


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
        self.sock, self.buf, self.pos, self.errors = sock, b"", 0, 0

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
                    elif t == 45:  # '-': counted, as one element
                        self.errors += 1
                        pos = e + 2
                        remaining -= 1
                        top = 0 if top is None else top
                    else:
                        pos = e + 2
                        remaining -= 1
                        top = 0 if top is None else top
                found += top or 0
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
        self.last = ""  # the outcome of the last request matched

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
        self.last = "unmatched:" + reason if state in ("unmatched", "expired") else state
        self.outcomes[self.last] += 1

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
                            self.last = "replay"
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
                    self.last = r[1]
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


# ---- Kafka helpers ----------------------------------------------------------------------------

def produce(build, brokers, topic, path, extra=()):
    with open(path, "rb") as f:
        r = subprocess.run([os.path.join(build, "vd-produce"), "-b", brokers, "-t", topic, *extra],
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


def write_frames(path, msgs):
    with open(path, "wb") as f:
        for key, value in msgs:
            f.write(scenario.frame(key, value))


def wait_for(pred, timeout, interval=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def rss_kib(pid):
    """(VmRSS, VmHWM) of a process in KiB, or (None, None) when it is gone."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line[:5]] = int(line.split()[1])
    except OSError:
        return None, None
    return out.get("VmRSS"), out.get("VmHWM")


class RssSampler(threading.Thread):
    """The highest VmRSS of a process, sampled every 50 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop_ev = pid, 0, threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            rss, _ = rss_kib(self.pid)
            if rss:
                self.peak = max(self.peak, rss)
            self.stop_ev.wait(0.05)

    def stop(self):
        self.stop_ev.set()
        self.join()
        return self.peak


# A request's first outcome: offered (offer mode), confirmed (direct mode) or unmatched.
OUTCOME_TYPES = ("vd.assignment.offered", "vd.assignment.confirmed", "vd.request.unmatched")


class Collector:
    """vd-collect on a program's request and assignment topics: when each request was produced
    (its Kafka timestamp) and when its first outcome arrived at a consumer."""

    def __init__(self, build, brokers, req_topic, out_topic, path):
        self.req_topic, self.path = req_topic, path
        self.f = open(path, "wb")
        self.p = subprocess.Popen([os.path.join(build, "vd-collect"), "-b", brokers, "-t",
                                   req_topic + "," + out_topic], stdout=self.f)
        self.sent, self.outcome, self.kinds, self.pos = {}, {}, collections.Counter(), 0

    def poll(self):
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.pos += end
        for line in data[:end].decode("utf-8", "replace").splitlines():
            topic, key, ts, arrived, typ = line.split("\t")
            if topic == self.req_topic:
                self.sent.setdefault(key, int(ts))
            elif typ in OUTCOME_TYPES:
                self.kinds[typ] += 1
                self.outcome.setdefault(key, (int(arrived), typ))
        return self

    def have(self, keys):
        self.poll()
        return all(k in self.outcome and k in self.sent for k in keys)

    def figures(self, keys):
        """Latencies (ms, sorted) of the keys' first outcomes; the span from the first request
        produced to the last outcome (s)."""
        lat = sorted(self.outcome[k][0] - self.sent[k] for k in keys)
        span = (max(self.outcome[k][0] for k in keys) - min(self.sent[k] for k in keys)) / 1000.0
        return lat, span

    def close(self):
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.f.close()


def drive(label, a, req_topic, out_topic, paced_bin, paced_keys, burst_bin, burst_keys, pids,
          warm=None, between=None):
    """Paced requests then the burst through one program; figures of both. pids: the processes
    whose CPU counts (name -> pid); the first is the program itself (its peak RSS). between(),
    if given, runs after the paced requests; its result is res["between"]."""
    col = Collector(a.build, a.brokers, req_topic, out_topic,
                    os.path.join(a.workdir, "topics", label + ".tsv"))
    res = {}
    try:
        if warm:
            warm_bin, warm_keys = warm
            produce(a.build, a.brokers, req_topic, warm_bin, ["-X", "linger.ms=0"])
            if not wait_for(lambda: col.have(warm_keys), 60, 0.1):
                die("%s: no outcome for the warm-up request within 60 s" % label)
        first = next(iter(pids.values()))
        rss = RssSampler(first)
        rss.start()
        produce(a.build, a.brokers, req_topic, paced_bin, ["-r", str(a.rate), "-X", "linger.ms=0"])
        if not wait_for(lambda: col.have(paced_keys), a.timeout, 0.1):
            die("%s: %d of %d paced requests have an outcome after %.0f s"
                % (label, len([k for k in paced_keys if k in col.outcome]), len(paced_keys), a.timeout))
        res["paced"], _ = col.figures(paced_keys)
        if between:
            res["between"] = between()
        # Who else takes the machine's cores meanwhile: the Kafka mock and the collector.
        pids = dict(pids, **{"Kafka mock": a.mock_pid, "collector": col.p.pid})
        rpid = pids.get("redis-server")
        sched0 = sched_s(rpid) if rpid else None
        cpu0, mach0, t0 = {n: cpu_s(p) for n, p in pids.items()}, machine_cpu(), time.monotonic()
        produce(a.build, a.brokers, req_topic, burst_bin)
        if not wait_for(lambda: col.have(burst_keys), a.timeout, 0.2):
            die("%s: %d of %d burst requests have an outcome after %.0f s"
                % (label, len([k for k in burst_keys if k in col.outcome]), len(burst_keys), a.timeout))
        cpu1, mach1, t1 = {n: cpu_s(p) for n, p in pids.items()}, machine_cpu(), time.monotonic()
        sched1 = sched_s(rpid) if rpid else None
        if sched0 and sched1:
            # Redis's one thread: running, or ready and waiting for a core (the machine's
            # other processes had both), or idle (no call of the program's to run).
            res["redis_sched"] = (sched1[0] - sched0[0], sched1[1] - sched0[1])
        res["wall"] = t1 - t0
        res["machine"] = (mach1[0] - mach0[0]) / max(mach1[1] - mach0[1], 1)
        res["burst"], res["span"] = col.figures(burst_keys)
        res["rate"] = len(burst_keys) / res["span"]
        res["cpu"] = {n: cpu1[n] - cpu0[n] for n in pids if cpu0[n] is not None and cpu1[n] is not None}
        res["rss_kib"] = rss.stop()
        res["kinds"] = dict(col.kinds)
    finally:
        col.close()
    say("%s: paced p99 %.1f ms, burst %s over %.2f s" % (
        label, percentile(res["paced"], 0.99), fmt_rate(res["rate"]), res["span"]))
    return res


# ---- the raw Redis limit of the daemon's own Functions: capture, then replay ----------------

def monitor_args(line):
    """The arguments of one MONITOR line (`ts [db addr] "arg" "arg" ...`), as bytes."""
    i = line.index(b"] ") + 2
    out, n = [], len(line)
    while i < n:
        if line[i] != 0x22:
            i += 1
            continue
        i += 1
        buf = bytearray()
        while line[i] != 0x22:
            c = line[i]
            if c == 0x5C:
                e = line[i + 1]
                if e == 0x78:  # \xHH
                    buf.append(int(line[i + 2:i + 4], 16))
                    i += 4
                    continue
                buf.append({0x6E: 10, 0x72: 13, 0x74: 9, 0x61: 7, 0x62: 8}.get(e, e))
                i += 2
                continue
            buf.append(c)
            i += 1
        out.append(bytes(buf))
        i += 1
    return out


class Monitor(threading.Thread):
    """MONITOR on a connection of its own: keeps the FCALLs made in one database."""

    def __init__(self, port, db):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(Resp.encode(("MONITOR",)))
        self.tag = b"[%d " % db
        self.cmds, self.stop_ev = [], threading.Event()

    def run(self):
        buf = b""
        self.sock.settimeout(0.2)
        while not self.stop_ev.is_set():
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not chunk:
                break
            buf += chunk
            lines = buf.split(b"\r\n")
            buf = lines.pop()
            for line in lines:
                if self.tag in line[:48] and b'] "fcall"' in line[:96].lower():
                    self.cmds.append(monitor_args(line))

    def stop(self):
        self.stop_ev.set()
        self.join()
        self.sock.close()
        return self.cmds


def replay(port, db, cmds, batch=256):
    """Sends the commands pipelined (two batches in flight) on a fresh connection to db; returns
    (wall s, error replies)."""
    conn = Resp(port)
    conn.call("SELECT", db)
    enc = [Resp.encode(c) for c in cmds]
    batches = [b"".join(enc[i:i + batch]) for i in range(0, len(enc), batch)]
    sizes = [min(batch, len(enc) - i) for i in range(0, len(enc), batch)]
    skipper = ReplySkipper(conn.sock)
    inflight, i = collections.deque(), 0
    t0 = time.monotonic()
    while i < len(batches) or inflight:
        while i < len(batches) and len(inflight) < 2:
            conn.sock.sendall(batches[i])
            inflight.append(sizes[i])
            i += 1
        skipper.skip(inflight.popleft())
    wall = time.monotonic() - t0
    conn.close()
    return wall, skipper.errors


def raw_functions(a, vbin, burst_bin, burst_keys, redis):
    """The daemon's Redis work for the burst, without the daemon: a second vdispatchd on
    database 1 (its own topics) takes the same pool and burst while MONITOR records its
    FCALLs; then database 1 is emptied, the pool's calls replayed, and the burst's calls
    replayed pipelined from one client, timed, with Redis' CPU and commandstats."""
    db = 1
    port = a.redis_port
    admin = Resp(port)
    admin.call("SELECT", db)
    admin.call("FLUSHDB")
    http = free_port()
    log = os.path.join(a.workdir, "capture-daemon.log")
    sets = ["redis.db=%d" % db, "kafka.group_id=vdispatch-capture", "http.listen=127.0.0.1:%d" % http,
            "log.file=" + log] + ["kafka.topic.%s=cap.%s" % (t, t) for t in
                                  ("requests", "volunteers", "responses", "assignments",
                                   "notifications", "deadletter")]
    argv = [os.path.join(a.build, "vdispatchd"), "-c", a.config]
    for kv in sets:
        argv += ["--set", kv]
    mon = Monitor(port, db)
    mon.start()
    d = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log + ".err", "wb"))
    url = "http://127.0.0.1:%d/metrics" % http
    try:
        def ready():
            if d.poll() is not None:
                die("the capture daemon exited (%s); see %s" % (d.returncode, log))
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % http, timeout=1):
                    return True
            except OSError:
                return False
        if not wait_for(ready, 60, 0.2):
            die("the capture daemon was not ready in 60 s; see %s" % log)
        produce(a.build, a.brokers, "cap.volunteers", vbin)
        nvol = a.volunteers
        if not wait_for(lambda: scrape(url).get("vd_consumed_total", 0) >= nvol and
                        scrape(url).get("vd_jobs_in_memory", 1) == 0, 300, 0.5):
            die("the capture daemon did not take the pool in 300 s")
        time.sleep(1.0)  # MONITOR's stream lags the calls it reports
        mark = len(mon.cmds)
        produce(a.build, a.brokers, "cap.requests", burst_bin)
        if not wait_for(lambda: scrape(url).get("vd_matches_total", 0) >= len(burst_keys) and
                        scrape(url).get("vd_jobs_in_memory", 1) == 0, a.timeout, 0.5):
            die("the capture daemon did not match the burst in %.0f s" % a.timeout)
        time.sleep(1.5)  # the last settles
        matches = scrape(url)["vd_matches_total"]
    finally:
        d.terminate()
        try:
            d.wait(20)
        except subprocess.TimeoutExpired:
            d.kill()
            d.wait()
    cmds = mon.stop()
    pool_cmds, burst_cmds = cmds[:mark], cmds[mark:]
    # The recorded calls, as RESP, for a replay by hand (redis-cli -n 1 --pipe < file) under a
    # profiler; kept with --keep.
    for name, part in (("pool", pool_cmds), ("burst", burst_cmds)):
        with open(os.path.join(a.workdir, "capture-%s.resp" % name), "wb") as f:
            f.writelines(Resp.encode(c) for c in part)
    wall, errors, r0, r1, c0, c1 = timed_replay(a, pool_cmds, burst_cmds, admin)
    by_fn = collections.Counter(c[1].decode() for c in burst_cmds if len(c) > 1)
    # Again, with SLOWLOG timing every call: Redis's own time per call, by Function (the first
    # replay stays the timed one: the log costs a little).
    admin.call("FLUSHDB")
    replay(port, db, pool_cmds)
    s0 = commandstats(admin)
    fn_us = slowlog_by_function(admin, lambda: replay(port, db, burst_cmds), len(burst_cmds))
    fcall_us = cmd_delta(s0, commandstats(admin)).get("fcall", (0, 0))[1]
    admin.call("FLUSHDB")
    admin.close()
    return {"wall": wall, "matches": matches, "calls": len(burst_cmds), "errors": errors,
            "redis_cpu": r1 - r0, "by_fn": by_fn, "cmdstats": cmd_delta(c0, c1),
            "rate": matches / wall, "fn_us": fn_us, "fcall_us": fcall_us,
            "pool_cmds": pool_cmds, "burst_cmds": burst_cmds}


def timed_replay(a, pool_cmds, burst_cmds, admin, db=1):
    """Database db emptied, the pool's calls replayed, then the burst's, timed: (wall s, error
    replies, Redis CPU s before and after, commandstats before and after)."""
    admin.call("SELECT", db)
    admin.call("FLUSHDB")
    replay(a.redis_port, db, pool_cmds)
    c0, r0 = commandstats(admin), cpu_s(a.redis_pid)
    wall, errors = replay(a.redis_port, db, burst_cmds)
    r1, c1 = cpu_s(a.redis_pid), commandstats(admin)
    return wall, errors, r0, r1, c0, c1


def replay_after(a, raw):
    """The raw replay again, right after vdispatchd's burst: the machine's speed drifts within
    minutes (the same calls took up to a third more Redis CPU a minute apart), so the limit is
    taken on both sides of the burst."""
    admin = Resp(a.redis_port)
    try:
        wall, errors, r0, r1, _, _ = timed_replay(a, raw["pool_cmds"], raw["burst_cmds"], admin)
        admin.call("FLUSHDB")
    finally:
        admin.close()
    return {"wall": wall, "errors": errors, "redis_cpu": r1 - r0, "rate": raw["matches"] / wall}


def slowlog_by_function(conn, run, ncalls, floor_us=20):
    """Runs run() with SLOWLOG logging every command of floor_us or more; returns {function:
    (calls, µs)} of the FCALLs it logged (Redis's execution time of each, the Lua inside
    included). Redis logs the commands a Function runs as well: the floor keeps those (a few
    µs each) out, and leaves out only FCALLs too short to matter."""
    old = [conn.call("CONFIG", "GET", k)[1] for k in ("slowlog-log-slower-than", "slowlog-max-len")]
    conn.call("CONFIG", "SET", "slowlog-log-slower-than", str(floor_us))
    conn.call("CONFIG", "SET", "slowlog-max-len", str(ncalls * 20 + 10000))
    conn.call("SLOWLOG", "RESET")
    try:
        run()
        entries = conn.call("SLOWLOG", "GET", "-1")
    finally:
        conn.call("CONFIG", "SET", "slowlog-log-slower-than", old[0])
        conn.call("CONFIG", "SET", "slowlog-max-len", old[1])
        conn.call("SLOWLOG", "RESET")
    out = collections.defaultdict(lambda: [0, 0])
    for e in entries:
        args = e[3]
        if len(args) > 1 and args[0].lower() == "fcall":
            f = out[args[1]]
            f[0] += 1
            f[1] += e[2]
    return {k: tuple(v) for k, v in out.items()}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- the scripting-language reference: a Kafka worker in plain Python ----------------------

def worker(argv):
    """bench.py worker: consumes requests (confluent-kafka), matches each with PyMatcher on its
    own copy of the pool, publishes three outputs per request (the outcome on the assignments
    topic, two notices), commits. Runs until SIGTERM."""
    import signal
    from confluent_kafka import Consumer, Producer
    ap = argparse.ArgumentParser(prog="bench.py worker")
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--config")
    ap.add_argument("--in-topic", required=True)
    ap.add_argument("--out-topics", required=True)
    a = ap.parse_args(argv)
    if a.config:
        load_settings(a.config)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    m = PyMatcher(Resp(a.redis_port), a.prefix, True)
    cons = Consumer({"bootstrap.servers": a.brokers, "group.id": "py-worker",
                     "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10})
    prod = Producer({"bootstrap.servers": a.brokers, "enable.idempotence": True, "acks": "all",
                     "linger.ms": 5})
    cons.subscribe([a.in_topic])
    outs = a.out_topics.split(",")
    while not stop:
        msg = cons.poll(0.1)
        prod.poll(0)
        if msg is None or msg.error():
            continue
        q = decode_request(msg.value())
        m.match(q)
        typ = "vd.request.unmatched" if m.last.startswith(("unmatched", "expired")) else \
            "vd.assignment.confirmed"
        for k in range(3):
            body = json.dumps({"type": typ if k == 0 else "vd.notify.volunteer",
                               "data": {"request_id": q.rid, "outcome": m.last}})
            while True:
                try:
                    prod.produce(outs[k % len(outs)], key=msg.key(), value=body)
                    break
                except BufferError:
                    prod.poll(0.05)
    cons.close()
    prod.flush(10)


# ---- the run ----------------------------------------------------------------------------------

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
    ap.add_argument("--registered", type=int, default=0,
                    help="volunteers with a record in all (the rest are not available)")
    ap.add_argument("--paced", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=250)
    ap.add_argument("--burst", type=int, default=50000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--skip", default="", help="comma-separated: kafka,raw,python")
    ap.add_argument("--load-before", default="")
    ap.add_argument("--config", help="the daemon's --dump-config output")
    a = ap.parse_args()
    a.mode = mode_of(load_settings(a.config) if a.config else {})
    skip = set(x for x in a.skip.split(",") if x)
    os.makedirs(os.path.join(a.workdir, "topics"), exist_ok=True)
    redis = Resp(a.redis_port)

    # -- 1. one scenario: the pool, a warm-up request, the paced requests, the burst
    g = argparse.Namespace(volunteers=a.volunteers, requests=a.paced + a.burst + 1, seed=a.seed)
    vols, pools, reqs_msgs, vbin, _ = generate(g, a.workdir)
    warm, paced, burst = reqs_msgs[:1], reqs_msgs[1:1 + a.paced], reqs_msgs[1 + a.paced:]
    paths = {}
    for name, msgs in (("warm", warm), ("paced", paced), ("burst", burst)):
        paths[name] = os.path.join(a.workdir, name + ".bin")
        write_frames(paths[name], msgs)
    keys = {name: [k for k, _ in msgs] for name, msgs in (("warm", warm), ("paced", paced), ("burst", burst))}
    say("scenario: %d volunteers (pools %s); %d requests paced at %s, then a burst of %d" % (
        len(vols), ", ".join("%s=%d" % kv for kv in sorted(pools.items())), a.paced,
        fmt_rate(a.rate), a.burst))
    rows = {}

    # -- 2. the Kafka path alone: vd-echo makes a match's three outputs per request
    if "kafka" not in skip:
        echo = subprocess.Popen([os.path.join(a.build, "vd-echo"), "-b", a.brokers, "-g", "kp-echo",
                                 "-i", "kp.requests", "-o", "kp.assignments,kp.notifications", "-n", "3"],
                                stdout=subprocess.DEVNULL)
        try:
            rows["kafka"] = drive("kafka path", a, "kp.requests", "kp.assignments", paths["paced"],
                                  keys["paced"], paths["burst"], keys["burst"], {"vd-echo": echo.pid},
                                  warm=(paths["warm"], keys["warm"]))
        finally:
            echo.terminate()
            echo.wait(20)

    # -- 3. the raw Redis limits: the daemon's Functions replayed, GEOSEARCH alone
    if "raw" not in skip:
        say("raw Redis: capturing the daemon's calls for the burst (a second daemon on db 1)")
        rows["raw"] = raw_functions(a, vbin, paths["burst"], keys["burst"], redis)
        say("raw Redis: %d calls for %d matches replayed in %.2f s (%s), %d error replies" % (
            rows["raw"]["calls"], rows["raw"]["matches"], rows["raw"]["wall"],
            fmt_rate(rows["raw"]["rate"]), rows["raw"]["errors"]))

    # -- 4. vdispatchd: the pool through Kafka, then GEOSEARCH alone on it, then the requests
    t0 = time.monotonic()
    produce(a.build, a.brokers, "vd.volunteers", vbin)

    def pool_loaded():
        try:
            m = scrape(a.metrics)
        except OSError:
            return False
        return (m.get("vd_consumed_total", 0) >= len(vols) and m.get("vd_jobs_in_memory", 1) == 0
                and pool_sizes(redis, DAEMON_PREFIX, pools) == pools)

    if not wait_for(pool_loaded, 300):
        die("the daemon did not pool all volunteers within 300 s")
    say("vdispatchd pooled %d volunteers in %.1f s through Kafka" % (len(vols), time.monotonic() - t0))
    if a.registered > len(vols):
        register(redis, a.registered - len(vols), a.seed)
    reqs = [decode_request(v) for _, v in burst]
    if "raw" not in skip:
        zkeys = set()
        for q in reqs:
            base = DAEMON_PREFIX + ("pool/ev/" + q.event_id if q.event_id else "pool/city")
            zkeys.update(base + "/s/" + s for s in q.skills)
        zcard = {k: redis.call("ZCARD", k) for k in zkeys}
        skeys = [search_key(DAEMON_PREFIX, q, zcard) for q in reqs]
        c0, r0 = commandstats(redis), cpu_s(a.redis_pid)
        n, wall, found = raw_geosearch(redis, reqs, skeys, 2.0)
        cs = cmd_delta(c0, commandstats(redis)).get("geosearch", (1, 0))
        rows["geo"] = {"rate": n / wall, "redis_cpu": cpu_s(a.redis_pid) - r0, "n": n,
                       "usec": cs[1] / max(cs[0], 1), "found": found}
        say("raw GEOSEARCH: %d searches in %.2f s (%s)" % (n, wall, fmt_rate(n / wall)))
    m0, c0 = scrape(a.metrics), commandstats(redis)
    d = drive("vdispatchd", a, "vd.requests", "vd.assignments", paths["paced"], keys["paced"],
              paths["burst"], keys["burst"], {"vdispatchd": a.daemon_pid, "redis-server": a.redis_pid},
              warm=(paths["warm"], keys["warm"]), between=lambda: scrape(a.metrics))
    m1, c1 = scrape(a.metrics), commandstats(redis)
    d["matches"] = m1["vd_matches_total"] - m0["vd_matches_total"]
    d["calls"] = m1["vd_redis_calls_total"] - m0["vd_redis_calls_total"]
    # Outputs, and those through the prompt producer, in the paced part and in the burst.
    mm = d["between"]
    d["outputs"] = [mm["vd_produced_total"] - m0["vd_produced_total"],
                    m1["vd_produced_total"] - mm["vd_produced_total"]]
    d["prompt"] = [mm.get("vd_produced_prompt_total", 0) - m0.get("vd_produced_prompt_total", 0),
                   m1.get("vd_produced_prompt_total", 0) - mm.get("vd_produced_prompt_total", 0)]
    d["cmdstats"] = cmd_delta(c0, c1)
    d["hwm_kib"] = rss_kib(a.daemon_pid)[1]
    d["by_kind"] = {k.split('"')[1]: m1[k] - m0.get(k, 0) for k in m1
                    if k.startswith("vd_redis_calls_by_kind_total{")}
    rows["daemon"] = d
    if "raw" in rows:
        rows["raw"]["after"] = after = replay_after(a, rows["raw"])
        say("raw Redis: replayed again after vdispatchd's burst in %.2f s (%s), %d error replies" % (
            after["wall"], fmt_rate(after["rate"]), after["errors"]))

    # -- 5. the scripting-language reference on its own copy of the pool
    pyexe = None
    if "python" not in skip:
        # Debian's package serves Debian's python3, which may not be the one running this.
        for exe in (sys.executable, "/usr/bin/python3"):
            if subprocess.run([exe, "-c", "import confluent_kafka"], capture_output=True).returncode == 0:
                pyexe = exe
                break
        if not pyexe:
            say("python3-confluent-kafka is missing: the Python reference is left out")
            skip.add("python")
    if "python" not in skip:
        cmds = [volunteer_fcall("vdpy:", v) for _, _, v, _ in vols]
        for i in range(0, len(cmds), 500):
            redis.pipeline(cmds[i:i + 500])
        w = subprocess.Popen([pyexe, os.path.abspath(__file__), "worker", "--brokers", a.brokers,
                              "--redis-port", str(a.redis_port), "--prefix", "vdpy:", "--config",
                              a.config or "", "--in-topic", "py.requests",
                              "--out-topics", "py.assignments,py.notifications"])
        try:
            rows["python"] = drive("python worker", a, "py.requests", "py.assignments", paths["paced"],
                                   keys["paced"], paths["burst"], keys["burst"],
                                   {"python": w.pid, "redis-server": a.redis_pid},
                                   warm=(paths["warm"], keys["warm"]))
        finally:
            w.terminate()
            w.wait(30)

    report(a, rows)


def report(a, rows):
    d = rows["daemon"]
    k, raw, geo, py = rows.get("kafka"), rows.get("raw"), rows.get("geo"), rows.get("python")
    n = len(d["burst"])

    def lat(r, which):
        v = r[which]
        return "%.1f / %.1f / %.1f" % (percentile(v, .5), percentile(v, .95), percentile(v, .99))

    def us(cpu, matches):
        return "%.0f" % (cpu * 1e6 / matches) if matches else "-"

    print()
    print("=" * 110)
    print("vdispatchd benchmark: %d available volunteers%s; %d requests paced at %s, then %d at once; "
          "%s" % (a.volunteers, " (%d registered)" % a.registered if a.registered > a.volunteers else "",
                  a.paced, fmt_rate(a.rate), a.burst, a.mode))
    print("machine: %d cores, load before %s, now %s" % (os.cpu_count(), a.load_before or "?", loadavg()))
    print("=" * 110)
    head = "%-34s %10s %22s %22s %9s %10s %9s" % ("program", "matches/s", "paced p50/p95/p99 ms",
                                                "burst p50/p95/p99 ms", "peak RSS", "CPU µs/m", "Redis µs/m")
    print(head)
    print("-" * len(head))
    if geo:
        print("%-34s %10.0f %22s %22s %9s %10s %9.1f" % ("raw Redis: GEOSEARCH alone", geo["rate"], "-", "-",
                                                       "-", "-", geo["redis_cpu"] * 1e6 / geo["n"]))
    if raw:
        print("%-34s %10.0f %22s %22s %9s %10s %9s" % ("raw Redis: the daemon's Functions", raw["rate"],
                                                     "-", "-", "-", "-", us(raw["redis_cpu"], raw["matches"])))
        if raw.get("after"):
            print("%-34s %10.0f %22s %22s %9s %10s %9s" % (
                "  the same, after vdispatchd's burst", raw["after"]["rate"], "-", "-", "-", "-",
                us(raw["after"]["redis_cpu"], raw["matches"])))
    if k:
        print("%-34s %10.0f %22s %22s %8.1fM %10s %9s" % ("Kafka path: vd-echo, 3 outputs", k["rate"],
                                                        lat(k, "paced"), lat(k, "burst"), k["rss_kib"] / 1024,
                                                        us(k["cpu"].get("vd-echo", 0), n), "-"))
    print("%-34s %10.0f %22s %22s %8.1fM %10s %9s" % ("vdispatchd", d["rate"], lat(d, "paced"),
                                                    lat(d, "burst"), d["rss_kib"] / 1024,
                                                    us(d["cpu"].get("vdispatchd", 0), n),
                                                    us(d["cpu"].get("redis-server", 0), n)))
    if py:
        print("%-34s %10.0f %22s %22s %8.1fM %10s %9s" % ("Python worker (confluent-kafka)", py["rate"],
                                                        lat(py, "paced"), lat(py, "burst"),
                                                        py["rss_kib"] / 1024, us(py["cpu"].get("python", 0), n),
                                                        us(py["cpu"].get("redis-server", 0), n)))
    print()
    print("vdispatchd: %d matches, %d Redis calls (%.3f per match: %s); outcomes %s" % (
        d["matches"], d["calls"], d["calls"] / max(d["matches"], 1),
        ", ".join("%s %d" % kv for kv in sorted(d["by_kind"].items()) if kv[1]), d["kinds"]))
    cs = d["cmdstats"]
    print("  Redis commandstats over paced + burst: %s" % ", ".join(
        "%s %d calls %.0f µs each" % (c, v[0], v[1] / max(v[0], 1)) for c, v in sorted(cs.items()) if v[0] >= 10))
    print("  peak RSS %.1f MiB during the run (VmHWM since start %.1f MiB)" % (d["rss_kib"] / 1024, d["hwm_kib"] / 1024))
    print("  outputs through the prompt producer (no linger): paced %d of %d (%.0f%%), burst %d of %d (%.1f%%)" % (
        d["prompt"][0], d["outputs"][0], 100.0 * d["prompt"][0] / max(d["outputs"][0], 1),
        d["prompt"][1], d["outputs"][1], 100.0 * d["prompt"][1] / max(d["outputs"][1], 1)))
    # The raw limit has Redis alone on the machine; every other row shares its cores with
    # Kafka: how much of them each process took tells which one the burst waited for.
    print("cores taken during the burst (of %d):" % (os.cpu_count() or 1))
    if raw:
        print("  raw Functions' replay: redis-server %.2f" % (raw["redis_cpu"] / max(raw["wall"], 1e-9)))
    for label, r in (("Kafka path", k), ("vdispatchd", d), ("Python worker", py)):
        if r and r.get("wall"):
            print("  %s: %s; the machine %.2f" % (label, ", ".join(
                "%s %.2f" % (nm, c / r["wall"]) for nm, c in sorted(r["cpu"].items(), key=lambda kv: -kv[1])),
                r["machine"] * (os.cpu_count() or 1)))
            if r.get("redis_sched"):
                ran, waited = r["redis_sched"]
                print("    Redis's thread: running %.2f of the burst, waiting for a core %.2f, idle %.2f" % (
                    ran / r["wall"], waited / r["wall"], max(0.0, 1 - (ran + waited) / r["wall"])))
    if raw:
        print("raw Functions: %d calls replayed (%s), %d error replies" % (
            raw["calls"], ", ".join("%s %d" % kv for kv in raw["by_fn"].most_common()), raw["errors"]))
        fu = raw.get("fn_us") or {}
        tot = sum(v[1] for v in fu.values())
        if tot:
            print("  Redis time per match by Function (SLOWLOG, calls of 20 µs or more: %.0f%% of FCALL time): %s" % (
                100.0 * tot / max(raw.get("fcall_us") or tot, 1), ", ".join(
                    "%s %.1f µs (%d calls, %.0f µs each)" % (f, v[1] / raw["matches"], v[0], v[1] / max(v[0], 1))
                    for f, v in sorted(fu.items(), key=lambda kv: -kv[1][1]))))
    print()
    print("ratios, this run (targets in parentheses):")
    # The raw limit: the mean of the replays before and after vdispatchd's burst (the same
    # calls; the machine's speed drifts between them).
    raw_rate = raw_cpu = None
    if raw:
        reps = [raw] + ([raw["after"]] if raw.get("after") else [])
        raw_rate = raw["matches"] / (sum(r["wall"] for r in reps) / len(reps))
        raw_cpu = sum(r["redis_cpu"] for r in reps) / len(reps)
    limits = [x for x in ((k or {}).get("rate"), raw_rate) if x]
    if limits:
        print("  matches/s / lower limit (Kafka path, raw Functions): %.2f  (>= 0.8)" % (d["rate"] / min(limits)))
        if raw and raw.get("after"):
            print("    against each replay of the raw Functions: before the burst %.2f, after it %.2f" % (
                d["rate"] / raw["rate"], d["rate"] / raw["after"]["rate"]))
    if raw:
        print("  Redis CPU per match / raw Functions': %.2f  (<= 2)" % (
            (d["cpu"].get("redis-server", 0) / n) / max(raw_cpu / max(raw["matches"], 1), 1e-9)))
    if k:
        print("  paced p99 - Kafka path's: %+.1f ms  (<= 2)" % (percentile(d["paced"], .99) - percentile(k["paced"], .99)))
    print("  peak RSS: %.1f MiB  (<= 32)" % (d["rss_kib"] / 1024))
    if py:
        print("  vs the Python worker: %.1fx matches/s, paced p99 %.1f vs %.1f ms, Redis CPU per match %.2fx" % (
            d["rate"] / py["rate"], percentile(d["paced"], .99), percentile(py["paced"], .99),
            d["cpu"].get("redis-server", 0) / max(py["cpu"].get("redis-server", 1e-9), 1e-9)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2:])
    else:
        main()
