"""Property test of offer mode (matching.offer_timeout_ms > 0): 200 volunteers and 1,000
requests, and a simulated volunteer app that answers each offer at random -- accept, decline,
answer about when the offer times out (racing with the deadline), stay silent (the offer
times out), or answer well after the deadline -- and adds stray answers (a wrong offer_id,
another volunteer, the same answer again). Confirmed volunteers complete their task after a
short while, except a few who keep it to the end; about one request in seventeen is cancelled
at a random moment (before it arrives, with it, while offered, once confirmed, after it
ended). Some requests need two volunteers, some expire a few seconds after they are sent.

When everything has settled (no offer outstanding, nothing due, the daemon idle), the test
checks that:
  1. every request is in exactly one end state in Redis and the event log says the same
     (unmatched, cancelled, confirmed and completed volunteers, volunteers_missing);
  2. every volunteer is free and pooled, or holds exactly one task, of a request that lists
     them as held;
  3. every offer has exactly one resolution (confirmed, withdrawn, cancelled) that fits the
     answer the app gave; no volunteer is offered a request twice; attempts are 1..k, at most
     max_offers x volunteers_needed;
  4. by the event times, no volunteer is ever held by two requests at once;
  5. the metrics count what the event log holds, and every notification belongs to an
     assignment event.

The run is random but seeded: the seed is logged, and VD_PROPERTY_SEED=<n> runs the same
requests, places and answers again (the daemon's timing still differs from run to run).

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_offers_property.py
"""

import heapq
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402
from vdtest import metrics  # noqa: E402

LAT, LON = vdtest.HOHHOT
SCALE = vdtest.TIMEOUT_SCALE
POOL = "vd:pool/city"
DUE = "vd:due"

VOLUNTEERS = 200
REQUESTS = 1000
WAVES = 10               # requests are sent in waves, so that volunteers serve several
AREA_M = 2000.0          # everyone within this distance of the centre: all in one search range
OFFER_TIMEOUT_MS = int(3000 * SCALE)
MAX_OFFERS = 3
KEEP_MAX = 25            # confirmed volunteers who never complete (busy at the end)

OFFERED = "vd.assignment.offered"
CONFIRMED = "vd.assignment.confirmed"
WITHDRAWN = "vd.assignment.withdrawn"
UNMATCHED = "vd.request.unmatched"
CANCELLED = "vd.request.cancelled"
COMPLETED = "vd.request.completed"
ASSIGNMENT_TYPES = {OFFERED, CONFIRMED, WITHDRAWN, UNMATCHED, CANCELLED, COMPLETED}

END_STATES = {"completed", "unmatched", "cancelled", "expired"}
# States in which the volunteers a request holds (held, not yet done) keep their task.
HOLDING_STATES = {"confirmed", "unmatched", "expired"}
UNMATCHED_REASONS = {"no_volunteer_in_range", "no_eligible_volunteer", "contention",
                     "all_declined", "expired"}


# --------------------------------------------------------------------------------------------
# Helpers

def now_ms():
    return int(time.time() * 1000)


def time_ms(rfc3339):
    """Milliseconds since the epoch of an RFC 3339 time as the daemon writes it."""
    return int(round(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000))


def split(value):
    return [x for x in (value or "").split(",") if x]


def random_place(rng):
    """A point uniformly distributed in the disc of AREA_M around the centre."""
    r = AREA_M * math.sqrt(rng.random())
    a = rng.uniform(0, 2 * math.pi)
    return vdtest.offset_m(LAT, LON, r * math.cos(a), r * math.sin(a))


def send_quiet(env, kind, events):
    """Produces events keyed as env.send() does, without a log line per call (the app sends
    hundreds of small batches); returns when Kafka has acknowledged them all."""
    msgs = [(vdtest.event_key(kind, e), e) for e in events]
    env.kafka.produce_start(kind, msgs).wait(60 * SCALE)


class Tail:
    """Follows a topic from its beginning with one long-running kcat (-u: unbuffered) and
    returns, on each call of new(), the events that arrived since the last call. The app reacts
    to what it reads here; the final checks read the whole topic again."""

    def __init__(self, env, kind):
        argv = ["kcat", "-C", "-u", "-q", "-b", env.kafka.bootstrap, "-t",
                env.kafka.topic(kind), "-o", "beginning", "-f", "%p %o %K %S\n%k%s\n"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL,
                                     preexec_fn=vdtest.pdeathsig(signal.SIGKILL))
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""

    def new(self):
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                raise vdtest.VdError("kcat following the topic exited with %s"
                                     % self.proc.poll())
            self.buf += chunk
        out, pos = [], 0
        while True:
            nl = self.buf.find(b"\n", pos)
            if nl < 0:
                break
            _, _, klen, vlen = (int(x) for x in self.buf[pos:nl].split())
            start = nl + 1 + max(klen, 0)
            end = start + max(vlen, 0)
            if len(self.buf) < end + 1:
                break
            out.append(json.loads(self.buf[start:end]))
            pos = end + 1
        self.buf = self.buf[pos:]
        return out

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


# --------------------------------------------------------------------------------------------
# The plan: volunteers and requests, drawn from the seed before anything runs

