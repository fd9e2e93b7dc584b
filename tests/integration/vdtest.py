"""vdtest: the harness for vdispatch's integration tests (Python standard library only).

Starts real servers on loopback -- redis-server, the Kafka mock cluster (build/vd-kafka-mock) --
and the real daemon (build/vdispatchd), feeds them CloudEvents and reads what comes out.

    import vdtest

    def test_something():
        with vdtest.Env() as env:
            d = env.daemon({"matching.offer_timeout_ms": 0})
            vdtest.send(env.kafka, "volunteers", [vdtest.volunteer_available("v1", *vdtest.HOHHOT)])
            ...
            env.wait_for(lambda: env.kafka.events("vd.assignments"), timeout=20)

    if __name__ == "__main__":
        vdtest.main(globals())

The daemon's HTTP edge: listen_config() for a free http.listen, http_get(), metrics() (its
/metrics as {series: value}).

Environment: VD_BUILD (build dir, default <source>/build), VD_SOURCE (source dir, default two
levels up from this file), VD_DAEMON_WRAPPER (e.g. "valgrind --error-exitcode=99"), which also
scales the daemon timeouts by 4 unless VD_TIMEOUT_SCALE says otherwise, VD_KEEP_TMP=1 (keep the
temp dirs with logs and configs). Every process started here is stopped when its owner is
stopped, when an Env exits (also on failure), and at interpreter exit; redis-server and the
daemon are also told by the kernel (PR_SET_PDEATHSIG) to die with this process, and the
Kafka mock exits when its stdin pipe closes.
"""

import atexit
import ctypes
import http.client
import json
import math
import os
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from datetime import datetime, timezone

# --------------------------------------------------------------------------------------------
# Paths and constants

SOURCE = os.environ.get("VD_SOURCE") or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD = os.environ.get("VD_BUILD") or os.path.join(SOURCE, "build")

# The daemon logs a JSON line whose "msg" starts with this once its consumer has partitions.
READY_MARKER = "ready"

# Topic name -> partitions, as the project's topics are laid out.
DEFAULT_TOPICS = {
    "vd.requests": 4,
    "vd.volunteers": 4,
    "vd.responses": 4,
    "vd.assignments": 2,
    "vd.notifications": 2,
    "vd.deadletter": 2,
}
# Logical topic kind (the config key after "kafka.topic.") -> default topic name.
TOPIC_KINDS = {
    "requests": "vd.requests",
    "volunteers": "vd.volunteers",
    "responses": "vd.responses",
    "assignments": "vd.assignments",
    "notifications": "vd.notifications",
    "deadletter": "vd.deadletter",
}

# Hohhot city centre (WGS84) and the earth radius Redis uses for GEO distances, so that points
# placed with offset_m() are at the distances GEOSEARCH reports.
HOHHOT = (40.8421, 111.7490)
HOHHOT_LAT, HOHHOT_LON = HOHHOT
EARTH_RADIUS_M = 6372797.560856

# Consumer settings the daemon gets in tests (override or set to None to drop). On the mock,
# a group whose last member left stays in "Joining" for that member's session timeout, so a
# member (re)joining within it waits that long: ~45 s with librdkafka's default, ~6.5 s with
# 6000 ms. A first join takes ~3 s (the mock's initial rebalance delay); a session timeout
# below that (e.g. 1000 ms) never completes a join. The same timeout bounds how long a
# kill -9'd member holds its partitions.
CONSUMER_DEFAULTS = {
    "kafka.consumer.session.timeout.ms": 6000,
    "kafka.consumer.heartbeat.interval.ms": 1000,
}

_WRAPPER = os.environ.get("VD_DAEMON_WRAPPER", "").strip()
TIMEOUT_SCALE = float(os.environ.get("VD_TIMEOUT_SCALE") or (4 if _WRAPPER else 1))
# The Debug build with AddressSanitizer and UBSan (scripts/test.sh's second pass): correct, and
# several times slower.
SANITIZED = os.environ.get("VD_SANITIZED", "") == "1"
KEEP_TMP = os.environ.get("VD_KEEP_TMP", "") not in ("", "0")


class VdError(Exception):
    """A harness-level failure: a server did not start, a tool failed, a timeout."""


class RedisError(VdError):
    """An error reply from Redis (-ERR ...)."""


class Skip(Exception):
    """Raised by skip(): the test is reported as skipped, not failed."""


def skip(reason):
    raise Skip(reason)


# --------------------------------------------------------------------------------------------
# Logging with phase timestamps

_T0 = time.monotonic()
_test_t0 = [_T0]


def log(msg):
    """Prints a line stamped with seconds since the current test started."""
    print("[%8.3f] %s" % (time.monotonic() - _test_t0[0], msg), flush=True)


# --------------------------------------------------------------------------------------------
# Process bookkeeping

_live = []  # objects with a _cleanup() method, newest last
_live_lock = threading.Lock()


def _register(obj):
    with _live_lock:
        _live.append(obj)


def _unregister(obj):
    with _live_lock:
        if obj in _live:
            _live.remove(obj)


