"""Integration tests of bad input: every malformed or invalid message goes to the dead-letter
topic exactly once, with an error naming the field and the original bytes, while the good
events around it are served as usual; the daemon neither crashes nor stalls, and it commits
past bad input so that a restart does not dead-letter anything again.

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_input.py [test names]
"""

import copy
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402
from vdtest import metrics  # noqa: E402

LAT, LON = vdtest.HOHHOT
INPUT_KINDS = ("requests", "volunteers", "responses")
PAYLOAD_MAX = 4096


# --------------------------------------------------------------------------------------------
# Helpers

def compact(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def expected_payload(raw):
    """The dead letter's payload for raw message bytes: the bytes as text, every byte that is
    not part of a valid UTF-8 sequence replaced by '?', cut on a character boundary at
    PAYLOAD_MAX bytes. Returns (text, truncated)."""
    raw = raw or b""
    out, size, i, n = [], 0, 0, len(raw)
    while i < n:
        b = raw[i]
        if b < 0x80:
            ln = 1
        elif 0xC2 <= b <= 0xDF:
            ln = 2
        elif 0xE0 <= b <= 0xEF:
            ln = 3
        elif 0xF0 <= b <= 0xF4:
            ln = 4
        else:
            ln = 0
        ch = None
        if ln and i + ln <= n:
            try:
                ch = raw[i:i + ln].decode("utf-8")
            except UnicodeDecodeError:
                ch = None
        if ch is None:
            ch, ln = "?", 1
        if size + ln > PAYLOAD_MAX:
            break
        out.append(ch)
        size += ln
        i += ln
    return "".join(out), n > PAYLOAD_MAX


def input_positions(env, kind, min_count):
    """{key: (topic, partition, offset)} of the messages keyed "bad-..." on an input topic."""
    msgs = env.kafka.consume(kind, timeout=30, min_count=min_count)
    assert len(msgs) >= min_count, "%s holds %d messages, expected %d" % (
        kind, len(msgs), min_count)
    pos = {}
    for m in msgs:
        if (m["key"] or "").startswith("bad-"):
            assert m["key"] not in pos, "key %s produced twice on %s" % (m["key"], kind)
            pos[m["key"]] = (m["topic"], m["partition"], m["offset"])
    return pos


def dead_letters(env, min_count, timeout=60):
    """Consumes the dead-letter topic; returns (messages, events), events parsed from JSON."""
    msgs = env.kafka.consume("deadletter", timeout=timeout, min_count=min_count)
    return msgs, [json.loads(m["value_bytes"]) for m in msgs]


def outputs(env, kind, min_count=0, timeout=10):
    return env.events(kind, timeout=timeout, min_count=min_count)


def by_type(events, type_):
    return [e for e in events if e.get("type") == type_]


def assert_healthy(d):
    """The daemon still runs and logged nothing at error level, nor any sign of a crash."""
    assert d.running(), "the daemon exited with %s" % d.returncode
    errors = d.find_log(level="error")
    assert not errors, "error-level log lines: %s" % [e.get("msg") for e in errors[:5]]
    text = d.log_text()
    for word in ("Segmentation", "AddressSanitizer", "Assertion", "abort", "core dumped",
                 "stack overflow"):
        assert word not in text, "the daemon log mentions %r" % word


# --------------------------------------------------------------------------------------------
# The bad messages

def _req(rid, **extra):
    return vdtest.request_created(rid, *vdtest.offset_m(LAT, LON, 50, 50), **extra)


def _vol(vid, **extra):
    return vdtest.volunteer_available(vid, *vdtest.offset_m(LAT, LON, 30, -30), **extra)


def _without(ev, attr):
    ev = copy.deepcopy(ev)
    del ev[attr]
    return compact(ev)


def _with(ev, **attrs):
    ev = copy.deepcopy(ev)
    ev.update(attrs)
    return compact(ev)


def _with_data(ev, **fields):
    ev = copy.deepcopy(ev)
    ev["data"].update(fields)
    return compact(ev)


def _sized(ev, total, mb_at=None):
    """ev as JSON with a "pad" attribute that makes it exactly `total` bytes; with mb_at, a
    3-byte character starts at byte offset mb_at (so a 4096-byte cut falls inside it)."""
    ev = copy.deepcopy(ev)
    ev["pad"] = ""
    base = compact(ev)
    head, tail = base[:-2], base[-2:]  # ...,"pad":"  +  "}
    fill = total - len(base)
    assert fill > 10
    if mb_at is None:
        pad = b"a" * fill
    else:
        k = mb_at - len(head)
        assert 0 <= k and k + 3 <= fill
        pad = b"a" * k + "\u547c".encode("utf-8") + b"b" * (fill - k - 3)
    out = head + pad + tail
    assert len(out) == total, len(out)
    return out


def _replace(ev, old, new):
    raw = compact(ev)
    assert raw.count(old) == 1, (old, raw)
    return raw.replace(old, new)


def bad_cases():
    """(name, topic kind, value bytes or None, substring the error must contain)."""
    r = lambda n, **kw: _req("rq-bad-" + n, **kw)  # noqa: E731
    v = lambda n, **kw: _vol("vol-bad-" + n, **kw)  # noqa: E731
    cases = []

    def add(name, kind, value, err):
        cases.append((name, kind, value, err))

    # Bytes that are not exactly one JSON object.
    add("empty", "requests", b"", "message: empty")
    add("null_value", "volunteers", None, "message: empty")
    add("whitespace", "responses", b" \n\t  \r\n ", "message: not valid JSON")
    add("truncated", "requests", compact(r("truncated"))[:-7], "message: not valid JSON")
    add("trailing_bytes", "requests", compact(r("trailing")) + b" xyz",
        "message: not valid JSON: end of file expected")
    add("two_objects", "volunteers", compact(v("two-a")) + compact(v("two-b")),
        "message: not valid JSON: end of file expected")
    add("top_level_array", "requests", b"[" + compact(r("array")) + b"]",
        "message: must be a JSON object")
    add("top_level_string", "responses", b'"vd.task.completed"', "message: not valid JSON")
    add("top_level_number", "requests", b"42", "message: not valid JSON")
    add("duplicate_keys", "requests",
        b'{"id":"dup-1",' + compact(r("dup"))[1:], "message: not valid JSON: duplicate object key")
    add("duplicate_keys_in_data", "volunteers",
        _replace(v("dup-data"), b'"skills":[]', b'"skills":[],"skills":["x"]'),
        "message: not valid JSON: duplicate object key")
    add("nan", "volunteers", _replace(v("nan", team="t-nan"), b'"t-nan"', b"NaN"),
        "message: not valid JSON")
    add("infinity", "requests", _replace(r("inf", max_distance_m=4321), b"4321", b"Infinity"),
        "message: not valid JSON")
    add("number_overflow", "requests", _replace(r("1e999", max_distance_m=4321), b"4321", b"1e999"),
        "message: not valid JSON: real number overflow")
    add("invalid_utf8", "requests",
        _replace(r("utf8"), b'"source":"/vdtest"', b'"source":"/vd\xff\xfe\xe4\xb8test"'),
        "message: not valid JSON")
    add("depth_9", "requests", _with(r("depth9"), ext=[[[[[[[[1]]]]]]]]),
        "message: nesting deeper than 8")
    deep = compact(r("depth5000"))
    add("depth_5000", "requests", deep[:-1] + b',"ext":' + b"[" * 5000 + b"]" * 5000 + b"}",
        "message: nesting deeper than 8")
    add("size_70k", "requests", _sized(r("70k"), 70 * 1024, mb_at=PAYLOAD_MAX - 1),
        "message: 71680 bytes exceeds the 65536-byte limit")
    add("size_1m", "volunteers", _sized(v("1m"), 1024 * 1024),
        "message: 1048576 bytes exceeds the 65536-byte limit")
    add("size_65537", "requests", _sized(r("65537"), 64 * 1024 + 1),
        "message: 65537 bytes exceeds the 65536-byte limit")
    for size in (PAYLOAD_MAX, PAYLOAD_MAX + 1):  # the largest payload kept whole, and one more
        ev = r("p%d" % size)
        ev["data"]["location"]["lat"] = 91
        add("payload_%d_bytes" % size, "requests", _sized(ev, size),
            "data.location.lat: 91 is out of range [-85.05112878, 85.05112878]")
    junk = bytes(random.Random(20261129).randrange(1, 256) for _ in range(777))
    add("binary_junk", "responses", b"\x8b" + junk, "message: not valid JSON")

    # The envelope.
    for attr, kind in (("specversion", "requests"), ("type", "volunteers"),
                       ("source", "responses"), ("id", "requests"), ("time", "volunteers"),
                       ("datacontenttype", "requests"), ("data", "responses")):
        base = vdtest.task_completed("rq-bad-miss", "vol-bad-miss") if kind == "responses" else \
            v("miss-" + attr) if kind == "volunteers" else r("miss-" + attr)
        add("missing_" + attr, kind, _without(base, attr),
            'message: missing required attribute "%s"' % attr)
    add("specversion_0_3", "requests", _with(r("spec"), specversion="0.3"),
        'specversion: must be "1.0"')
    add("unknown_type", "requests", _with(r("unknown"), type="vd.request.updated"),
        'type: unknown event type "vd.request.updated"')
    add("output_type_on_input", "responses",
        _with(vdtest.task_completed("rq-bad-out", "v1"), type="vd.assignment.confirmed"),
        'type: unknown event type "vd.assignment.confirmed"')
    add("request_type_on_volunteers", "volunteers", compact(r("on-vol")),
        'type: "vd.request.created" does not belong on the volunteers topic')
    add("volunteer_type_on_requests", "requests", compact(v("on-req")),
        'type: "vd.volunteer.available" does not belong on the requests topic')
    add("response_type_on_requests", "requests",
        compact(vdtest.task_completed("rq-bad-resp", "vol-bad-resp")),
        'type: "vd.task.completed" does not belong on the requests topic')
    add("volunteer_type_on_responses", "responses", compact(v("on-resp")),
        'type: "vd.volunteer.available" does not belong on the responses topic')
    add("bad_time", "requests", _with(r("time"), time="yesterday"),
        'time: "yesterday" is not an RFC 3339 timestamp')
    add("time_without_offset", "volunteers", _with(v("time2"), time="2026-11-29T08:00:00"),
        'time: "2026-11-29T08:00:00" is not an RFC 3339 timestamp')
    add("datacontenttype_xml", "requests", _with(r("dct"), datacontenttype="text/xml"),
        'datacontenttype: must be "application/json"')
    add("data_not_object", "requests", _with(r("data"), data="rq-bad-data"),
        "data: must be an object")

    # The data.
    ev = r("no-service")
    del ev["data"]["service"]
    add("missing_service", "requests", compact(ev), 'data: missing required field "service"')
    ev = v("no-lang")
    del ev["data"]["languages"]
    add("missing_languages", "volunteers", compact(ev), 'data: missing required field "languages"')
    ev = vdtest.task_completed("rq-bad-novol", "x")
    del ev["data"]["volunteer_id"]
    add("missing_volunteer_id", "responses", compact(ev),
        'data: missing required field "volunteer_id"')
    ev = vdtest.offer_accepted("rq-bad-nooffer", "vol-bad-x", "of-1")
    del ev["data"]["offer_id"]
    add("missing_offer_id", "responses", compact(ev), 'data: missing required field "offer_id"')
    add("lat_91", "volunteers", _with_data(v("lat91"), location={"lat": 91, "lon": LON}),
        "data.location.lat: 91 is out of range [-85.05112878, 85.05112878]")
    add("lon_minus_181", "requests", _with_data(r("lon"), location={"lat": LAT, "lon": -181}),
        "data.location.lon: -181 is out of range [-180, 180]")
    add("lat_string", "requests", _with_data(r("latstr"), location={"lat": "40.84", "lon": LON}),
        "data.location.lat: must be a number")
    add("id_with_space", "volunteers", _with_data(v("space"), volunteer_id="vol bad"),
        'data.volunteer_id: "vol bad" is not a valid ID')
    add("id_65_chars", "requests", _with_data(r("long"), request_id="r" * 65),
        "data.request_id: ")
    add("skills_33", "volunteers", _with_data(v("skills"), skills=["s%d" % i for i in range(33)]),
        "data.skills: 33 entries exceed the limit of 32")
    add("skill_not_string", "requests", _with_data(r("skill"), skills=["first_aid", 7]),
        "data.skills[1]: must be a string")
    add("priority_asap", "requests", _with_data(r("prio"), priority="asap"),
        'data.priority: "asap" is not one of urgent, high, normal, low')
    add("volunteers_needed_0", "requests", _with_data(r("vn0"), volunteers_needed=0),
        "data.volunteers_needed: 0 is out of range [1, 10]")
    add("volunteers_needed_11", "requests", _with_data(r("vn11"), volunteers_needed=11),
        "data.volunteers_needed: 11 is out of range [1, 10]")
    add("volunteers_needed_2_5", "requests", _with_data(r("vn25"), volunteers_needed=2.5),
        "data.volunteers_needed: must be an integer")
    add("max_distance_0", "requests", _with_data(r("maxd"), max_distance_m=0),
        "data.max_distance_m: 0 is out of range [1, 100000]")
    add("expires_before_not_before", "requests",
        _with_data(r("exp"), not_before="2030-01-02T10:00:00Z", expires_at="2030-01-02T09:00:00Z"),
        "data.expires_at: must be later than data.not_before")
    add("vulnerability_age_minus_1", "requests",
        _with_data(r("age"), vulnerability={"age": -1, "lives_alone": True}),
        "data.vulnerability.age: -1 is out of range [0, 150]")
    add("cancel_empty_request_id", "requests",
        compact(vdtest.cloudevent("vd.request.cancelled", {"request_id": ""})),
        'data.request_id: "" is not a valid ID')
    return cases


# --------------------------------------------------------------------------------------------
# Tests

def _interleave(good, bad):
    """good and bad items alternating (the longer list's rest at the end)."""
    out = []
    for i in range(max(len(good), len(bad))):
        if i < len(bad):
            out.append(bad[i])
        if i < len(good):
            out.append(good[i])
    return out


def _check_dead_letter(msg, ev, name, raw, err_sub, where):
    topic, partition, offset = where
    data = ev.get("data") or {}
    want_id = "deadletter/%s/%d/%d" % (topic, partition, offset)
    assert ev.get("type") == "vd.input.rejected", "%s: type %r" % (name, ev.get("type"))
    assert ev.get("id") == want_id, "%s: id %r, expected %r" % (name, ev.get("id"), want_id)
    assert msg["key"] == want_id, "%s: key %r, expected %r" % (name, msg["key"], want_id)
    assert ev.get("specversion") == "1.0" and ev.get("source") and ev.get("time"), name
    assert (data.get("topic"), data.get("partition"), data.get("offset")) == where, \
        "%s: dead letter names %r, the input was at %r" % (
            name, (data.get("topic"), data.get("partition"), data.get("offset")), where)
    error = data.get("error")
    assert isinstance(error, str) and err_sub in error, \
        "%s: error %r does not contain %r" % (name, error, err_sub)
    assert "\n" not in error and len(error) < 400, "%s: error is not one short sentence: %r" % (
        name, error)
    want_payload, want_trunc = expected_payload(raw)
    got = data.get("payload")
    assert got == want_payload, "%s: payload differs (got %d chars %r..., expected %d %r...)" % (
        name, len(got or ""), (got or "")[:80], len(want_payload), want_payload[:80])
    assert data.get("truncated") is want_trunc, "%s: truncated=%r, expected %r" % (
        name, data.get("truncated"), want_trunc)


def test_bad_input_interleaved_with_good():
    cases = bad_cases()
    names = [c[0] for c in cases]
    assert len(set(names)) == len(names) and len(cases) >= 35, len(cases)
    listen, port = vdtest.listen_config()
    with vdtest.Env() as env:
        d = env.daemon({"http.listen": listen})
        bad = {k: [] for k in INPUT_KINDS}  # kind -> [(key, value)]
        case_by_key = {}
        for name, kind, value, err in cases:
            key = "bad-" + name
            bad[kind].append((key, value))
            case_by_key[key] = (name, kind, value, err)
        vdtest.log("%d bad messages: %s" % (len(cases), ", ".join(
            "%s %d" % (k, len(bad[k])) for k in INPUT_KINDS)))

        # Volunteers first: ten around the centre, one whose extra attribute is nested exactly
        # 8 deep and one of exactly 64 KiB (both at the limit, accepted), and a move.
        vols = ["vol-in-%d" % i for i in range(10)]
        good_vol = [vdtest.volunteer_available(v, *vdtest.offset_m(LAT, LON, 40 * i, -25 * i),
                                               skills=("first_aid",) if i % 2 else ())
                    for i, v in enumerate(vols)]
        deep_ok = vdtest.volunteer_available("vol-in-deep", *vdtest.offset_m(LAT, LON, 80, 80))
        deep_ok["ext"] = [[[[[[[1]]]]]]]
        good_vol.append(deep_ok)
        good_vol.append(("vol-in-64k", _sized(vdtest.volunteer_available(
            "vol-in-64k", *vdtest.offset_m(LAT, LON, -80, -80)), 64 * 1024)))
        good_vol.append(vdtest.volunteer_location("vol-in-3", *vdtest.offset_m(LAT, LON, -60, 10)))
        env.send("volunteers", _interleave(good_vol, bad["volunteers"]))
        env.wait_for(lambda: env.redis.cmd("ZCARD", "vd:pool/city") == 12, timeout=30,
                     what="12 volunteers in the city pool")
        env.wait_for(lambda: (env.redis.cmd("HGET", "vd:vol/vol-in-3", "lat") or "").startswith(
            "40.841"), timeout=30, what="the location event after bad input applied")

        # Requests: eight good ones between the bad ones; each must be confirmed.
        reqs = ["rq-in-%d" % i for i in range(8)]
        good_req = [vdtest.request_created(r, *vdtest.offset_m(LAT, LON, 20 * i, 30 * i),
                                           priority=("urgent", "normal")[i % 2])
                    for i, r in enumerate(reqs)]
        env.send("requests", _interleave(good_req, bad["requests"]))

        def confirmed_all():
            evs = by_type(outputs(env, "assignments", timeout=5), "vd.assignment.confirmed")
            got = {e["data"]["request_id"]: e["data"]["volunteer_id"] for e in evs}
            return got if set(reqs) <= set(got) else None
        held = env.wait_for(confirmed_all, timeout=60, interval=0.5,
                            what="every good request confirmed")
        assert len(set(held[r] for r in reqs)) == len(reqs), "a volunteer held twice: %s" % held

        # Responses: completions of four of them and a stray offer answer, between bad ones.
        done = reqs[:4]
        good_resp = [vdtest.task_completed(r, held[r]) for r in done]
        good_resp.append(vdtest.offer_declined(reqs[5], held[reqs[5]], "of-0000000000000000"))
        env.send("responses", _interleave(good_resp, bad["responses"]))
        env.wait_for(lambda: len(by_type(outputs(env, "assignments", timeout=5),
                                         "vd.request.completed")) >= len(done),
                     timeout=60, interval=0.5, what="the completions")

        # Where each bad message landed.
        where = {}
        for kind in INPUT_KINDS:
            n = sum(1 for c in cases if c[1] == kind)
            goods = {"volunteers": good_vol, "requests": good_req, "responses": good_resp}[kind]
            pos = input_positions(env, kind, n + len(goods))
            for key in case_by_key:
                if case_by_key[key][1] == kind:
                    assert key in pos, "%s not found on %s" % (key, kind)
                    where[key] = pos[key]

        msgs, dls = dead_letters(env, len(cases))
        time.sleep(2)  # anything more would be a duplicate or a good message dead-lettered
        msgs, dls = dead_letters(env, len(cases))
        at = {}
        for m, ev in zip(msgs, dls):
            data = ev.get("data") or {}
            at.setdefault((data.get("topic"), data.get("partition"), data.get("offset")),
                          []).append((m, ev))
        missing = [case_by_key[k][0] for k in where if where[k] not in at]
        assert not missing, "no dead letter for %d bad message(s): %s" % (len(missing), missing)
        dup = {w: len(x) for w, x in at.items() if len(x) > 1}
        assert not dup, "several dead letters for one input: %s" % dup
        extra = set(at) - set(where.values())
        assert not extra, "dead letters for inputs that were valid: %s" % [
            at[w][0][1]["data"]["error"] for w in extra]
        failures = []
        for key, w in where.items():
            name, kind, value, err = case_by_key[key]
            try:
                _check_dead_letter(at[w][0][0], at[w][0][1], name, value, err, w)
            except AssertionError as e:
                failures.append(str(e))
        assert not failures, "%d bad dead letter(s):\n  %s" % (len(failures), "\n  ".join(failures))
        vdtest.log("%d dead letters checked" % len(where))

        # The good traffic is intact: one outcome per request, nothing unmatched.
        out = outputs(env, "assignments")
        conf = by_type(out, "vd.assignment.confirmed")
        for r in reqs:
            n = sum(1 for e in conf if e["data"]["request_id"] == r)
            assert n == 1, "%s has %d confirmed events" % (r, n)
        assert not by_type(out, "vd.request.unmatched"), "unmatched: %s" % by_type(
            out, "vd.request.unmatched")
        comp = by_type(out, "vd.request.completed")
        assert sorted(e["data"]["request_id"] for e in comp) == sorted(done), comp
        for r in done:
            assert env.redis.cmd("ZSCORE", "vd:pool/city", held[r]) is not None, \
                "%s is not back in the pool after completing %s" % (held[r], r)
        m = metrics(port)
        assert m["vd_rejected_total"] == len(cases), "vd_rejected_total %s" % m["vd_rejected_total"]
        assert m["vd_ignored_responses_total"] == 1, m["vd_ignored_responses_total"]
        assert_healthy(d)

        # Restart with the same group: bad input was committed past, nothing comes back.
        assert d.stop() == 0, "graceful stop exited with %s" % d.returncode
        assert not d.find_log(level="error"), d.find_log(level="error")
        d.start()
        d.wait_ready()
        markers = 0
        for kind in INPUT_KINDS:
            for p in range(vdtest.DEFAULT_TOPICS[env.kafka.topic(kind)]):
                env.send(kind, [("marker-%s-%d" % (kind, p), b"after restart")], partition=p)
                markers += 1
        msgs2, dls2 = dead_letters(env, len(cases) + markers)
        time.sleep(2)
        msgs2, dls2 = dead_letters(env, len(cases) + markers)
        keys = [(e["data"]["topic"], e["data"]["partition"], e["data"]["offset"]) for e in dls2]
        again = sorted({k for k in keys if keys.count(k) > 1})
        assert not again, "dead-lettered again after the restart: %s" % again
        assert len(dls2) == len(cases) + markers, "%d dead letters, expected %d" % (
            len(dls2), len(cases) + markers)
        m2 = metrics(port)
        assert m2["vd_consumed_total"] == markers, \
            "the restarted daemon consumed %d messages; only the %d new ones were expected" % (
                m2["vd_consumed_total"], markers)
        out2 = outputs(env, "assignments")
        assert len(out2) == len(out), "outputs repeated after the restart: %d -> %d" % (
            len(out), len(out2))
        assert_healthy(d)


def _flood_bad(i):
    """A cheap bad message, one of several kinds by i (every 250th is 70 KiB)."""
    rid = "rq-flood-bad-%d" % i
    k = i % 8
    if i % 250 == 0:
        return _sized(_req(rid), 70 * 1024)
    if k == 0:
        return b""
    if k == 1:
        return b"{not json %d" % i
    if k == 2:
        return _with_data(_req(rid), location={"lat": 91, "lon": LON})
    if k == 3:
        return _with(_req(rid), specversion="0.3")
    if k == 4:
        return compact(_vol("vol-flood-%d" % i))
    if k == 5:
        return _with_data(_req(rid), volunteers_needed=0)
    if k == 6:
        return bytes([0x80 + (i % 64)]) * 20
    return _with_data(_req(rid), priority="asap")


def test_flood_of_bad_input_then_good():
    n_bad, n_good = 2000, 20
    listen, port = vdtest.listen_config()
    with vdtest.Env() as env:
        d = env.daemon({"http.listen": listen})
        vols = [vdtest.volunteer_available("vol-fl-%d" % i,
                                           *vdtest.offset_m(LAT, LON, 15 * i, -10 * i))
                for i in range(n_good)]
        env.send("volunteers", vols)
        env.wait_for(lambda: env.redis.cmd("ZCARD", "vd:pool/city") == n_good, timeout=30,
                     what="volunteers pooled")
        msgs = [("flood-%04d" % i, _flood_bad(i)) for i in range(n_bad)]
        reqs = ["rq-fl-%d" % i for i in range(n_good)]
        msgs += [(r, compact(vdtest.request_created(r, *vdtest.offset_m(LAT, LON, 10 * i, 10 * i))))
                 for i, r in enumerate(reqs)]
        t0 = time.monotonic()
        env.send("requests", msgs)

        def all_served():
            evs = outputs(env, "assignments", timeout=5)
            got = {e["data"]["request_id"] for e in evs
                   if e["type"] in ("vd.assignment.confirmed", "vd.request.unmatched")}
            return set(reqs) <= got
        env.wait_for(all_served, timeout=90, interval=0.5, what="all 20 good requests served")
        vdtest.log("20 good requests served %.1fs after the flood was produced"
                   % (time.monotonic() - t0))

        dmsgs, dls = dead_letters(env, n_bad, timeout=60)
        time.sleep(1)
        dmsgs, dls = dead_letters(env, n_bad, timeout=30)
        where = [(e["data"]["topic"], e["data"]["partition"], e["data"]["offset"]) for e in dls]
        assert len(dls) == n_bad, "%d dead letters, expected %d" % (len(dls), n_bad)
        assert len(set(where)) == n_bad, "duplicate dead letters"
        assert all(e["type"] == "vd.input.rejected" for e in dls)
        out = outputs(env, "assignments")
        conf = by_type(out, "vd.assignment.confirmed")
        assert sorted(e["data"]["request_id"] for e in conf) == sorted(reqs), \
            "not every good request was confirmed once: %d confirmed, unmatched %s" % (
                len(conf), [e["data"] for e in by_type(out, "vd.request.unmatched")])
        m = env.wait_for(lambda: (lambda m: m if m["vd_jobs_in_memory"] == 0 else None)(
            metrics(port)), timeout=10, what="no job left in memory")
        assert m["vd_rejected_total"] == n_bad, m["vd_rejected_total"]
        assert m["vd_outputs_unacked"] == 0, m["vd_outputs_unacked"]
        assert_healthy(d)


if __name__ == "__main__":
    vdtest.main(globals())