def make_plan(seed):
    rng = random.Random(seed)
    vols = {"pv-%03d" % i: random_place(rng) for i in range(VOLUNTEERS)}
    reqs = {}
    for i in range(REQUESTS):
        rid = "pr-%04d" % i
        u = rng.random()
        cancel = None
        if u < 0.06:
            # before: sent ahead of the request; with: right behind it; offered: when its
            # first offer is seen; confirmed: when a confirmation is seen; ended: once it is
            # completed, unmatched or expired.
            cancel = rng.choice(["before", "with", "offered", "offered", "confirmed",
                                 "confirmed", "ended"])
        reqs[rid] = {
            "rid": rid,
            "pos": random_place(rng),
            "needed": 2 if rng.random() < 0.15 else 1,
            # Seconds after sending when the request expires (None: never).
            "expires_in": rng.uniform(2.5, 6.0) * SCALE if rng.random() < 0.04 else None,
            "cancel": cancel,
            "wave": i * WAVES // REQUESTS,
        }
    return vols, reqs


# --------------------------------------------------------------------------------------------
# The simulated volunteer app

class App:
    """Answers offers, completes tasks and cancels requests as the plan and the seed say.

    Every message it sends is counted, so that the final checks know how many answers,
    completions and cancels the daemon must have ignored."""

    def __init__(self, env, seed, vols, reqs):
        self.env, self.seed, self.vols, self.reqs = env, seed, vols, reqs
        self.vids = sorted(vols)
        self.offers = {}        # (rid, vid) -> what the app saw and did about the offer
        self.confirmed = set()  # (rid, vid) confirmations seen
        self.kept = set()       # (rid, vid) confirmed and never completed
        self.cancelled = set()  # rids whose cancel is scheduled or sent
        self.actions = []       # heap of (due time s, seq, topic kind, event, what, offer key)
        self.seq = 0
        self.sent = Counter()   # answers, completions, cancels, requests, strays by kind
        self.expires_at = {}    # rid -> expires_at (ms) of the requests that expire

    def rng(self, key):
        """A random stream for one decision, the same for the same seed whatever the timing."""
        return random.Random("%d/%s" % (self.seed, key))

    def later(self, delay_s, kind, event, what, key=None):
        self.seq += 1
        heapq.heappush(self.actions, (time.time() + delay_s, self.seq, kind, event, what, key))

    def cancel(self, rid, delay_s=0.0):
        if rid not in self.cancelled:
            self.cancelled.add(rid)
            self.later(delay_s, "requests", vdtest.request_cancelled(rid), "cancel")

    # ---- what the app reads

    def on_event(self, ev):
        t, data = ev.get("type"), ev.get("data") or {}
        rid, vid = data.get("request_id"), data.get("volunteer_id")
        if t == OFFERED and (rid, vid) not in self.offers:
            self.on_offer(rid, vid, data)
        elif t == CONFIRMED and (rid, vid) not in self.confirmed:
            self.confirmed.add((rid, vid))
            self.on_confirmed(rid, vid)

    def on_offer(self, rid, vid, data):
        oid, deadline = data["offer_id"], time_ms(data["expires_at"])
        rng = self.rng("offer/%s/%s" % (rid, vid))
        make = {"accept": vdtest.offer_accepted, "decline": vdtest.offer_declined}
        # accept or decline at once, or about when the offer times out (racing with the
        # deadline: either may win), silence, or an answer well after the deadline.
        u = rng.random()
        choice = ("accept" if u < 0.46 else "decline" if u < 0.68 else
                  "edge" if u < 0.76 else "silence" if u < 0.95 else "late")
        rec = {"rid": rid, "vid": vid, "oid": oid, "deadline": deadline, "choice": choice,
               "answer": None, "sent_ms": None, "acked_ms": None}
        self.offers[(rid, vid)] = rec
        if choice in ("accept", "decline", "edge"):
            rec["answer"] = choice if choice in make else rng.choice(list(make))
            if choice == "edge":
                delay = deadline / 1000.0 - time.time() - rng.uniform(0.0, 0.8)
            else:
                delay = rng.uniform(0.0, 0.4)
            answer = make[rec["answer"]](rid, vid, oid)
            self.later(delay, "responses", answer, "answer", (rid, vid))
            if rng.random() < 0.08:  # the same answer again, or the other one, a bit later
                again = (answer if rng.random() < 0.5
                         else make[rng.choice(list(make))](rid, vid, oid))
                self.later(delay + rng.uniform(0.1, 1.5), "responses", again, "stray:again")
        elif choice == "late":
            # An answer after the deadline: it must change nothing.
            rec["answer"] = rng.choice(list(make))
            self.later(deadline / 1000.0 - time.time() + 0.5 * SCALE, "responses",
                       make[rec["answer"]](rid, vid, oid), "answer", (rid, vid))
        if rng.random() < 0.04:  # a made-up offer_id
            bogus = "of-%016x" % rng.getrandbits(64)
            self.later(rng.uniform(0.0, 0.4), "responses",
                       make[rng.choice(list(make))](rid, vid, bogus), "stray:offer_id")
        if rng.random() < 0.04:  # someone else answering this offer
            other = rng.choice([v for v in self.vids if v != vid])
            self.later(rng.uniform(0.0, 0.4), "responses",
                       make[rng.choice(list(make))](rid, other, oid), "stray:volunteer")
        if self.reqs[rid]["cancel"] == "offered":
            self.cancel(rid, rng.uniform(0.0, 0.5))

    def on_confirmed(self, rid, vid):
        rng = self.rng("confirmed/%s/%s" % (rid, vid))
        plan = self.reqs[rid]["cancel"]
        if plan == "confirmed" and rid not in self.cancelled:
            self.cancel(rid, rng.uniform(0.0, 0.5))
            if rng.random() < 0.5:  # and a completion racing with it
                self.later(rng.uniform(0.0, 0.5), "responses", vdtest.task_completed(rid, vid),
                           "complete")
            return
        if len(self.kept) < KEEP_MAX and rng.random() < 0.05:
            self.kept.add((rid, vid))
            return
        self.later(rng.uniform(0.3, 2.0), "responses", vdtest.task_completed(rid, vid),
                   "complete")

    def on_states(self, states):
        """Cancels planned for after the end, once Redis says the request ended."""
        for rid, state in states.items():
            if (self.reqs[rid]["cancel"] == "ended" and rid not in self.cancelled
                    and state in ("completed", "unmatched", "expired")):
                self.cancel(rid, self.rng("ended/" + rid).uniform(0.0, 0.5))

    # ---- what the app sends

    def send_wave(self, wave):
        events = []
        for r in (r for r in self.reqs.values() if r["wave"] == wave):
            rid, extra = r["rid"], {}
            if r["needed"] > 1:
                extra["volunteers_needed"] = r["needed"]
            if r["expires_in"] is not None:
                extra["expires_at"] = vdtest.now_rfc3339(r["expires_in"])
                self.expires_at[rid] = time_ms(extra["expires_at"])
            created = vdtest.request_created(rid, *r["pos"], **extra)
            if r["cancel"] == "before":
                self.cancelled.add(rid)
                events += [vdtest.request_cancelled(rid), created]
                self.sent["cancel"] += 1
            elif r["cancel"] == "with":
                self.cancelled.add(rid)
                events += [created, vdtest.request_cancelled(rid)]
                self.sent["cancel"] += 1
            else:
                events.append(created)
        send_quiet(self.env, "requests", events)
        self.sent["requests topic"] += len(events)
        return sum(1 for e in events if e["type"] == "vd.request.created")

    def send_due(self):
        """Sends every action whose time has come, one batch per topic; returns how many."""
        due, t = [], time.time()
        while self.actions and self.actions[0][0] <= t:
            due.append(heapq.heappop(self.actions))
        for kind in ("responses", "requests"):
            batch = [a for a in due if a[2] == kind]
            if not batch:
                continue
            t_sent = now_ms()
            send_quiet(self.env, kind, [a[3] for a in batch])
            t_acked = now_ms()
            for _, _, _, _, what, key in batch:
                self.sent[what.split(":")[0]] += 1
                if what.startswith("stray"):
                    self.sent[what] += 1
                if key is not None:
                    self.offers[key]["sent_ms"] = t_sent
                    self.offers[key]["acked_ms"] = t_acked
            self.sent[kind + " topic"] += len(batch)
        return len(due)

    def messages_sent(self):
        return VOLUNTEERS + self.sent["requests topic"] + self.sent["responses topic"]