def cleanup_all():
    """Stops every server and process this module started that is still running."""
    while True:
        with _live_lock:
            if not _live:
                return
            obj = _live.pop()
        try:
            obj._cleanup()
        except Exception as e:  # cleanup must go on
            print("vdtest: cleanup of %r failed: %s" % (obj, e), file=sys.stderr)


atexit.register(cleanup_all)


def _pdeathsig(sig):
    """Returns a preexec_fn asking the kernel to send sig to the child when we die."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def fn():
        prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    return fn


# For helper processes a test starts itself (e.g. a long-running kcat): preexec_fn=pdeathsig(sig).
pdeathsig = _pdeathsig


def _stop_process(proc, sig=signal.SIGTERM, timeout=10):
    """Sends sig, waits up to timeout, then SIGKILLs. Returns the exit status."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def read_text(path):
    """The text of a file (UTF-8, undecodable bytes replaced); "" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except (OSError, TypeError):
        return ""


def json_records(path):
    """The lines of a log file that are JSON objects, parsed; other lines are skipped ([] while
    the file does not exist)."""
    out = []
    for line in read_text(path).splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _tail(path, n=40):
    return "\n".join(read_text(path).splitlines()[-n:])


def _binary(name):
    path = os.path.join(BUILD, name)
    if not os.access(path, os.X_OK):
        raise VdError("%s not found or not executable (VD_BUILD=%s); build it first" % (path, BUILD))
    return path


def _mkdtemp(prefix):
    return tempfile.mkdtemp(prefix=prefix)


def _rmtree(path):
    if path and not KEEP_TMP:
        shutil.rmtree(path, ignore_errors=True)


class _Owned:
    """A process this module started (self.proc) with its temp dir (self.dir): registered for
    cleanup_all() until close()d. Subclasses define stop(); _cleanup() stops and removes
    the dir."""

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _cleanup(self):
        self.stop()
        _rmtree(self.dir)

    def close(self):
        _unregister(self)
        self._cleanup()


def free_port():
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port():
    """A port for a Redis Cluster node: at most 55535, and free together with its cluster bus
    port (10000 higher)."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            port = 20000 + port % 30000
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise VdError("no free port pair for a Redis Cluster node")


def wait_for(predicate, timeout=10.0, interval=0.1, what=None):
    """Calls predicate() until it returns something truthy and returns that value.

    Raises AssertionError after timeout seconds, naming `what` (or the predicate) and the last
    value seen. Exceptions raised by the predicate propagate."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__name__", "condition")
            raise AssertionError("timed out after %.1fs waiting for %s (last value: %s)"
                                 % (timeout, name, _short(last)))
        time.sleep(interval)


def _short(value, limit=300):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------------------------
# Geo helpers

def offset_m(lat, lon, north_m, east_m):
    """Returns (lat, lon) moved north_m metres north and east_m metres east (negative = south,
    west), on the sphere Redis uses, so GEOSEARCH reports the distance you placed."""
    dlat = math.degrees(north_m / EARTH_RADIUS_M)
    lat2 = lat + dlat
    dlon = math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat2))))
    return (lat2, lon + dlon)


def distance_m(lat1, lon1, lat2, lon2):
    """Great-circle (haversine) distance in metres, as Redis computes it."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


# --------------------------------------------------------------------------------------------
# Redis: server process and a minimal RESP2 client

def _resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode("utf-8")
        elif isinstance(a, bool):
            b = b"1" if a else b"0"
        elif isinstance(a, (int, float)):
            b = repr(a).encode() if isinstance(a, float) else str(a).encode()
        else:
            raise TypeError("cannot send %r to Redis" % (a,))
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class RespConnection:
    """One RESP2 connection. Replies: simple and bulk strings -> str (UTF-8; bytes when
    decode=False), integers -> int, nil -> None, arrays -> list, error replies -> RedisError."""

    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")

    def close(self):
        try:
            self.rfile.close()
        finally:
            self.sock.close()

    def send(self, *commands):
        self.sock.sendall(b"".join(_resp_encode(c) for c in commands))

    def read_reply(self, decode=True):
        line = self.rfile.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode("utf-8", "replace") if decode else rest
        if kind == b"-":
            raise RedisError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rfile.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError("Redis closed the connection")
            return data[:-2].decode("utf-8", "replace") if decode else data[:-2]
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            items, error = [], None
            for _ in range(n):
                try:
                    items.append(self.read_reply(decode))
                except RedisError as e:  # keep reading the array, as a client must
                    items.append(e)
                    error = error or e
            return items
        raise ConnectionError("bad RESP reply line %r" % line)


# The least-privilege ACL users of config/redis/vdispatch-acl.conf, with these passwords: every
# daemon the tests start runs as "vdispatch", and vdispatchctl as "vdispatchctl".
ACL_PASSWORDS = {"vdispatch": "vd-test-daemon-pw", "vdispatchctl": "vd-test-ctl-pw"}


