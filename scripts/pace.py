#!/usr/bin/env python3
"""Produces framed messages (scripts/scenario.py's requests.bin) at their times, for the demo's
events: each message is due at its offset in seconds (scenario.json's request_offsets_s),
divided by --speed; what is due is produced in one vd-produce batch every 0.2 s. Prints
"produced N" at the end.

    pace.py --brokers HOST:PORT --produce build/vd-produce --topic vd.requests
            --frames requests.bin --scenario scenario.json [--speed 4]
"""

import argparse
import json
import struct
import subprocess
import sys
import time


def frames(path):
    out = []
    with open(path, "rb") as f:
        data = f.read()
    i = 0
    while i < len(data):
        (kl,) = struct.unpack(">I", data[i:i + 4])
        k = data[i + 4:i + 4 + kl]
        i += 4 + kl
        (vl,) = struct.unpack(">I", data[i:i + 4])
        v = data[i + 4:i + 4 + vl]
        i += 4 + vl
        out.append(struct.pack(">I", kl) + k + struct.pack(">I", vl) + v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--produce", required=True, help="path of vd-produce")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--frames", required=True)
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--speed", type=float, default=4.0)
    a = ap.parse_args()
    msgs = frames(a.frames)
    offsets = json.load(open(a.scenario))["request_offsets_s"]
    if len(offsets) != len(msgs):
        sys.exit("pace.py: %d messages but %d offsets" % (len(msgs), len(offsets)))
    t0, i, n = time.time(), 0, 0
    while i < len(msgs):
        now = (time.time() - t0) * a.speed
        j = i
        while j < len(msgs) and offsets[j] <= now:
            j += 1
        if j > i:
            p = subprocess.run([a.produce, "-b", a.brokers, "-t", a.topic], input=b"".join(msgs[i:j]),
                               capture_output=True)
            if p.returncode != 0:
                sys.exit("pace.py: vd-produce failed: %s" % p.stderr.decode(errors="replace"))
            n += j - i
            i = j
        time.sleep(0.2)
    print("produced %d" % n)


if __name__ == "__main__":
    main()