# --------------------------------------------------------------------------------------------
# Reading the end state

def unique_events(events, problems):
    """{id: event} keeping each id's earliest time; an id seen with different data (or type)
    is a problem: a replayed output must say the same as the first one."""
    out = {}
    for e in events:
        first = out.get(e["id"])
        if first is None:
            out[e["id"]] = dict(e, t=time_ms(e["time"]))
            continue
        if first["data"] != e["data"] or first["type"] != e["type"]:
            problems.append("event id %s published with different contents: %s %s / %s %s"
                            % (e["id"], first["type"], first["data"], e["type"], e["data"]))
        first["t"] = min(first["t"], time_ms(e["time"]))
    return out


def request_log(assign, rids, problems):
    """Per request: offered/confirmed/withdrawn/completed/cancelled {vid: event}, the bare
    cancelled event (no volunteer) and the unmatched event."""
    log = {rid: {"offered": {}, "confirmed": {}, "withdrawn": {}, "completed": {},
                 "cancelled": {}, "cancelled_bare": None, "unmatched": None} for rid in rids}
    kinds = {OFFERED: "offered", CONFIRMED: "confirmed", WITHDRAWN: "withdrawn",
             COMPLETED: "completed", CANCELLED: "cancelled"}
    for e in assign.values():
        data, t = e["data"], e["type"]
        rid, vid = data.get("request_id"), data.get("volunteer_id")
        if t not in ASSIGNMENT_TYPES or rid not in log:
            problems.append("unexpected event on the assignments topic: %s %s %s"
                            % (e["id"], t, data))
            continue
        want = "%s/%s" % (rid, {OFFERED: "offered", CONFIRMED: "confirmed",
                                WITHDRAWN: "withdrawn", COMPLETED: "completed",
                                CANCELLED: "cancelled", UNMATCHED: "unmatched"}[t])
        if vid is not None:
            want += "/" + vid
        if e["id"] != want:
            problems.append("event %s has id %s, expected %s" % (t, e["id"], want))
        r = log[rid]
        if t == UNMATCHED:
            r["unmatched"] = e
        elif t == CANCELLED and vid is None:
            r["cancelled_bare"] = e
        else:
            r[kinds[t]][vid] = e
    return log