def acl_users():
    """The `user` lines of the shipped ACL file, with the test passwords: [name, rule, ...]."""
    users = []
    with open(os.path.join(SOURCE, "config", "redis", "vdispatch-acl.conf")) as f:
        for line in f:
            parts = line.split()
            if parts[:1] == ["user"]:
                rules = [(">" + ACL_PASSWORDS[parts[1]]) if r.startswith(">") else r
                         for r in parts[2:]]
                users.append([parts[1]] + rules)
    return users


class Redis(_Owned):
    """A redis-server on a free loopback port, in its own temp dir, without persistence, with
    the project's ACL users."""

    def __init__(self, port=None, args=(), start=True):
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.args = list(args)
        self.dir = _mkdtemp("vd-redis-")
        self.log_path = os.path.join(self.dir, "redis.log")
        self.proc = None
        self._conn = None
        _register(self)
        if start:
            self.start()

    def __repr__(self):
        return "<Redis port=%d>" % self.port

    def start(self, timeout=10.0):
        if self.proc is not None and self.proc.poll() is None:
            raise VdError("redis-server is already running")
        argv = ["redis-server", "--save", "", "--appendonly", "no", "--port", str(self.port),
                "--bind", "127.0.0.1", "--dir", self.dir, "--logfile", self.log_path,
                "--daemonize", "no"] + [a for u in acl_users() for a in ["--user"] + u] + self.args
        t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT,
                                     preexec_fn=_pdeathsig(signal.SIGKILL))
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise VdError("redis-server exited with %s:\n%s"
                              % (self.proc.returncode, _tail(self.log_path)))
            try:
                if self.cmd("PING") == "PONG":
                    break
            except (OSError, RedisError):
                self._drop_conn()
            if time.monotonic() > deadline:
                raise VdError("redis-server did not answer PING within %.0fs" % timeout)
            time.sleep(0.05)
        log("redis-server up on port %d (%.2fs)" % (self.port, time.monotonic() - t0))

    def _connection(self):
        if self._conn is None:
            self._conn = RespConnection(self.host, self.port)
        return self._conn

    def _drop_conn(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def cmd(self, *args):
        """Runs one command and returns its decoded reply (see RespConnection)."""
        return self._call([args], True)[0]

    def cmd_bytes(self, *args):
        """As cmd(), but bulk strings come back as bytes."""
        return self._call([args], False)[0]

    def pipeline(self, commands, decode=True):
        """Sends many commands at once (a list of argument tuples); returns their replies.
        Error replies are returned as RedisError objects in the list, not raised."""
        return self._call([tuple(c) for c in commands], decode, raise_errors=False)

    def _call(self, commands, decode, raise_errors=True):
        conn = self._connection()
        try:
            conn.send(*commands)
            replies = []
            for _ in commands:
                try:
                    replies.append(conn.read_reply(decode))
                except RedisError as e:
                    if raise_errors and len(commands) == 1:
                        raise
                    replies.append(e)
            return replies
        except (OSError, ConnectionError):
            self._drop_conn()
            raise

    def stop(self, timeout=10.0):
        """SIGTERM and wait. Returns the exit status (None if it was not running)."""
        self._drop_conn()
        if self.proc is None:
            return None
        return _stop_process(self.proc, signal.SIGTERM, timeout)

    def kill(self):
        """SIGKILL: an abrupt outage. Returns the exit status."""
        self._drop_conn()
        if self.proc is None:
            return None
        return _stop_process(self.proc, signal.SIGKILL, 5)

    def restart(self, keep_data=False, down_s=0.0):
        """Stops and starts again on the same port, after down_s seconds. Data (keys and
        Functions) is lost unless keep_data, which SAVEs first and loads dump.rdb again."""
        if keep_data and self.running():
            self.cmd("SAVE")
        self.stop()
        if not keep_data:
            try:
                os.unlink(os.path.join(self.dir, "dump.rdb"))
            except OSError:
                pass
        if down_s:
            time.sleep(down_s)
        self.start()


# --------------------------------------------------------------------------------------------
# Kafka: the mock cluster process, producing through vd-produce, consuming through kcat

def _frame(b):
    if b is None:
        return struct.pack(">I", 0xFFFFFFFF)
    return struct.pack(">I", len(b)) + b


def _to_bytes(v):
    if v is None or isinstance(v, bytes):
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raise TypeError("cannot produce %r" % (v,))


class _LineReader:
    """Reads lines from a pipe with a deadline (no threads)."""

    def __init__(self, f):
        self.fd = f.fileno()
        self.buf = b""

    def readline(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VdError("timed out after %.1fs waiting for a line" % timeout)
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise VdError("the process closed its output")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")


class ProduceJob:
    """A running vd-produce; wait() returns the number of messages delivered."""

    def __init__(self, argv, data, topic, count):
        self.topic = topic
        self.count = count
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self._result = None
        self._thread = threading.Thread(target=self._run, args=(data,), daemon=True)
        self._thread.start()

    def _run(self, data):
        try:
            self._result = self.proc.communicate(data)
        except Exception as e:  # reported by wait()
            self._result = e

    def done(self):
        return not self._thread.is_alive()

    def wait(self, timeout=120.0):
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.proc.kill()
            self._thread.join(10)
            raise VdError("vd-produce to %s did not finish within %.0fs" % (self.topic, timeout))
        if isinstance(self._result, Exception):
            raise VdError("vd-produce to %s: %s" % (self.topic, self._result))
        out, err = self._result
        out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        if self.proc.returncode != 0:
            raise VdError("vd-produce to %s failed (exit %s): %s"
                          % (self.topic, self.proc.returncode, err.strip() or out.strip()))
        words = out.split()
        if len(words) != 2 or words[0] != "produced":
            raise VdError("vd-produce printed %r" % out)
        n = int(words[1])
        if n != self.count:
            raise VdError("vd-produce delivered %d of %d messages" % (n, self.count))
        return n

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self._thread.join(10)


class Kafka(_Owned):
    """The Kafka mock cluster (build/vd-kafka-mock) with the project's topics.

    topics: {name: partitions} or {name: (partitions, replication)}, replacing DEFAULT_TOPICS.
    names: {kind: topic name} for the daemon's kafka.topic.<kind> keys (default TOPIC_KINDS)."""

    def __init__(self, topics=None, brokers=3, names=None, start=True, debug=None):
        self.topics = dict(DEFAULT_TOPICS if topics is None else topics)
        self.names = dict(TOPIC_KINDS if names is None else names)
        self.broker_count = brokers
        self.debug = debug
        self.dir = _mkdtemp("vd-kafka-")
        self.log_path = os.path.join(self.dir, "kafka-mock.log")
        self.proc = None
        self.bootstrap = None
        self._reader = None
        self._jobs = []
        self._lock = threading.Lock()
        _register(self)
        if start:
            self.start()

    def __repr__(self):
        return "<Kafka %s>" % self.bootstrap

    def start(self, timeout=15.0):
        argv = [_binary("vd-kafka-mock"), "--brokers", str(self.broker_count)]
        for name, spec in self.topics.items():
            if isinstance(spec, (tuple, list)):
                argv += ["--topic", "%s:%d:%d" % (name, spec[0], spec[1])]
            else:
                argv += ["--topic", "%s:%d" % (name, spec)]
        if self.debug:
            argv += ["--debug", self.debug]
        t0 = time.monotonic()
        self._logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._logf)
        self._reader = _LineReader(self.proc.stdout)
        try:
            first = self._reader.readline(timeout)
            if not first.startswith("bootstrap="):
                raise VdError("vd-kafka-mock printed %r first" % first)
            self.bootstrap = first.split("=", 1)[1]
            second = self._reader.readline(timeout)
            if second != "ready":
                raise VdError("vd-kafka-mock printed %r instead of ready" % second)
        except VdError as e:
            _stop_process(self.proc, signal.SIGKILL)
            raise VdError("vd-kafka-mock did not start: %s\n%s" % (e, _tail(self.log_path)))
        log("kafka mock up, %d brokers, bootstrap %s (%.2fs)"
            % (self.broker_count, self.bootstrap, time.monotonic() - t0))

    def topic(self, kind):
        """Topic name for a kind ("requests", ...) or a name passed through."""
        return self.names.get(kind, kind)

    def command(self, line, timeout=15.0, check=True):
        """Sends one fault command (see vd-kafka-mock --help) and returns its reply line.
        With check (default), an `error: ...` reply raises VdError."""
        with self._lock:
            if self.proc is None or self.proc.poll() is not None:
                raise VdError("vd-kafka-mock is not running")
            self.proc.stdin.write(line.strip().encode() + b"\n")
            self.proc.stdin.flush()
            reply = self._reader.readline(timeout)
        log("kafka mock: %s -> %s" % (line.strip(), reply))
        if check and not reply.startswith("ok"):
            raise VdError("vd-kafka-mock %r: %s" % (line, reply))
        return reply

    def produce_start(self, topic, messages, partition=None, props=None):
        """Starts vd-produce in the background; returns a ProduceJob (job.wait() -> count).
        messages: (key, value) pairs; key and value are bytes, str, dict/list (as JSON) or
        None (a NULL key or value)."""
        messages = list(messages)
        data = b"".join(_frame(_to_bytes(k)) + _frame(_to_bytes(v)) for k, v in messages)
        argv = [_binary("vd-produce"), "-b", self.bootstrap, "-t", self.topic(topic)]
        if partition is not None:
            argv += ["-p", str(partition)]
        for k, v in (props or {}).items():
            argv += ["-X", "%s=%s" % (k, v)]
        job = ProduceJob(argv, data, self.topic(topic), len(messages))
        self._jobs.append(job)
        return job

    def produce(self, topic, messages, partition=None, props=None, timeout=120.0):
        """Produces (key, value) pairs in order and waits until all are acknowledged.
        Returns the count; raises VdError on any delivery failure."""
        job = self.produce_start(topic, messages, partition, props)
        n = job.wait(timeout)
        log("produced %d to %s (%.2fs)" % (n, job.topic, time.monotonic() - job.t0))
        return n

    def consume(self, topic, timeout=10.0, min_count=0):
        """Reads every message of a topic from the beginning (kcat -e: up to the end of each
        partition), again and again until at least min_count are seen or timeout passes.
        Returns the last read, sorted by (partition, offset): dicts with topic, partition,
        offset, key and value (str, UTF-8 with replacement, or None for NULL) and key_bytes,
        value_bytes (exact bytes or None). Raises VdError if kcat never succeeded."""
        name = self.topic(topic)
        # %K/%S are the key/value lengths (-1 for NULL): binary-exact, unlike -J.
        argv = ["kcat", "-C", "-b", self.bootstrap, "-t", name, "-o", "beginning", "-e", "-q",
                "-f", "%p %o %K %S\n%k%s\n"]
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        result, last_err, runs = None, None, 0
        while True:
            left = deadline - time.monotonic()
            runs += 1
            try:
                p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                   timeout=max(left, 5.0))
                if p.returncode == 0:
                    result = _parse_kcat(name, p.stdout)
                else:
                    last_err = "kcat exit %d: %s" % (
                        p.returncode, p.stderr.decode("utf-8", "replace").strip())
            except subprocess.TimeoutExpired:
                last_err = "kcat did not reach the end of %s in time" % name
            if result is not None and len(result) >= min_count:
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if result is None:
            raise VdError("consuming %s failed: %s" % (name, last_err))
        log("consumed %d from %s (%d run%s, %.2fs)"
            % (len(result), name, runs, "" if runs == 1 else "s", time.monotonic() - t0))
        return result

    def events(self, topic, **kw):
        """consume() and parse every value as JSON; returns the list of objects."""
        out = []
        for m in self.consume(topic, **kw):
            try:
                out.append(json.loads(m["value_bytes"]))
            except (TypeError, ValueError) as e:
                raise VdError("%s [%d] offset %d is not JSON (%s): %s"
                              % (m["topic"], m["partition"], m["offset"], e,
                                 _short(m["value"])))
        return out

    def stop(self, timeout=10.0):
        """Asks the mock to quit (closing its stdin); returns its exit status."""
        for job in self._jobs:
            job.kill()
        self._jobs = []
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF = quit
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _stop_process(self.proc, signal.SIGKILL)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._logf.close()
        return self.proc.returncode


