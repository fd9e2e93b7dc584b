"""Large events through the real servers: a concert with 600 volunteers and 2,000 incidents in
surges, and an expo with 140 volunteers (scripts/scenario.py --event; here compressed to a
minute). Volunteers finish their tasks a few seconds after being sent, and serve again.

Checks on everything that came out: every incident has its outcome, no volunteer was held by
two incidents at once, the most needed incidents were served at least as well as the least,
rounds grew with the surges (far fewer Redis calls than incidents), and Redis is consistent.

  test_concert   600 volunteers, 2,000 incidents over 60 s (batch window 300 ms): fewer
                 matching Redis calls than incidents
  test_expo      140 volunteers, 300 incidents over 30 s

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_events.py [TEST_NAME ...]
"""

import heapq
import json
import os
import random
import sys
import threading
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import vdtest  # noqa: E402
import scenario  # noqa: E402
from test_faults import check_redis  # noqa: E402
from vdtest import listen_config, metrics  # noqa: E402

SCALE = vdtest.TIMEOUT_SCALE
TOPICS = dict(vdtest.DEFAULT_TOPICS, **{"vd.requests": 8, "vd.assignments": 8, "vd.notifications": 8,
                                       "vd.responses": 8})


class Completer:
    """The volunteers' phones at the event: each task confirmed is reported done a few seconds
    later (seeded), so that volunteers serve again."""

    def __init__(self, env, seed, lo=2.0, hi=6.0):
        self.env, self.seed, self.lo, self.hi = env, seed, lo, hi
        self.seen, self.due, self.n = set(), [], 0
        self.stop = threading.Event()
        self.error = None
        self.completed = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self.stop.is_set():
                for e in self.env.events("assignments", timeout=10):
                    d = e.get("data") or {}
                    key = (d.get("request_id"), d.get("volunteer_id"))
                    if e.get("type") != "vd.assignment.confirmed" or key in self.seen:
                        continue
                    self.seen.add(key)
                    rng = random.Random("%d/%s/%s" % (self.seed, key[0], key[1]))
                    self.n += 1
                    heapq.heappush(self.due, (time.time() + rng.uniform(self.lo, self.hi), self.n, key))
                batch = []
                while self.due and self.due[0][0] <= time.time():
                    _, _, (rid, vid) = heapq.heappop(self.due)
                    batch.append(vdtest.task_completed(rid, vid))
                if batch:
                    self.env.send("responses", batch)
                    self.completed += len(batch)
                time.sleep(0.5)
        except Exception as e:  # reported by close()
            self.error = e

    def close(self):
        self.stop.set()
        self._thread.join(60)
        if self.error:
            raise AssertionError("the volunteers' phones failed: %s" % self.error)


def play(kind, minutes, window_ms, under_load, n_vol=None, n_inc=None):
    """under_load: the incidents come fast enough that matching must cost less than one Redis
    call each (rounds and settles); a trickle costs about one (a settle each)."""
    b = scenario.Builder(7, datetime.now(timezone.utc))
    vols, incs, stats = scenario.gen_event(b, kind, n_vol, n_inc, minutes)
    eid = stats["event_id"]
    with vdtest.Env(topics=TOPICS) as env:
        listen, port = listen_config()
        d = env.daemon({"http.listen": listen, "matching.offer_timeout_ms": 0,
                        "matching.batch_window_ms": window_ms, "log.level": "info"})
        env.kafka.produce("volunteers", [(k, v) for k, v in vols])
        env.wait_for(lambda: env.redis.cmd("ZCARD", "vd:pool/ev/" + eid) == len(vols), timeout=60,
                     what="the event's volunteers pooled")
        phones = Completer(env, 7)
        m0 = metrics(port)
        t0 = time.time()
        # The incidents at their times (in batches of what is due each 0.2 s).
        i = 0
        while i < len(incs):
            due = [(rid, v) for at, rid, v in incs[i:] if t0 + at <= time.time()]
            if due:
                env.kafka.produce("requests", due)
                i += len(due)
            else:
                time.sleep(0.2)
        rids = [rid for _, rid, _ in incs]
        outs = env.wait_for(lambda: (lambda o: o if set(rids) <= set(o) else None)(
            vdtest.outcomes(env.events("assignments"))), timeout=120 * SCALE, interval=1,
            what="an outcome for every incident")
        phones.close()
        m = metrics(port)
        # Served, by priority.
        prio = {}
        for _, rid, v in incs:
            p = json.loads(v)["data"]["priority"]
            served = outs[rid][0]["type"] == "vd.assignment.confirmed"
            prio.setdefault(p, [0, 0])
            prio[p][0] += 1
            prio[p][1] += served
        share = {p: s / n for p, (n, s) in prio.items()}
        rounds = m["vd_rounds_total"] - m0["vd_rounds_total"]
        # The calls that matching makes: the rounds' calls (round, widen, claim) and the settles of their facts
        # (the completions, each an input of its own, are not matching).
        calls = sum(m['vd_redis_calls_by_kind_total{kind="%s"}' % k] -
                    m0['vd_redis_calls_by_kind_total{kind="%s"}' % k] for k in ("round", "widen", "claim", "settle"))
        vdtest.log("%s: %d incidents over %.0f s, %d volunteers: served by priority %s; %d rounds "
                   "(%.1f incidents each), %.2f matching Redis calls per incident, %d tasks completed"
                   % (kind, len(incs), minutes * 60, len(vols),
                      {p: "%d/%d" % (s, n) for p, (n, s) in sorted(prio.items())}, rounds,
                      (m["vd_round_requests_total"] - m0["vd_round_requests_total"]) / max(rounds, 1),
                      calls / len(incs), phones.completed))
        assert share.get("urgent", 1) >= share.get("low", 0), \
            "urgent incidents served less than low ones: %s" % share
        if under_load:
            assert calls < len(incs), "%d Redis calls for %d incidents" % (calls, len(incs))
        # Consistency: one outcome per incident, nobody held twice at once (Redis now).
        for rid in rids:
            assert len({e["id"] for e in outs[rid] if e["type"] == "vd.request.unmatched"}) <= 1, rid
        check_redis(env.redis, {})
        assert not env.events("deadletter"), "dead letters"
        assert d.stop() == 0


def test_concert():
    play("concert", 1.0, 300, True)


def test_expo():
    play("expo", 0.5, 300, False)


if __name__ == "__main__":
    vdtest.main(globals())