def redis_dump(env, rids, vids):
    req_recs = env.redis.pipeline([("HGETALL", "vd:req/" + rid) for rid in rids])
    vol_recs = env.redis.pipeline([("HGETALL", "vd:vol/" + vid) for vid in vids])

    def as_dict(flat):
        return dict(zip(flat[0::2], flat[1::2]))
    return ({rid: as_dict(r) for rid, r in zip(rids, req_recs)},
            {vid: as_dict(v) for vid, v in zip(vids, vol_recs)},
            set(env.redis.cmd("ZRANGE", POOL, 0, -1)))


def public(rec):
    """The fields of a request record that the checks look at (for messages)."""
    return {k: rec[k] for k in ("state", "needed", "held", "offers", "tried", "done",
                                "attempts") if rec.get(k)}


# --------------------------------------------------------------------------------------------
# The checks; each returns a list of problems, each naming the request or volunteer

def check_requests(app, log, reqs):
    """1. One end state per request, and the event log agrees with it."""
    problems = []
    for rid, rec in reqs.items():
        r, plan = log[rid], app.reqs[rid]
        state = rec.get("state")
        held, done = split(rec.get("held")), split(rec.get("done"))
        where = "%s (%s)" % (rid, public(rec))
        if state not in END_STATES and state != "confirmed":
            problems.append("%s: not in an end state" % where)
            continue
        if rec.get("offers"):
            problems.append("%s: offers still outstanding" % where)
        # (A request cancelled before it arrived never had its own fields recorded.)
        if rec.get("ev") and int(rec.get("needed") or 0) != plan["needed"]:
            problems.append("%s: needed %s, the request asked for %d"
                            % (where, rec.get("needed"), plan["needed"]))
        if set(held) != set(r["confirmed"]) or len(held) != len(set(held)):
            problems.append("%s: held %s, confirmed events for %s"
                            % (where, held, sorted(r["confirmed"])))
        if set(split(rec.get("tried"))) != set(r["withdrawn"]):
            problems.append("%s: tried %s, withdrawn events for %s"
                            % (where, rec.get("tried"), sorted(r["withdrawn"])))
        if len(r["confirmed"]) > plan["needed"]:
            problems.append("%s: %d confirmations for %d needed"
                            % (where, len(r["confirmed"]), plan["needed"]))
        if state in ("confirmed", "completed") and len(held) != plan["needed"]:
            problems.append("%s: %s with %d of %d volunteers"
                            % (where, state, len(held), plan["needed"]))
        if set(done) != set(r["completed"]):
            problems.append("%s: done %s, completed events for %s"
                            % (where, done, sorted(r["completed"])))
        if state == "completed" and set(done) != set(held):
            problems.append("%s: completed, but not every held volunteer is done" % where)
        alldone = [v for v, e in r["completed"].items() if e["data"].get("all_done")]
        want_alldone = 1 if state == "completed" else 0
        if len(alldone) != want_alldone:
            problems.append("%s: %d completions with all_done, expected %d"
                            % (where, len(alldone), want_alldone))

        un = r["unmatched"]
        if state in ("unmatched", "expired") and un is None:
            problems.append("%s: %s without a vd.request.unmatched event" % (where, state))
        if un is not None:
            d = un["data"]
            if state not in ("unmatched", "expired", "cancelled"):
                problems.append("%s: has %s %s but is %s" % (where, un["id"], d, state))
            # (a partly staffed unmatched or expired request may be cancelled afterwards)
            if state != "cancelled" and (d.get("reason") == "expired") != (state == "expired"):
                problems.append("%s: state %s, unmatched reason %s" % (where, state,
                                                                       d.get("reason")))
            if d.get("reason") not in UNMATCHED_REASONS:
                problems.append("%s: unknown unmatched reason %s" % (where, d.get("reason")))
            if d.get("volunteers_needed") != plan["needed"] or \
                    d.get("volunteers_missing") != plan["needed"] - len(r["confirmed"]):
                problems.append("%s: unmatched says needed %s missing %s; %d needed, %d confirmed"
                                % (where, d.get("volunteers_needed"), d.get("volunteers_missing"),
                                   plan["needed"], len(r["confirmed"])))
            if d.get("volunteers_missing", 0) <= 0:
                problems.append("%s: unmatched with nobody missing: %s" % (where, d))
            declined = [v for v, e in r["withdrawn"].items()
                        if e["data"]["reason"] in ("declined", "timeout")]
            if d.get("reason") != "expired" and \
                    (d.get("reason") == "all_declined") != bool(declined):
                problems.append("%s: unmatched reason %s, declined or timed out: %s"
                                % (where, d.get("reason"), declined))
            if d.get("reason") == "expired":
                exp = app.expires_at.get(rid)
                if exp is None or un["t"] < exp:
                    problems.append("%s: expired at %d, its expires_at is %s"
                                    % (where, un["t"], exp))

        cancelled = r["cancelled"] or r["cancelled_bare"]
        if (state == "cancelled") != bool(cancelled):
            problems.append("%s: state %s, cancelled events %s"
                            % (where, state, sorted(r["cancelled"]) or r["cancelled_bare"]))
        if state == "cancelled":
            if rid not in app.cancelled:
                problems.append("%s: cancelled, but nobody cancelled it" % where)
            # Who the cancel released: its facts in the request's log (f:<n> "cancelled|vid").
            released = [f.split("|", 1)[1] for k, f in rec.items()
                        if k.startswith("f:") and f.startswith("cancelled|") and f != "cancelled|"]
            if set(released) != set(r["cancelled"]):
                problems.append("%s: released %s, cancelled events for %s"
                                % (where, released, sorted(r["cancelled"])))
            if bool(released) == bool(r["cancelled_bare"]):
                problems.append("%s: released %s, yet %s the event without a volunteer"
                                % (where, released, "with" if r["cancelled_bare"] else "without"))
            first_cancel = min(e["t"] for e in list(r["cancelled"].values())
                               + ([r["cancelled_bare"]] if r["cancelled_bare"] else []))
            if un is not None and first_cancel < un["t"]:
                problems.append("%s: cancelled before its unmatched event" % where)
    return problems