def _parse_kcat(topic, data):
    out, pos, n = [], 0, len(data)
    while pos < n:
        nl = data.index(b"\n", pos)
        p, o, klen, vlen = (int(x) for x in data[pos:nl].split())
        pos = nl + 1
        key = value = None
        if klen >= 0:
            key, pos = data[pos:pos + klen], pos + klen
        if vlen >= 0:
            value, pos = data[pos:pos + vlen], pos + vlen
        if data[pos:pos + 1] != b"\n":
            raise VdError("cannot parse kcat output for %s at byte %d" % (topic, pos))
        pos += 1
        out.append({
            "topic": topic, "partition": p, "offset": o,
            "key": None if key is None else key.decode("utf-8", "replace"),
            "value": None if value is None else value.decode("utf-8", "replace"),
            "key_bytes": key, "value_bytes": value,
        })
    out.sort(key=lambda m: (m["partition"], m["offset"]))
    return out


# --------------------------------------------------------------------------------------------
# The daemon

def _ini_value(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "SUMMARY: UndefinedBehaviorSanitizer")


class Daemon(_Owned):
    """build/vdispatchd with a generated config pointing at redis and kafka.

    config: {"section.key": value} overrides on top of the base config (None as a value
    removes that key). args: extra command-line arguments. binary: another executable
    (tests of the harness use a stand-in)."""

    _counter = [0]

    def __init__(self, redis, kafka, config=None, args=(), name=None, binary=None, start=True):
        Daemon._counter[0] += 1
        self.name = name or "d%d" % Daemon._counter[0]
        self.redis, self.kafka = redis, kafka
        self.binary = binary
        self.args = list(args)
        self.dir = _mkdtemp("vd-daemon-%s-" % self.name)
        self.config_path = os.path.join(self.dir, "vdispatchd.ini")
        self.config = self.base_config()
        self.config.update(config or {})
        self.proc = None
        self.log_path = None
        self.starts = 0
        self._t_start = None
        _register(self)
        self.write_config()
        if start:
            self.start()

    def __repr__(self):
        return "<Daemon %s pid=%s>" % (self.name, self.proc.pid if self.proc else None)

    def base_config(self):
        cfg = {
            "kafka.brokers": self.kafka.bootstrap if self.kafka else "127.0.0.1:9092",
            "kafka.group_id": "vdispatch-test",
        }
        names = self.kafka.names if self.kafka else TOPIC_KINDS
        for kind in TOPIC_KINDS:
            cfg["kafka.topic." + kind] = names.get(kind, TOPIC_KINDS[kind])
        cfg.update(CONSUMER_DEFAULTS)
        cfg["redis.host"] = "127.0.0.1"
        cfg["redis.port"] = self.redis.port if self.redis else 6379
        cfg["redis.user"] = "vdispatch"
        cfg["redis.password"] = ACL_PASSWORDS["vdispatch"]
        cfg["http.listen"] = ""
        cfg["matching.offer_timeout_ms"] = 0
        cfg["log.level"] = "debug"
        cfg["log.format"] = "json"
        return cfg

    def write_config(self, path=None):
        """Writes self.config as INI (sections in first-seen order); returns the path."""
        sections = {}
        for full, value in self.config.items():
            if value is None:
                continue
            if "." not in full:
                raise VdError("config key %r has no section" % full)
            section, key = full.split(".", 1)
            sections.setdefault(section, []).append((key, _ini_value(value)))
        lines = ["; written by vdtest for %s" % self.name]
        for section, items in sections.items():
            lines.append("")
            lines.append("[%s]" % section)
            lines.extend("%s = %s" % kv for kv in items)
        path = path or self.config_path
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def argv(self, *extra):
        wrapper = shlex.split(_WRAPPER) if _WRAPPER else []
        binary = self.binary or _binary("vdispatchd")
        if isinstance(binary, (list, tuple)):
            return wrapper + list(binary) + ["-c", self.config_path] + self.args + list(extra)
        return wrapper + [binary, "-c", self.config_path] + self.args + list(extra)

    def start(self):
        if self.running():
            raise VdError("%s is already running" % self.name)
        self.write_config()
        self.starts += 1
        self.log_path = os.path.join(self.dir, "daemon-%d.log" % self.starts)
        self.stdout_path = os.path.join(self.dir, "daemon-%d.out" % self.starts)
        self._t_start = time.monotonic()
        with open(self.log_path, "wb") as errf, open(self.stdout_path, "wb") as outf:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=outf,
                                         stderr=errf, preexec_fn=_pdeathsig(signal.SIGKILL))
        log("%s started, pid %d, log %s" % (self.name, self.proc.pid, self.log_path))
        return self

    def check_config(self, *extra, timeout=30.0):
        """Runs the binary with --check-config on the current config.
        Returns (exit status, stdout + stderr text)."""
        self.write_config()
        p = subprocess.run(self.argv("--check-config", *extra), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=timeout * TIMEOUT_SCALE)
        return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def returncode(self):
        return self.proc.poll() if self.proc else None

    @property
    def http_port(self):
        """The port of the config's http.listen (host:port), None when HTTP is off."""
        listen = self.config.get("http.listen") or ""
        return int(listen.rsplit(":", 1)[1]) if ":" in listen else None

    def log_text(self):
        return read_text(self.log_path)

    def log_lines(self):
        """The JSON log lines of the current (or last) run, parsed; other lines are skipped."""
        return json_records(self.log_path)

    def find_log(self, predicate=None, msg=None, level=None):
        """Log records matching msg (a substring of "msg"), level and predicate(record)."""
        return [r for r in self.log_lines()
                if (msg is None or msg in str(r.get("msg", "")))
                and (level is None or r.get("level") == level)
                and (predicate is None or predicate(r))]

    def wait_ready(self, timeout=30.0):
        """Waits for a log line whose msg starts with READY_MARKER. Raises VdError (with the
        log tail) if the daemon exits first or the time runs out. Returns the record."""
        timeout *= TIMEOUT_SCALE
        deadline = time.monotonic() + timeout
        while True:
            for rec in self.log_lines():
                if str(rec.get("msg", "")).startswith(READY_MARKER):
                    log("%s ready (%.2fs after start)"
                        % (self.name, time.monotonic() - self._t_start))
                    return rec
            if not self.running():
                raise VdError("%s exited with %s before it was ready; log tail:\n%s"
                              % (self.name, self.returncode, _tail(self.log_path)))
            if time.monotonic() > deadline:
                raise VdError("%s not ready within %.0fs; log tail:\n%s"
                              % (self.name, timeout, _tail(self.log_path)))
            time.sleep(0.1)

    def send_signal(self, sig):
        """Sends sig (e.g. SIGHUP) if the daemon is running."""
        if self.running():
            self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Sends sig and waits up to timeout for the exit. Returns the exit status (negative:
        killed by that signal). If it does not exit in time it is SIGKILLed and VdError is
        raised."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        timeout *= TIMEOUT_SCALE
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise VdError("%s did not exit within %.0fs of signal %d; killed. Log tail:\n%s"
                          % (self.name, timeout, sig, _tail(self.log_path)))
        log("%s stopped with %s after %.2fs" % (self.name, rc, time.monotonic() - t0))
        return rc

    def kill(self):
        """SIGKILL, as a crash would. Returns the exit status."""
        if self.proc is None:
            return None
        rc = _stop_process(self.proc, signal.SIGKILL, 10)
        log("%s killed (%s)" % (self.name, rc))
        return rc

    def restart(self, wait=True, timeout=30.0):
        """Graceful stop, then start again with the same config (a new log file)."""
        self.stop()
        self.start()
        if wait:
            self.wait_ready(timeout)
        return self

    def sanitizer_reports(self):
        """Lines of every run's stderr where AddressSanitizer, LeakSanitizer or
        UndefinedBehaviorSanitizer reported something (the suite's second pass runs the daemon
        built with them)."""
        found = []
        for i in range(1, self.starts + 1):
            path = os.path.join(self.dir, "daemon-%d.log" % i)
            for line in read_text(path).splitlines():
                if any(m in line for m in SANITIZER_MARKERS):
                    found.append("%s: %s" % (os.path.basename(path), line.strip()))
        return found

    def _cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            _stop_process(self.proc, signal.SIGTERM, 10 * TIMEOUT_SCALE)
        reports = self.sanitizer_reports()
        if reports:
            kept = self.dir
            raise VdError("%s: sanitizer reports (logs kept in %s):\n  %s"
                          % (self.name, kept, "\n  ".join(reports[:20])))
        _rmtree(self.dir)


