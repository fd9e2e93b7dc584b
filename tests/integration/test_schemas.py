"""The event contract for app developers: a JSON Schema per event (docs/schemas/) and the
AsyncAPI document (docs/asyncapi.yaml). Every schema is a valid schema; every valid event in
the test data passes its schema; every output the real daemon publishes in a scenario that
makes all of them (direct and offer mode, coordinators, dead letters) passes its schema and
carries the CloudEvents Kafka binding's content-type header; binary-mode input (ce_ headers)
is matched like structured input; the AsyncAPI document names every schema and topic.

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_schemas.py [test names]
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402

try:
    import jsonschema  # Debian: python3-jsonschema
    import yaml  # Debian: python3-yaml
except ImportError as e:
    raise SystemExit("FAIL: %s (scripts/install-deps.sh installs python3-jsonschema and python3-yaml)" % e)

LAT, LON = vdtest.HOHHOT
DOCS = os.path.join(vdtest.SOURCE, "docs")
SCHEMAS = os.path.join(DOCS, "schemas")
CE_STRUCTURED = "application/cloudevents+json; charset=UTF-8"


def schemas():
    out = {}
    for f in sorted(os.listdir(SCHEMAS)):
        with open(os.path.join(SCHEMAS, f)) as fh:
            out[f[:-len(".json")]] = json.load(fh)
    return out


def validator(schema):
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def check(schema, event):
    errors = sorted(validator(schema).iter_errors(event), key=lambda e: list(e.path))
    return ["%s: %s" % ("/".join(map(str, e.path)), e.message) for e in errors]


def input_schema(all_schemas, type_):
    return all_schemas.get(type_ + ".input") or all_schemas[type_]


def test_schemas_are_valid_and_take_the_test_data():
    s = schemas()
    assert len(s) == 20, sorted(s)
    for name, schema in s.items():
        jsonschema.validators.validator_for(schema).check_schema(schema)
    valid = os.path.join(vdtest.SOURCE, "tests", "data", "events", "valid")
    n = 0
    for f in sorted(os.listdir(valid)):
        if not f.endswith(".json"):
            continue
        with open(os.path.join(valid, f), "rb") as fh:
            ev = json.loads(fh.read())
        problems = check(input_schema(s, ev["type"]), ev)
        assert not problems, "%s: %s" % (f, problems)
        n += 1
    assert n >= 15, n
    # And an event the daemon rejects is refused by its schema too.
    bad = vdtest.request_created("rq-1", 95.0, LON)
    assert check(s["vd.request.created"], bad), "lat 95 passed the schema"


def test_asyncapi_names_every_schema_and_topic():
    with open(os.path.join(DOCS, "asyncapi.yaml")) as f:
        doc = yaml.safe_load(f)
    assert doc["asyncapi"].startswith("2."), doc["asyncapi"]
    topics = set(vdtest.TOPIC_KINDS.values())
    assert set(doc["channels"]) == topics, (sorted(doc["channels"]), sorted(topics))
    refs = set()
    for name, m in doc["components"]["messages"].items():
        ref = m["payload"]["$ref"]
        assert os.path.exists(os.path.join(DOCS, ref)), ref
        refs.add(ref)
    assert refs == {"schemas/%s.json" % n for n in schemas()}, refs
    for topic, ch in doc["channels"].items():
        op = ch.get("publish") or ch.get("subscribe")
        for ref in op["message"]["oneOf"]:
            key = ref["$ref"].split("/")[-1]
            assert key in doc["components"]["messages"], (topic, key)


def consume_with_headers(env, topic_kind):
    """Every message of a topic with its headers (kcat %h)."""
    name = env.kafka.topic(topic_kind)
    p = subprocess.run(["kcat", "-C", "-b", env.kafka.bootstrap, "-t", name, "-o", "beginning", "-e",
                        "-q", "-f", "%h\t%s\n"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = []
    for line in p.stdout.splitlines():
        if line.strip():
            headers, value = line.split("\t", 1)
            out.append((headers, json.loads(value)))
    return out


def send_binary(env, key, attrs, data):
    """Produces one binary-mode event with kcat: ce_ headers, the data as the value."""
    argv = ["kcat", "-P", "-b", env.kafka.bootstrap, "-t", env.kafka.topic("requests"), "-k", key,
            "-H", "content-type=application/json"]
    for k, v in attrs.items():
        argv += ["-H", "ce_%s=%s" % (k, v)]
    p = subprocess.run(argv, input=json.dumps(data), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_outputs_match_their_schemas():
    s = schemas()
    with vdtest.Env() as env:
        listen, port = vdtest.listen_config()
        d1 = env.daemon({"http.listen": listen})
        # Direct mode: confirmed, completed, unmatched, cancelled, a coordinator's assignment
        # and a refusal (also for an unknown request), dead letters.
        env.send("volunteers", [vdtest.volunteer_available("v1", LAT, LON, skills=["first_aid"]),
                                vdtest.volunteer_available("v-far", *vdtest.offset_m(LAT, LON, 20000, 0))])
        env.wait_for(lambda: env.redis.cmd("ZCARD", "vd:pool/city") == 2, timeout=30, what="pooled")
        env.send("requests", [vdtest.request_created("r-ok", LAT, LON, resident_id="res-1",
                                                     vulnerability={"age": 81, "lives_alone": True}),
                              vdtest.request_created("r-far", *vdtest.offset_m(LAT, LON, 0, 40000),
                                                     priority="urgent")])
        env.wait_for(lambda: env.redis.cmd("HGET", "vd:req/r-far", "state") == "unmatched", timeout=30,
                     what="r-far unmatched")
        env.send("responses", [vdtest.task_completed("r-ok", "v1")])
        assign = lambda rid, vid: vdtest.cloudevent(  # noqa: E731
            "vd.request.assign", {"request_id": rid, "volunteer_id": vid, "coordinator_id": "c1"})
        env.send("requests", [assign("r-far", "v-nobody"), assign("r-none", "v1"), assign("r-far", "v-far"),
                              vdtest.request_created("r-x", *vdtest.offset_m(LAT, LON, 0, 60000)),
                              ("r-bad", b'{"specversion":"1.0","type":"vd.request.created"}')])
        env.wait_for(lambda: env.redis.cmd("HGET", "vd:req/r-x", "state") == "unmatched", timeout=30,
                     what="r-x unmatched")
        env.send("requests", [vdtest.request_cancelled("r-x")])
        # Binary mode: a request that is matched like any, and one that is rejected.
        env.send("volunteers", [vdtest.volunteer_available("v-bin", *vdtest.offset_m(LAT, LON, 0, 90000))])
        env.wait_for(lambda: env.redis.cmd("ZSCORE", "vd:pool/city", "v-bin"), timeout=30, what="v-bin")
        base = {"specversion": "1.0", "type": "vd.request.created", "source": "/binary-app",
                "time": vdtest.now_rfc3339()}
        send_binary(env, "r-bin", dict(base, id="bin-1"),
                    {"request_id": "r-bin", "location": dict(zip(("lat", "lon"), vdtest.offset_m(LAT, LON, 0, 90010))),
                     "service": "escort"})
        send_binary(env, "r-bin2", dict(base, id="bin-2", type="vd.nothing"),
                    {"request_id": "r-bin2", "location": {"lat": LAT, "lon": LON}, "service": "escort"})
        env.wait_for(lambda: env.redis.cmd("HGET", "vd:req/r-bin", "state") == "confirmed", timeout=30,
                     what="the binary-mode request confirmed")
        env.wait_for(lambda: env.redis.cmd("HGET", "vd:req/r-x", "state") == "cancelled", timeout=30,
                     what="r-x cancelled")
        assert d1.stop() == 0

        # Offer mode: offered, declined (withdrawn), timed out, accepted.
        d2 = env.daemon({"matching.offer_timeout_ms": 2000})
        env.send("volunteers", [vdtest.volunteer_available("v-o%d" % i, *vdtest.offset_m(LAT, LON, 5000 + 50 * i, 0))
                                for i in range(3)])
        env.wait_for(lambda: env.redis.cmd("ZCARD", "vd:pool/city") >= 3, timeout=30, what="offer pool")
        env.send("requests", [vdtest.request_created("r-off", *vdtest.offset_m(LAT, LON, 5000, 10))])
        offered = env.wait_for(lambda: [e for e in env.events("assignments", timeout=5)
                                        if e["type"] == "vd.assignment.offered"], timeout=30, what="an offer")
        o = offered[0]["data"]
        env.send("responses", [vdtest.offer_declined("r-off", o["volunteer_id"], o["offer_id"])])
        env.wait_for(lambda: len([e for e in env.events("assignments", timeout=5)
                                  if e["type"] == "vd.assignment.withdrawn"]) >= 2, timeout=60,
                     what="a decline and a timeout")
        last = [e for e in env.events("assignments", timeout=5) if e["type"] == "vd.assignment.offered"][-1]["data"]
        env.send("responses", [vdtest.offer_accepted("r-off", last["volunteer_id"], last["offer_id"])])
        env.wait_for(lambda: env.redis.cmd("HGET", "vd:req/r-off", "state") in ("confirmed", "unmatched"),
                     timeout=30, what="r-off ends")
        assert d2.stop() == 0

        seen, problems = {}, []
        for kind in ("assignments", "notifications", "deadletter"):
            for headers, ev in consume_with_headers(env, kind):
                if "content-type=" + CE_STRUCTURED not in headers:
                    problems.append("%s %s: content-type header %r" % (ev.get("type"), ev.get("id"), headers))
                t = ev.get("type")
                if t not in s:
                    problems.append("%s: no schema" % t)
                    continue
                seen[t] = seen.get(t, 0) + 1
                problems += ["%s %s: %s" % (t, ev["id"], p) for p in check(s[t], ev)]
        assert not problems, "\n".join(problems[:20])
        outputs = {n for n in s if not n.endswith(".input") and n not in (
            "vd.volunteer.available", "vd.volunteer.location", "vd.volunteer.unavailable", "vd.request.created",
            "vd.request.assign", "vd.offer.accepted", "vd.offer.declined", "vd.task.completed")}
        missing = sorted(outputs - set(seen) - {"vd.assignment.released"})
        assert not missing, "never published in the scenario: %s (seen %s)" % (missing, seen)
        dead = [e["data"]["error"] for e in env.events("deadletter", timeout=5)]
        assert any("binary mode" in e and "vd.nothing" in e for e in dead), dead


if __name__ == "__main__":
    vdtest.main(globals())