def check_volunteers(app, reqs, vols, pool):
    """2. Every volunteer is free (and pooled) or holds exactly one task, of a request that
    holds them."""
    problems = []
    holders = defaultdict(list)  # vid -> requests that say they hold the volunteer
    for rid, rec in reqs.items():
        if rec.get("state") in HOLDING_STATES:
            done = set(split(rec.get("done")))
            for vid in split(rec.get("held")):
                if vid not in done:
                    holders[vid].append(rid)
        for vid in split(rec.get("offers")):
            holders[vid].append(rid)
    for vid, v in vols.items():
        task = v.get("task") or ""
        where = "volunteer %s (%s)" % (vid, {k: v.get(k) for k in ("task", "avail", "pool")})
        if v.get("avail") != "1":
            problems.append("%s: not available any more" % where)
        if len(holders[vid]) > 1:
            problems.append("%s: held by several requests: %s" % (where, holders[vid]))
        if task == "":
            if vid not in pool or v.get("pool") != POOL:
                problems.append("%s: free but not in the pool" % where)
            if holders[vid]:
                problems.append("%s: free, yet %s holds them" % (where, holders[vid]))
        else:
            if vid in pool:
                problems.append("%s: holds %s and is in the pool" % (where, task))
            if holders[vid] != [task]:
                problems.append("%s: task %s, but the requests holding them are %s (task's "
                                "record: %s)" % (where, task, holders[vid],
                                                 public(reqs.get(task, {}))))
            elif (task, vid) not in app.kept:
                problems.append("%s: still holds %s, which the app completed or cancelled"
                                % (where, task))
    stray = pool - set(vols)
    if stray:
        problems.append("unknown members of %s: %s" % (POOL, sorted(stray)))
    return problems


def check_offers(app, log, reqs, vols_by_offer):
    """3. One resolution per offer, fitting the app's answer and its deadline; attempts 1..k
    with k the offers made (an offer of the same request to the same volunteer again would
    repeat an event id with another attempt, or leave Redis counting more attempts); no
    offer once the request has ended or has all its volunteers."""
    problems = []
    for rid, r in log.items():
        plan = app.reqs[rid]
        where = rid
        offered = r["offered"]
        for kind in ("confirmed", "withdrawn", "cancelled", "completed"):
            for vid in set(r[kind]) - set(offered):
                problems.append("%s: %s for %s, who was never offered it" % (where, kind, vid))
        attempts = sorted(e["data"]["attempt"] for e in offered.values())
        if attempts != list(range(1, len(offered) + 1)):
            problems.append("%s: offer attempts %s" % (where, attempts))
        if len(offered) > MAX_OFFERS * plan["needed"]:
            problems.append("%s: %d offers, at most %d allowed"
                            % (where, len(offered), MAX_OFFERS * plan["needed"]))
        if int(reqs[rid].get("attempts") or 0) != len(offered):
            problems.append("%s: attempts %s in Redis, %d offered events"
                            % (where, reqs[rid].get("attempts"), len(offered)))
        # Once the request has ended (or has all its volunteers), no offer is made.
        ends = []
        if r["unmatched"]:
            ends.append(("its unmatched event", r["unmatched"]["t"]))
        cancels = list(r["cancelled"].values()) + \
            ([r["cancelled_bare"]] if r["cancelled_bare"] else [])
        if cancels:
            ends.append(("its cancel", min(e["t"] for e in cancels)))
        if len(r["confirmed"]) >= plan["needed"]:
            ends.append(("its last confirmation", max(e["t"] for e in r["confirmed"].values())))
        for vid, off in offered.items():
            for name, t_end in ends:
                if off["t"] > t_end:
                    problems.append("%s: offered to %s at %d, after %s at %d"
                                    % (where, vid, off["t"], name, t_end))
        exp = app.expires_at.get(rid)
        for vid, off in offered.items():
            d = off["data"]
            deadline = time_ms(d["expires_at"])
            c, w, x = r["confirmed"].get(vid), r["withdrawn"].get(vid), r["cancelled"].get(vid)
            what = "%s: offer to %s (attempt %s, deadline %s)" % (where, vid, d["attempt"],
                                                                 d["expires_at"])
            if not ((c and not w) or (w and not c and not x) or (not c and not w and x)):
                problems.append("%s: resolved by %s" % (what, [k for k, e in
                                (("confirmed", c), ("withdrawn", w), ("cancelled", x)) if e]))
                continue
            if r["completed"].get(vid) and (not c or x):
                problems.append("%s: completed without a confirmation, or also cancelled" % what)
            if deadline > off["t"] + OFFER_TIMEOUT_MS:
                problems.append("%s: deadline more than the offer timeout after the offer (%d)"
                                % (what, off["t"]))
            if exp is not None and deadline > exp:
                problems.append("%s: deadline after the request's expires_at %d" % (what, exp))
            for e in (c, w):
                if e and (e["data"]["offer_id"] != d["offer_id"]
                          or e["data"].get("attempt", d["attempt"]) != d["attempt"]):
                    problems.append("%s: %s carries offer_id %s attempt %s, offered %s"
                                    % (what, e["id"], e["data"]["offer_id"],
                                       e["data"].get("attempt"), d["offer_id"]))
            reason = w["data"]["reason"] if w else None
            if reason not in (None, "declined", "timeout", "expired"):
                problems.append("%s: withdrawn with reason %s" % (what, reason))
            if reason == "timeout" and w["t"] < deadline:
                problems.append("%s: timed out at %d, before its deadline" % (what, w["t"]))
            if reason == "expired" and (exp is None or w["t"] < exp):
                problems.append("%s: withdrawn as expired at %d, expires_at %s"
                                % (what, w["t"], exp))
            vols_by_offer[vid].append((rid, off, c, w, x, r["completed"].get(vid)))
            # What the app did about the offer.
            rec = app.offers.get((rid, vid))
            if rec is None:
                problems.append("%s: the app never saw this offer" % what)
                continue
            # An answer the deadline overtakes (the daemon sees it too late) ends as a timeout.
            outcome = "confirmed" if c else reason if w else "cancelled"
            allowed = {"timeout", "expired", "cancelled"}
            if rec["choice"] != "late" and rec["answer"] is not None:
                allowed.add({"accept": "confirmed", "decline": "declined"}[rec["answer"]])
            if outcome not in allowed:
                answer = rec["choice"] if rec["answer"] is None else (
                    "%s %s, sent at %s, acknowledged at %s" % (rec["choice"], rec["answer"],
                                                               rec["sent_ms"], rec["acked_ms"]))
                problems.append("%s: the app's answer was %s; the outcome %s"
                                % (what, answer, outcome))
            if rec["choice"] == "late" and (rec["sent_ms"] or deadline) < deadline:
                problems.append("%s: the late answer went out before the deadline" % what)
    return problems


