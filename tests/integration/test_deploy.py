"""Running vdispatchd for real: systemd's notify protocol (readiness once Redis and the
consumer group are there, the watchdog, STATUS, STOPPING) on a real notify socket; secrets
read from files, as systemd's LoadCredential= hands them over; the shipped unit passes
`systemd-analyze verify`; `cmake --install` and the Debian package built with CPack hold the
daemon, the tool, the unit and the config.

    VD_BUILD=build VD_SOURCE=. python3 tests/integration/test_deploy.py [test names]
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vdtest  # noqa: E402


class NotifySocket:
    """The datagram socket systemd listens on for sd_notify(): collects what the daemon says,
    each line with the time it arrived (a thread reads as datagrams come, so the watchdog's
    spacing is the daemon's, not the test's polling)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="vd-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []
        self.lock = threading.Lock()
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while not self.closed:
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, OSError):
                continue
            now = time.monotonic()
            with self.lock:
                self.messages.extend((now, line) for line in data.decode().split("\n"))

    def drain(self):
        with self.lock:
            return list(self.messages)

    def lines(self, prefix):
        return [line for _, line in self.drain() if line.startswith(prefix)]

    def close(self):
        self.closed = True
        self.reader.join(timeout=2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def with_env(extra, fn):
    """Runs fn with os.environ extended by extra (the daemon inherits the environment)."""
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        return fn()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_systemd_notify_ready_watchdog_stopping():
    ns = NotifySocket()
    try:
        with vdtest.Env() as env:
            d = with_env({"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "1000000"},
                         lambda: env.daemon(wait=False))
            env.wait_for(lambda: ns.lines("READY=1"), timeout=30, what="READY=1")
            ready_at = [t for t, line in ns.drain() if line == "READY=1"][0]
            # Ready means the daemon said so in its log too: Redis and the group are there.
            assert d.find_log(lambda r: r.get("msg", "").startswith("ready")), "READY before ready"
            status = ns.lines("STATUS=ready")
            assert status and "vd.requests" in status[0], status
            time.sleep(2.2)
            pings = [t for t, line in ns.drain() if line == "WATCHDOG=1" and t > ready_at]
            assert len(pings) >= 3, "%d watchdog pings in 2.2 s (WatchdogSec=1)" % len(pings)
            assert max(b - a for a, b in zip(pings, pings[1:])) < 0.9, pings
            assert d.stop() == 0
            vdtest.wait_for(lambda: ns.lines("STOPPING=1"), timeout=5, what="STOPPING=1")
    finally:
        ns.close()


def test_standby_instance_is_ready():
    """More instances than partitions: the one without partitions is in the group, ready."""
    ns = NotifySocket()
    try:
        one = dict(vdtest.DEFAULT_TOPICS, **{"vd.requests": 1, "vd.volunteers": 1, "vd.responses": 1})
        with vdtest.Env(topics=one) as env:
            env.daemon(name="active")
            d2 = with_env({"NOTIFY_SOCKET": ns.path}, lambda: env.daemon(name="standby", wait=False))
            env.wait_for(lambda: ns.lines("READY=1"), timeout=60, what="the standby's READY=1")
            assert d2.proc.poll() is None, "the standby exited"
    finally:
        ns.close()


def write_secret(dirname, name, value, mode=0o600):
    path = os.path.join(dirname, name)
    with open(path, "w") as f:
        f.write(value + "\n")
    os.chmod(path, mode)
    return path


def test_secrets_from_credential_files():
    creds = tempfile.mkdtemp(prefix="vd-creds-")
    try:
        with vdtest.Env() as env:
            write_secret(creds, "redis-password", vdtest.ACL_PASSWORDS["vdispatch"])
            write_secret(creds, "desk-token", "desk-token-from-a-file-123")
            listen, port = vdtest.listen_config()
            cfg = {"http.listen": listen, "redis.password": None,
                   "redis.password_file": "redis-password", "http.desk_token_file": "desk-token"}
            d = with_env({"CREDENTIALS_DIRECTORY": creds}, lambda: env.daemon(cfg))
            code, _, body = vdtest.http_get(port, "/desk/state")
            assert code == 200 and '"actions":true' in body, (code, body[:200])
            # The dump never shows a secret.
            p = subprocess.run(d.argv("--dump-config"), capture_output=True, text=True, timeout=30,
                               env=dict(os.environ, CREDENTIALS_DIRECTORY=creds))
            assert vdtest.ACL_PASSWORDS["vdispatch"] not in p.stdout and "desk-token-from" not in p.stdout
            assert d.stop() == 0

            # A secret others can read is refused, naming the key; so is a secret set twice.
            write_secret(creds, "open", "x" * 20, mode=0o644)
            p = subprocess.run(d.argv("--check-config", "--set", "redis.password=",
                                      "--set", "redis.password_file=" + os.path.join(creds, "open")),
                               capture_output=True, text=True, timeout=30)
            assert p.returncode == 2 and "redis.password_file" in p.stderr and "readable by every user" in p.stderr, p.stderr
            p = subprocess.run(d.argv("--check-config", "--set", "redis.password=abc",
                                      "--set", "redis.password_file=/nonexistent"),
                               capture_output=True, text=True, timeout=30)
            assert p.returncode == 2 and "both set" in p.stderr, p.stderr
    finally:
        shutil.rmtree(creds, ignore_errors=True)


def unit_text(bindir):
    with open(os.path.join(vdtest.SOURCE, "config", "systemd", "vdispatchd.service.in")) as f:
        text = f.read()
    return (text.replace("@VD_BINDIR@", bindir).replace("@VD_SYSCONFDIR@", "/etc")
            .replace("@VD_DOCDIR@", "/usr/share/doc/vdispatch"))


def test_unit_passes_systemd_analyze():
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is missing (Debian's systemd package; install-deps installs it)"
    tmp = tempfile.mkdtemp(prefix="vd-unit-")
    try:
        path = os.path.join(tmp, "vdispatchd.service")
        with open(path, "w") as f:
            f.write(unit_text(os.path.abspath(vdtest.BUILD)))
        p = subprocess.run([exe, "verify", path], capture_output=True, text=True, timeout=60)
        vdtest.log("systemd-analyze verify -> %d %s%s" % (p.returncode, p.stdout, p.stderr))
        complaints = [l for l in p.stderr.splitlines() if "vdispatchd.service" in l]
        assert p.returncode == 0 and not complaints, p.stderr
        text = unit_text("/usr/bin")
        for want in ("Type=notify", "WatchdogSec=", "LogsDirectory=vdispatch", "DynamicUser=yes",
                     "ProtectSystem=strict", "RestrictAddressFamilies=", "SystemCallFilter=@system-service"):
            assert want in text, want
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_cmake_install_and_debian_package():
    build = os.path.abspath(vdtest.BUILD)
    tmp = tempfile.mkdtemp(prefix="vd-install-")
    try:
        prefix = os.path.join(tmp, "prefix")
        p = subprocess.run(["cmake", "--install", build, "--prefix", prefix], capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        for rel in ("bin/vdispatchd", "bin/vdispatchctl", "lib/systemd/system/vdispatchd.service",
                    "etc/vdispatch/vdispatch.conf",
                    "share/doc/vdispatch/LICENSE", "share/doc/vdispatch/docs/operations.md",
                    "share/vdispatch/vdispatch-alerts.yml", "share/vdispatch/vdispatch-acl.conf"):
            assert os.path.exists(os.path.join(prefix, rel)), rel
        out = subprocess.run([os.path.join(prefix, "bin", "vdispatchd"), "--version"],
                             capture_output=True, text=True, timeout=30).stdout
        assert out.startswith("vdispatchd "), out

        p = subprocess.run(["cpack", "-G", "DEB", "-B", os.path.join(tmp, "deb"),
                            "--config", os.path.join(build, "CPackConfig.cmake")],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        debs = [f for f in os.listdir(os.path.join(tmp, "deb")) if f.endswith(".deb")]
        assert len(debs) == 1, debs
        deb = os.path.join(tmp, "deb", debs[0])
        info = subprocess.run(["dpkg-deb", "-I", deb], capture_output=True, text=True).stdout
        assert "Package: vdispatch" in info and "libhiredis" in info and "librdkafka" in info, info
        files = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True).stdout
        for want in ("/bin/vdispatchd", "/bin/vdispatchctl", "/lib/systemd/system/vdispatchd.service",
                     "/vdispatch/vdispatch.conf"):
            assert want in files, (want, files)
        ctrl = os.path.join(tmp, "ctrl")
        subprocess.run(["dpkg-deb", "-e", deb, ctrl], check=True)
        with open(os.path.join(ctrl, "conffiles")) as f:
            assert f.read().strip().endswith("/vdispatch/vdispatch.conf"), "the config is no conffile"
        x = os.path.join(tmp, "x")
        subprocess.run(["dpkg-deb", "-x", deb, x], check=True)
        ctl = [os.path.join(r, f) for r, _, fs in os.walk(x) for f in fs if f == "vdispatchctl"]
        out = subprocess.run([ctl[0], "--version"], capture_output=True, text=True, timeout=30).stdout
        assert out.startswith("vdispatchctl "), out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    vdtest.main(globals())