# --------------------------------------------------------------------------------------------
# The daemon's HTTP edge: /metrics, /healthz, /readyz

def listen_config():
    """An http.listen value on a free loopback port, and the port."""
    port = free_port()
    return "127.0.0.1:%d" % port, port


def http_get(port, path, timeout=5.0):
    """GET http://127.0.0.1:port/path; returns (status, content type, body text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        return resp.status, resp.getheader("Content-Type", ""), body
    finally:
        conn.close()


def parse_metrics(text):
    """Prometheus text -> {"name" or "name{labels}": value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def metrics(target):
    """The daemon's /metrics as {"name" or "name{labels}": value}; target is the HTTP port or
    a Daemon (its http.listen port). Fails unless /metrics answers 200."""
    port = target.http_port if isinstance(target, Daemon) else target
    status, _, body = http_get(port, "/metrics")
    assert status == 200, "/metrics answered %d: %s" % (status, body)
    return parse_metrics(body)


# --------------------------------------------------------------------------------------------
# CloudEvents

def new_id(prefix="ev"):
    """A unique ID in the contract's charset ([A-Za-z0-9._:-], at most 64 chars)."""
    return "%s-%s" % (prefix, uuid.uuid4().hex)


def now_rfc3339(offset_s=0.0):
    """Current UTC time (plus offset_s seconds) as RFC 3339 with milliseconds and Z."""
    t = datetime.fromtimestamp(time.time() + offset_s, tz=timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000)


def parse_time(s):
    """An RFC 3339 time as the daemon writes it ("...T08:00:00.000Z") -> seconds since the epoch."""
    return datetime.strptime(s.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def cloudevent(type_, data, source="/vdtest", id=None, time_=None):
    """A structured-mode CloudEvent 1.0 dict."""
    return {
        "specversion": "1.0",
        "type": type_,
        "source": source,
        "id": id or new_id(),
        "time": time_ or now_rfc3339(),
        "datacontenttype": "application/json",
        "data": data,
    }


def _loc(lat, lon):
    return {"lat": lat, "lon": lon}


def volunteer_available(vid, lat, lon, skills=(), languages=("zh",), **extra):
    data = {"volunteer_id": vid, "location": _loc(lat, lon), "skills": list(skills),
            "languages": list(languages)}
    data.update(extra)
    return cloudevent("vd.volunteer.available", data)


def volunteer_location(vid, lat, lon):
    return cloudevent("vd.volunteer.location", {"volunteer_id": vid, "location": _loc(lat, lon)})


def volunteer_unavailable(vid):
    return cloudevent("vd.volunteer.unavailable", {"volunteer_id": vid})


def request_created(rid, lat, lon, service="home_visit", **extra):
    data = {"request_id": rid, "location": _loc(lat, lon), "service": service}
    data.update(extra)
    return cloudevent("vd.request.created", data)


def request_cancelled(rid):
    return cloudevent("vd.request.cancelled", {"request_id": rid})


def offer_accepted(rid, vid, offer_id):
    return cloudevent("vd.offer.accepted",
                      {"request_id": rid, "volunteer_id": vid, "offer_id": offer_id})


def offer_declined(rid, vid, offer_id):
    return cloudevent("vd.offer.declined",
                      {"request_id": rid, "volunteer_id": vid, "offer_id": offer_id})


def task_completed(rid, vid):
    return cloudevent("vd.task.completed", {"request_id": rid, "volunteer_id": vid})


def event_key(kind, event):
    """The Kafka key the contract gives an event on a topic kind: volunteer_id on the
    volunteers topic, request_id elsewhere (None if the event lacks it)."""
    data = event.get("data") if isinstance(event, dict) else None
    if not isinstance(data, dict):
        return None
    field = "volunteer_id" if kind == "volunteers" else "request_id"
    value = data.get(field)
    return value if isinstance(value, str) else None


def send(kafka, topic_kind, events, partition=None):
    """Produces events to the topic of a kind ("requests", "volunteers", "responses"), each
    keyed as the contract says, as compact JSON. An item may also be a (key, value) pair of
    raw bytes/str/None (for malformed input). Returns the count."""
    msgs = []
    for ev in events:
        if isinstance(ev, tuple):
            msgs.append(ev)
        else:
            msgs.append((event_key(topic_kind, ev), ev))
    return kafka.produce(kafka.topic(topic_kind), msgs, partition=partition)


OUTCOME_TYPES = ("vd.assignment.confirmed", "vd.request.unmatched")


def outcomes(events):
    """{request_id: [outcome events in the given order]} of the confirmed/unmatched events."""
    out = {}
    for e in events:
        if e.get("type") in OUTCOME_TYPES:
            out.setdefault(e["data"]["request_id"], []).append(e)
    return out


# --------------------------------------------------------------------------------------------
# Env: Redis + Kafka (+ daemons), cleaned up on exit

class Env:
    """with Env() as env: a Redis and a Kafka mock; env.daemon(...) starts daemons. On exit,
    daemons, Kafka and Redis are stopped and their temp dirs removed (also on failure, after
    printing the daemons' log tails)."""

    def __init__(self, topics=None, brokers=3, redis_args=(), names=None, redis_port=None):
        self.topics, self.brokers, self.redis_args, self.names = topics, brokers, redis_args, names
        self.redis_port = redis_port
        self.redis = None
        self.kafka = None
        self.daemons = []

    def __enter__(self):
        try:
            self.redis = Redis(port=self.redis_port, args=self.redis_args)
            self.kafka = Kafka(topics=self.topics, brokers=self.brokers, names=self.names)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and exc_type is not Skip:
            for d in self.daemons:
                if d.log_path:
                    print("---- %s log tail (%s) ----\n%s\n----"
                          % (d.name, d.log_path, _tail(d.log_path, 60)), flush=True)
        self.close()
        return False

    def daemon(self, config=None, wait=True, timeout=30.0, **kw):
        """Starts a Daemon on this env's Redis and Kafka; waits until ready unless wait=False."""
        d = Daemon(self.redis, self.kafka, config, **kw)
        self.daemons.append(d)
        if wait and kw.get("start", True):
            d.wait_ready(timeout)
        return d

    def send(self, topic_kind, events, partition=None):
        return send(self.kafka, topic_kind, events, partition)

    def events(self, topic_kind, **kw):
        return self.kafka.events(self.kafka.topic(topic_kind), **kw)

    @staticmethod
    def wait_for(predicate, timeout=10.0, interval=0.1, what=None):
        return wait_for(predicate, timeout, interval, what)

    def close(self):
        errors = []
        for obj in list(reversed(self.daemons)) + [self.kafka, self.redis]:
            if obj is None:
                continue
            try:
                obj.close()
            except Exception as e:
                errors.append("%r: %s" % (obj, e))
        self.daemons = []
        if errors:
            raise VdError("cleanup failed: " + "; ".join(errors))


# --------------------------------------------------------------------------------------------
# A tiny test runner

def _on_sigterm(signum, frame):
    raise SystemExit("terminated by signal %d" % signum)


def main(namespace, argv=None):
    """Runs the test_* functions of a test module in definition order (or those named on the
    command line), printing PASS/FAIL/SKIP per test and last `N passed, N failed`.
    Exits 0 if none failed (and at least one ran), else 1."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _on_sigterm)
    tests = [(name, fn) for name, fn in namespace.items()
             if name.startswith("test_") and callable(fn)]
    tests.sort(key=lambda t: getattr(getattr(t[1], "__code__", None), "co_firstlineno", 0))
    if argv:
        tests = [t for t in tests if any(a in t[0] for a in argv)]
    print("vdtest: %d test(s); VD_BUILD=%s%s" % (
        len(tests), BUILD, (" VD_DAEMON_WRAPPER=" + _WRAPPER) if _WRAPPER else ""), flush=True)
    passed = failed = skipped = 0
    interrupted = False
    for name, fn in tests:
        _test_t0[0] = time.monotonic()
        log("RUN %s" % name)
        try:
            fn()
        except Skip as e:
            skipped += 1
            print("SKIP %s: %s" % (name, e), flush=True)
        except (Exception, SystemExit, KeyboardInterrupt) as e:
            failed += 1
            reason = "%s: %s" % (type(e).__name__, e) if str(e) else type(e).__name__
            first = reason.splitlines()[0] if reason else type(e).__name__
            traceback.print_exc(file=sys.stdout)
            print("FAIL %s: %s" % (name, first), flush=True)
            if isinstance(e, (SystemExit, KeyboardInterrupt)):
                interrupted = True
        else:
            passed += 1
            print("PASS %s (%.1fs)" % (name, time.monotonic() - _test_t0[0]), flush=True)
        finally:
            cleanup_all()
        if interrupted:
            break
    summary = "%d passed, %d failed" % (passed, failed)
    if skipped:
        summary += ", %d skipped" % skipped
    print(summary, flush=True)
    sys.exit(0 if failed == 0 and passed + skipped > 0 else 1)