def check_timelines(app, vols_by_offer, vols):
    """4. By the event times, a volunteer's offers and tasks never overlap: each lasts from
    its offer to the withdrawal, or the confirmation's completion or cancel (or the end of
    the run). Equal times count as one after the other."""
    problems = []
    for vid, items in vols_by_offer.items():
        spans = []
        for rid, off, c, w, x, done in items:
            if w:
                end = w["t"]
            elif c:
                end = done["t"] if done else x["t"] if x else math.inf
            else:
                end = x["t"]
            if end < off["t"]:
                problems.append("volunteer %s: the offer of %s at %d ended before, at %d"
                                % (vid, rid, off["t"], end))
            spans.append((off["t"], end, rid))
        spans.sort()
        for (s1, e1, r1), (s2, e2, r2) in zip(spans, spans[1:]):
            if s2 < e1:
                problems.append("volunteer %s: offered %s at %d while still held by %s (%d..%s)"
                                % (vid, r2, s2, r1, s1, e1))
        open_ = [r for s, e, r in spans if e == math.inf]
        task = vols[vid].get("task") or ""
        if open_ != ([task] if task else []):
            problems.append("volunteer %s: the event log leaves them held by %s, Redis says "
                            "task %r" % (vid, open_, task))
    return problems


def check_metrics(app, m, log, reqs, assign, notes):
    """5. The counters agree with the event log; every notification belongs to an assignment
    event, and each of those has its notifications."""
    problems = []
    every = defaultdict(list)
    for r in log.values():
        for kind in ("offered", "confirmed", "withdrawn", "completed"):
            every[kind] += r[kind].values()
    by_reason = Counter(e["data"]["reason"] for e in every["withdrawn"])
    unmatched = Counter(r["unmatched"]["data"]["reason"] for r in log.values() if r["unmatched"])
    states = Counter(rec.get("state") for rec in reqs.values())
    n_declined = by_reason["declined"]
    expect = {
        'vd_offers_made_total': len(every["offered"]),
        'vd_offers_resolved_total{result="accepted"}': len(every["confirmed"]),
        'vd_offers_resolved_total{result="declined"}': n_declined,
        'vd_offers_resolved_total{result="timed_out"}': by_reason["timeout"],
        'vd_offers_resolved_total{result="expired"}': by_reason["expired"],
        "vd_confirmed_total": len(every["confirmed"]),
        "vd_completed_total": len(every["completed"]),
        "vd_cancelled_total": states["cancelled"],
        "vd_rejected_total": 0,
        # Every answer that did not confirm or decline an outstanding offer, every completion
        # that completed nothing and every cancel of a request that had already ended.
        "vd_ignored_responses_total":
            (app.sent["answer"] + app.sent["stray"] - len(every["confirmed"]) - n_declined)
            + (app.sent["complete"] - len(every["completed"]))
            + (app.sent["cancel"] - states["cancelled"]),
    }
    for reason in UNMATCHED_REASONS:
        expect['vd_unmatched_total{reason="%s"}' % reason] = unmatched[reason]
    for series, want in expect.items():
        got = m.get(series)
        if got != want:
            problems.append("metric %s is %s, the event log says %s" % (series, got, want))

    # Notifications: exactly those the assignment events call for.
    want_notes = {}
    for e in assign.values():
        d, t = e["data"], e["type"]
        rid, vid = d.get("request_id"), d.get("volunteer_id")
        if t == OFFERED:
            want_notes["%s/notify-offer/%s" % (rid, vid)] = ("vd.notify.volunteer", "offer")
        elif t == CONFIRMED:
            want_notes["%s/notify-volunteer/%s" % (rid, vid)] = ("vd.notify.volunteer", "assigned")
            want_notes["%s/notify-resident/%s" % (rid, vid)] = ("vd.notify.resident",
                                                                "volunteer_confirmed")
        elif t == WITHDRAWN and d["reason"] != "declined":
            want_notes["%s/notify-withdrawn/%s" % (rid, vid)] = ("vd.notify.volunteer",
                                                                 "offer_withdrawn")
        elif t == CANCELLED and vid is not None:
            want_notes["%s/notify-withdrawn/%s" % (rid, vid)] = ("vd.notify.volunteer",
                                                                 "withdrawn")
        elif t == UNMATCHED:
            want_notes["%s/notify-coordinator" % rid] = ("vd.notify.coordinator", "unmatched")
    got_notes = {i: (e["type"], e["data"].get("kind")) for i, e in notes.items()}
    for i in sorted(set(want_notes) | set(got_notes)):
        if want_notes.get(i) != got_notes.get(i):
            problems.append("notification %s: expected %s, published %s"
                            % (i, want_notes.get(i), got_notes.get(i)))
    return problems


