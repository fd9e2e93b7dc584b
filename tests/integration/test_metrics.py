"""The on-call engineer's view: the alert rules and their unit tests pass promtool, a real
scrape of the daemon passes `promtool check metrics`, every metric the alert rules and the
Grafana dashboard use is in that scrape, and the new gauges say what Redis and Kafka hold
(requests to staff, pool sizes, consumer lag, brokers up, request-to-confirmed times, the
process_* family, build info).

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_metrics.py [test names]
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402

LAT, LON = vdtest.HOHHOT
CONFIG = os.path.join(vdtest.SOURCE, "config")
RULES = os.path.abspath(os.path.join(CONFIG, "prometheus", "vdispatch-alerts.yml"))
DASHBOARD = os.path.join(CONFIG, "grafana", "vdispatch-dashboard.json")


def promtool(*args, stdin=None):
    exe = shutil.which("promtool")
    assert exe, "promtool is missing (Debian's prometheus package; scripts/install-deps.sh installs it)"
    p = subprocess.run([exe] + list(args), input=stdin, capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(RULES))
    vdtest.log("promtool %s -> %d\n%s%s" % (" ".join(args), p.returncode, p.stdout, p.stderr))
    return p


def test_alert_rules_pass_promtool():
    p = promtool("check", "rules", RULES)
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr
    p = promtool("test", "rules", "vdispatch-alerts.test.yml")
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr


def used_metrics():
    """Metric names the alert rules and the dashboard query (histograms by their base name)."""
    exprs = re.findall(r"expr:\s*(\|[\s\S]*?(?=\n\s+\w+:)|.*)", open(RULES).read())
    dash = json.load(open(DASHBOARD))
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    names = set()
    for e in exprs:
        for n in re.findall(r"\b((?:vd|vdispatch|process)_[a-z0-9_]+)", e):
            names.add(re.sub(r"_(bucket|sum|count)$", "", n) if "_seconds_" in n else n)
    return names


def test_scrape_has_what_rules_and_dashboard_use():
    with vdtest.Env() as env:
        listen, port = vdtest.listen_config()
        d = env.daemon({"http.listen": listen, "kafka.consumer.statistics.interval.ms": 1000})
        env.send("volunteers", [vdtest.volunteer_available("v-%d" % i, *vdtest.offset_m(LAT, LON, 100 * i, 0))
                                for i in range(5)] +
                 [vdtest.volunteer_available("v-ev", *vdtest.offset_m(LAT, LON, 0, 50), event_id="expo-2")])
        env.wait_for(lambda: env.redis.cmd("ZCARD", "vd:pool/city") == 5, timeout=30, what="pooled")
        env.send("requests", [vdtest.request_created("rq-m%d" % i, LAT, LON) for i in range(3)] +
                 [vdtest.request_created("rq-far", *vdtest.offset_m(LAT, LON, 0, 40000)),
                  ("rq-bad", b"not json")])
        env.wait_for(lambda: vdtest.metrics(d).get("vd_requests_unstaffed") == 1, timeout=30,
                     what="vd_requests_unstaffed 1")

        def scraped():
            # librdkafka knows a partition's lag once an offset of it was committed.
            m = vdtest.metrics(d)
            return m if m.get("vd_kafka_brokers_up") and \
                'vd_kafka_consumer_lag{topic="vd.requests"}' in m else None
        m = env.wait_for(scraped, timeout=30, what="Kafka statistics with the requests' lag in /metrics")
        text = vdtest.http_get(port, "/metrics")[2]
        p = promtool("check", "metrics", stdin=text)
        assert p.returncode == 0, "promtool check metrics:\n" + p.stdout + p.stderr

        present = {re.sub(r"_(bucket|sum|count)$", "", k.split("{")[0]) if "_seconds_" in k else k.split("{")[0]
                   for k in m}
        missing = sorted(n for n in used_metrics() if n not in present)
        assert not missing, "used by the rules or the dashboard, absent from /metrics: %s" % missing

        assert m['vd_pool_available{pool="city"}'] == 2, m.get('vd_pool_available{pool="city"}')
        assert m['vd_pool_available{pool="ev/expo-2"}'] == 1, m
        assert m["vd_volunteers_registered"] == 6 and m["vd_requests_unstaffed"] == 1, m
        assert m['vd_kafka_consumer_lag{topic="vd.requests"}'] == 0, m
        assert m["vd_kafka_brokers_up"] >= 1, m
        assert m["vd_request_to_confirmed_seconds_count"] == 3, m
        assert 0 < m["vd_request_to_confirmed_seconds_sum"] < 30, m
        assert m["vd_offers_made_total"] == 0 and m["vd_rejected_total"] == 1, m
        info = [k for k in m if k.startswith("vdispatch_build_info")]
        assert len(info) == 1 and 'library="vdispatch_7"' in info[0], info
        assert m["process_resident_memory_bytes"] > 1e6 and m["process_open_fds"] > 5, m
        assert abs(m["process_start_time_seconds"] - time.time()) < 120, m
        assert m["process_cpu_seconds_total"] > 0, m


if __name__ == "__main__":
    vdtest.main(globals())