# --------------------------------------------------------------------------------------------
# The test

def test_random_offer_answers_end_consistent():
    seed = int(os.environ.get("VD_PROPERTY_SEED") or random.SystemRandom().randrange(1 << 31))
    vdtest.log("seed %d (replay with VD_PROPERTY_SEED=%d)" % (seed, seed))
    vols_plan, reqs_plan = make_plan(seed)
    t_start = time.monotonic()
    with vdtest.Env() as env:
        listen, _ = vdtest.listen_config()
        d = env.daemon({"http.listen": listen, "matching.offer_timeout_ms": OFFER_TIMEOUT_MS,
                        "matching.max_offers": MAX_OFFERS, "matching.max_tasks_per_day": 100,
                        "log.level": "info"})
        env.send("volunteers", [vdtest.volunteer_available(vid, *pos)
                                for vid, pos in sorted(vols_plan.items())])
        env.wait_for(lambda: env.redis.cmd("ZCARD", POOL) == VOLUNTEERS, timeout=60 * SCALE,
                     interval=0.2, what="%d volunteers pooled" % VOLUNTEERS)

        app = App(env, seed, vols_plan, reqs_plan)
        tail = Tail(env, "assignments")
        try:
            run(env, d, app, tail)
        finally:
            tail.close()
        t_run = time.monotonic() - t_start

        # Everything as it ended: the whole event log, Redis, the counters.
        rids, vids = sorted(reqs_plan), sorted(vols_plan)
        problems = {}
        p = problems["event log"] = []
        assign = unique_events(env.events("assignments", timeout=30), p)
        notes = unique_events(env.events("notifications", timeout=30), p)
        p += ["dead letter: %s" % e["data"] for e in env.events("deadletter", timeout=10)]
        reqs, vols, pool = redis_dump(env, rids, vids)
        m = metrics(d)
        # Only the tasks the app keeps are still due (their task timeout, hours ahead).
        kept = {rid for rid, _ in app.kept}
        due = env.redis.cmd("ZRANGE", DUE, 0, -1, "WITHSCORES")
        stray = [(rid, at) for rid, at in zip(due[0::2], due[1::2])
                 if rid not in kept or float(at) < time.time() * 1000 + 3600 * 1000]
        if stray:
            p.append("%s still holds %s" % (DUE, stray))
        log = request_log(assign, rids, p)

        vols_by_offer = defaultdict(list)
        problems["1. requests"] = check_requests(app, log, reqs)
        problems["2. volunteers"] = check_volunteers(app, reqs, vols, pool)
        problems["3. offers"] = check_offers(app, log, reqs, vols_by_offer)
        problems["4. timelines"] = check_timelines(app, vols_by_offer, vols)
        problems["5. metrics and notifications"] = check_metrics(app, m, log, reqs, assign, notes)

        summarize(app, log, reqs, vols, m, t_run)
        failed = {k: v for k, v in problems.items() if v}
        details = "".join("\n%s: %d problem(s)\n  %s" % (k, len(v), "\n  ".join(v[:8]))
                          for k, v in failed.items())
        assert not failed, "%d problem(s) in %s; seed %d (VD_PROPERTY_SEED=%d replays it)%s" % (
            sum(map(len, failed.values())), ", ".join(failed), seed, seed, details)


def run(env, d, app, tail):
    """The app's loop: sends the waves, reads new assignment events and reacts, sends what is
    due, until every request has settled and the daemon is idle."""
    rids_sent = []
    wave, last_wave = 0, 0.0
    t_end = time.monotonic() + 200 * SCALE
    t_report = time.monotonic()
    states = {}
    while True:
        for ev in tail.new():
            app.on_event(ev)
        if rids_sent:
            states = dict(zip(rids_sent, env.redis.pipeline(
                [("HGET", "vd:req/" + rid, "state") for rid in rids_sent])))
            app.on_states(states)
        busy = sum(1 for s in states.values() if s not in END_STATES and s != "confirmed")
        pooled = env.redis.cmd("ZCARD", POOL)
        # The next wave once the last one has mostly settled and volunteers are free again
        # (or after a while whatever the state: the checks hold under contention too).
        since = time.monotonic() - last_wave
        if wave < WAVES and (wave == 0 or (since > 2 and busy <= 25 and pooled >= 100)
                             or since > 20 * SCALE):
            n = app.send_wave(wave)
            rids_sent += [r for r, p in app.reqs.items() if p["wave"] == wave]
            vdtest.log("wave %d: %d requests (busy before: %d, pooled: %d)"
                       % (wave, n, busy, pooled))
            wave, last_wave = wave + 1, time.monotonic()
            continue
        sent = app.send_due()
        if time.monotonic() - t_report > 10:
            t_report = time.monotonic()
            vdtest.log("progress: %s; pooled %d; offers seen %d; actions pending %d"
                       % (dict(Counter(states.values())), pooled, len(app.offers),
                          len(app.actions)))
        if wave == WAVES and not app.actions and busy == 0 and settled(env, d, app, rids_sent):
            vdtest.log("settled: every request ended, the daemon idle, nothing due")
            return
        if time.monotonic() > t_end:
            stuck = [rid for rid in rids_sent if states.get(rid) not in END_STATES][:10]
            recs, _, _ = redis_dump(env, stuck, [])
            stuck = [(rid, public(recs[rid])) for rid in stuck]
            raise AssertionError("not settled after %.0fs: %s; pending actions %d; "
                                 "first requests not ended: %s"
                                 % (200 * SCALE, dict(Counter(states.values())),
                                    len(app.actions), stuck))
        if not sent:
            time.sleep(0.1)


def settled(env, d, app, rids):
    """True when every confirmed volunteer still holding a task is one the app keeps, the
    daemon has consumed everything sent and is idle, and nothing is due in Redis but the
    kept tasks' timeouts."""
    recs = env.redis.pipeline([("HMGET", "vd:req/" + rid, "state", "held", "done", "offers")
                               for rid in rids])
    for rid, (state, held, done, offers) in zip(rids, recs):
        if offers:
            return False
        if state in HOLDING_STATES:
            for vid in set(split(held)) - set(split(done)):
                if (rid, vid) not in app.kept:
                    return False
    m = metrics(d)
    # Due: only requests whose kept volunteers' tasks may still time out (in hours).
    due = set(env.redis.cmd("ZRANGE", DUE, 0, -1))
    return (m.get("vd_consumed_total", 0) >= app.messages_sent()
            and m.get("vd_jobs_in_memory") == 0 and m.get("vd_outputs_unacked") == 0
            and due <= {rid for rid, _ in app.kept})


def summarize(app, log, reqs, vols, m, t_run):
    states = Counter(rec.get("state") for rec in reqs.values())
    withdrawn = Counter(e["data"]["reason"] for r in log.values() for e in r["withdrawn"].values())
    unmatched = Counter(r["unmatched"]["data"]["reason"] for r in log.values() if r["unmatched"])
    choices = Counter(rec["choice"] for rec in app.offers.values())
    # Answers sent in time that the deadline overtook (the daemon saw them too late): how
    # long before the deadline Kafka had them, in ms.
    overtaken = sorted(rec["deadline"] - rec["acked_ms"]
                       for (rid, vid), rec in app.offers.items()
                       if rec["choice"] in ("accept", "decline") and rec["acked_ms"]
                       and (log[rid]["withdrawn"].get(vid) or {}).get("data", {}).get("reason")
                       == "timeout")
    edge = Counter("confirmed" if vid in log[rid]["confirmed"] else
                   (log[rid]["withdrawn"].get(vid) or {}).get("data", {}).get("reason", "cancelled")
                   for (rid, vid), rec in app.offers.items() if rec["choice"] == "edge")
    vdtest.log("summary: %d requests (%d needing 2), %d volunteers, %.1fs"
               % (len(reqs), sum(1 for r in app.reqs.values() if r["needed"] == 2),
                  len(vols), t_run))
    vdtest.log("  end states: %s" % dict(states))
    vdtest.log("  offers: %d (app: %s); confirmed %d, withdrawn %s; completed %d"
               % (sum(len(r["offered"]) for r in log.values()), dict(choices),
                  sum(len(r["confirmed"]) for r in log.values()), dict(withdrawn),
                  sum(len(r["completed"]) for r in log.values())))
    vdtest.log("  answers the deadline overtook: %d (acknowledged by Kafka %s ms before it)"
               % (len(overtaken), overtaken[:10]))
    vdtest.log("  answers racing with the deadline ended: %s" % dict(edge))
    vdtest.log("  unmatched by reason: %s" % dict(unmatched))
    vdtest.log("  sent: %s" % dict(app.sent))
    vdtest.log("  busy volunteers at the end: %d (kept %d)"
               % (sum(1 for v in vols.values() if v.get("task")), len(app.kept)))
    vdtest.log("  metrics: ignored %s, replays %s, due runs %s"
               % (m.get("vd_ignored_responses_total"), m.get("vd_replays_total"),
                  m.get("vd_due_runs_total")))


if __name__ == "__main__":
    vdtest.main(globals())
