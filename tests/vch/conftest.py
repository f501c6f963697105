"""Black-box tests of a Docker endpoint with the real `docker` CLI.

KIC_TEST_TARGET=kic (default): a VCH made by `kic-machine create`, images pulled from a local
registry. KIC_TEST_TARGET=dockerd: a private dockerd (Debian's docker.io), to check that every
test encodes what Docker really does.
"""

import collections
import fcntl
import json
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import images  # noqa: E402

REPO = HERE.parents[1]
TARGET = os.environ.get("KIC_TEST_TARGET", "kic")
IMAGES = Path(os.environ.get("KIC_TEST_IMAGES", str(REPO / "build" / "images")))
# Slow machines: every timeout in the suite is multiplied by this.
SCALE = float(os.environ.get("KIC_TEST_TIMEOUT_SCALE", "1"))
IS_KIC = TARGET == "kic"

Result = collections.namedtuple("Result", "rc out err")


def t(seconds):
    return seconds * SCALE


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sh(cmd, timeout=120, env=None, check=True, input=None):
    """Runs a helper command (not docker); fails the test with its output on error."""
    p = subprocess.run(
        cmd,
        env=env,
        input=input,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=t(timeout),
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"{shlex.join(cmd)} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
        )
    return Result(p.returncode, p.stdout, p.stderr)


def wait_until(what, fn, timeout, interval=0.2):
    """Polls fn() until it returns a true value; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + t(timeout)
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {t(timeout):.0f}s waiting for {what} (last: {last!r})")


class Pty:
    """A docker CLI process on a pseudo-terminal of a fixed size."""

    def __init__(self, argv, env, rows=24, cols=80):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.buf = b""

    def _read(self, timeout):
        r, _, _ = select.select([self.master], [], [], timeout)
        if not r:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the slave side is closed
            return None
        if not data:
            return None
        self.buf += data
        return True

    def expect(self, pattern, timeout=30):
        """Waits for `pattern` (bytes regex) in the output so far; returns the match."""
        deadline = time.monotonic() + t(timeout)
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.buf)
            if m:
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} on the terminal within {t(timeout)}s; got {self.buf!r}")
            if self._read(min(left, 0.5)) is None:
                m = rx.search(self.buf)
                if m:
                    return m
                raise AssertionError(f"terminal closed before {pattern!r}; got {self.buf!r}")

    def send(self, data):
        os.write(self.master, data)

    def wait(self, timeout=30):
        deadline = time.monotonic() + t(timeout)
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        if self.proc.poll() is None:
            self.kill()
            raise AssertionError(f"docker on the terminal did not exit within {t(timeout)}s; got {self.buf!r}")
        while self._read(0.1):
            pass
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def close(self):
        self.kill()
        os.close(self.master)


class Docker:
    """Runs the docker CLI against one endpoint; every call has a timeout."""

    def __init__(self, env, target, registry, tmp):
        self.env = env
        self.target = target
        self.registry = registry  # "127.0.0.1:PORT"
        self.tmp = tmp
        self.api = None  # the server's API version, (major, minor)

    @property
    def modern(self):
        """Docker 25+ wording and exit codes (KIC speaks API 1.51, Docker 28); the private
        dockerd here is Debian's 20.10 (API 1.41), whose messages differ in places."""
        return self.api >= (1, 44)

    def learn_version(self):
        v = self.out("version", "--format", "{{.Server.APIVersion}}")
        self.api = tuple(int(x) for x in v.split("."))

    def __call__(self, *args, timeout=60, input=None):
        try:
            p = subprocess.run(
                ["docker", *args],
                env=self.env,
                input=input,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=isinstance(input, str) or input is None,
                timeout=t(timeout),
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"docker {shlex.join(args)} did not finish within {t(timeout)}s "
                                 f"(stdout so far: {e.stdout!r}, stderr: {e.stderr!r})") from None
        return Result(p.returncode, p.stdout, p.stderr)

    def ok(self, *args, **kw):
        r = self(*args, **kw)
        assert r.rc == 0, f"docker {shlex.join(args)} exited {r.rc}\nstdout: {r.out}\nstderr: {r.err}"
        return r

    def out(self, *args, **kw):
        return self.ok(*args, **kw).out.strip()

    def popen(self, *args, **kw):
        return subprocess.Popen(["docker", *args], env=self.env, **kw)

    def pty(self, *args, rows=24, cols=80):
        return Pty(["docker", *args], self.env, rows, cols)

    def inspect(self, ref, fmt="{{json .}}"):
        out = self.out("inspect", "--format", fmt, ref)
        return json.loads(out) if fmt.startswith("{{json") else out

    def state(self, ref):
        return self.inspect(ref, "{{json .State}}")

    def wait_status(self, ref, status, timeout=60):
        return wait_until(
            f"container {ref} to be {status}",
            lambda: self.state(ref)["Status"] == status,
            timeout,
        )

    @staticmethod
    def name(prefix="c"):
        return f"{prefix}-{uuid.uuid4().hex[:8]}"


def parallel(*fns):
    """Runs callables on threads; returns their results in order, re-raising the first error."""
    results = [None] * len(fns)
    errors = []

    def run(i, fn):
        try:
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------------------------------
# Infrastructure: a local registry, a private dockerd, VCHs made by kic-machine.


class Registry:
    """Debian's docker-registry on a free loopback port, storage in a temp dir."""

    def __init__(self, root):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        os.makedirs(root, exist_ok=True)
        cfg = Path(root) / "config.yml"
        cfg.write_text(
            "version: 0.1\n"
            "log: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {root}/data}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: {self.addr}}}\n"
        )
        self.log = open(Path(root) / "registry.log", "w")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=self.log, stderr=self.log)
        wait_until(f"docker-registry on {self.addr}", self._up, 30)

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"docker-registry exited {self.proc.returncode}; see {self.log.name}")
        try:
            socket.create_connection(("127.0.0.1", self.port), 1).close()
            return True
        except OSError:
            return False

    def push(self, layout, repo):
        sh(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}",
            f"docker://{self.addr}/{repo}"], timeout=300)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def base_env(tmp):
    # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE make python-requests replace docker-py's own CA
    # (DOCKER_CERT_PATH/ca.pem) with the system bundle, so compose and the SDK would fail TLS.
    drop = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_") and k not in drop}
    cfg = Path(tmp) / "docker-config"
    cfg.mkdir(exist_ok=True)
    env.update(DOCKER_CONFIG=str(cfg), DOCKER_CLI_HINTS="false", COMPOSE_INTERACTIVE_NO_CLI="1")
    return env


def ensure_cgroups():
    """`ip netns exec` gives a fresh /sys without cgroups, and dockerd needs them: mount the
    host's cgroup hierarchies (as PID 1 sees them) in this mount namespace only."""
    base = "/sys/fs/cgroup"
    if os.path.isdir(base) and os.listdir(base):
        return
    for line in Path("/proc/1/mounts").read_text().splitlines():
        dev, mnt, fstype, opts = line.split()[:4]
        if not (mnt == base or mnt.startswith(base + "/")) or fstype not in ("tmpfs", "cgroup", "cgroup2"):
            continue
        os.makedirs(mnt, exist_ok=True)
        opts = ",".join(o for o in opts.split(",") if o not in ("rw", "relatime", "seclabel"))
        sh(["mount", "-t", fstype, *(["-o", opts] if opts else []), dev, mnt])


class Dockerd:
    def __init__(self, tmp):
        ensure_cgroups()
        self.tmp = tmp
        self.sock = f"{tmp}/d.sock"
        self.log = open(f"{tmp}/dockerd.log", "w")
        self.proc = subprocess.Popen(
            ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none",
             "--data-root", f"{tmp}/data", "--exec-root", f"{tmp}/exec", "--pidfile", f"{tmp}/d.pid",
             "-H", f"unix://{self.sock}"],
            stdout=self.log, stderr=self.log, start_new_session=True)
        self.env = {"DOCKER_HOST": f"unix://{self.sock}"}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(t(60))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
        subprocess.run(["sh", "-c", f"grep ' {self.tmp}/' /proc/mounts | cut -d' ' -f2 | sort -r | "
                        "xargs -r -n1 umount -l"], check=False)


def kic_binary(name):
    env = os.environ.get(name.upper().replace("-", "_"))
    if env:
        return env
    for d in (os.environ.get("CARGO_TARGET_DIR"), str(REPO / "target")):
        if not d:
            continue
        for profile in ("debug", "release"):
            p = Path(d) / profile / name
            if p.exists():
                return str(p)
    pytest.exit(f"{name} not found: build it (cargo build -p {name}) or set {name.upper().replace('-', '_')}",
                returncode=2)


def parse_env_file(path):
    """`<cert-path>/<name>.env`: DOCKER_* assignments on one line (an `export` is tolerated)."""
    env = {}
    for word in shlex.split(Path(path).read_text()):
        if word == "export" or "=" not in word:
            continue
        k, v = word.split("=", 1)
        env[k] = v
    assert "DOCKER_HOST" in env, f"{path} has no DOCKER_HOST: {Path(path).read_text()!r}"
    return env


class Vch:
    """A VCH made by `kic-machine create`; `delete()` removes it."""

    def __init__(self, tmp, registry, extra=(), name=None):
        self.machine = kic_binary("kic-machine")
        tether = REPO / "target" / "x86_64-unknown-linux-gnu" / "release" / "kic-tether"
        if "KIC_TETHER" not in os.environ and tether.exists():
            os.environ["KIC_TETHER"] = str(tether)
        self.name = name or f"kictest-{secrets.token_hex(3)}"
        self.root = Path(tmp) / "state"
        self.certs = Path(tmp) / f"certs-{self.name}"
        self.store = Path(tmp) / "ds"
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.tmp = tmp
        cmd = [self.machine, "--state-root", str(self.root), "create", "--name", self.name,
               "--image-store", str(self.store), "--endpoint", self.addr,
               "--cert-path", str(self.certs), "--insecure-registry", registry, *extra]
        r = sh(cmd, timeout=600, check=False)
        self.create_result = r
        if r.rc != 0:
            raise AssertionError(f"{shlex.join(cmd)} exited {r.rc}\nstdout: {r.out}\nstderr: {r.err}")
        last = [ln for ln in r.out.splitlines() + r.err.splitlines() if ln.strip()]
        assert any("Installer completed successfully" in ln for ln in last[-3:]), \
            f"kic-machine create did not end with 'Installer completed successfully':\n{r.out}\n{r.err}"
        self.env = parse_env_file(self.certs / f"{self.name}.env")

    def pid(self):
        p = self.root / self.name / "vch.pid"
        try:
            return int(p.read_text().strip())
        except (OSError, ValueError):
            return None

    def delete(self):
        sh([self.machine, "--state-root", str(self.root), "delete", self.name, "--force"],
           timeout=300, check=False)


def make_docker(env, target, registry, tmp):
    full = base_env(tmp)
    full.update(env)
    return Docker(full, target, registry, tmp)


def _pull_as(d, repo, local):
    d.ok("pull", "-q", f"{d.registry}/{repo}", timeout=300)
    d.ok("tag", f"{d.registry}/{repo}", local)


@pytest.fixture(scope="session")
def tmpdir_session():
    # Short: dockerd's and the VCH's unix sockets live under it.
    tmp = tempfile.mkdtemp(prefix="kvt-", dir="/tmp")
    os.chmod(tmp, 0o711)  # QEMU runs as its own user and must reach the image store below
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def layouts(tmpdir_session):
    """OCI layouts of busybox and debian to test with (repaired for dockerd, see images.py)."""
    out = {}
    for img in ("busybox", "debian"):
        src = IMAGES / img
        if not (src / "index.json").exists():
            pytest.exit(f"test image {src} is missing: run `make images` in {REPO}", returncode=2)
        out[img] = str(src) if IS_KIC else images.repaired_layout(str(src), f"{tmpdir_session}/layout-{img}")
    return out


@pytest.fixture(scope="session")
def registry(tmpdir_session, layouts):
    reg = Registry(f"{tmpdir_session}/registry")
    try:
        parallel(*(lambda img=img: reg.push(layouts[img], f"library/{img}:latest") for img in layouts))
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def docker(tmpdir_session, registry, layouts):
    """The endpoint under test, with busybox:latest and debian:latest present."""
    if TARGET == "dockerd":
        dd = Dockerd(tmpdir_session)
        d = make_docker(dd.env, "dockerd", registry.addr, tmpdir_session)
        try:
            wait_until("the private dockerd to answer", lambda: d("version").rc == 0, 60)
            d.learn_version()
            for img in layouts:
                arch = f"{tmpdir_session}/{img}.tar"
                sh(["skopeo", "copy", f"oci:{layouts[img]}", f"docker-archive:{arch}:{img}:latest"], timeout=300)
                d.ok("load", "-q", "-i", arch, timeout=300)
            yield d
        finally:
            subprocess.run(["sh", "-c", "docker rm -f $(docker ps -aq) >/dev/null 2>&1"], env=d.env,
                           timeout=t(120), check=False)
            dd.stop()
    elif TARGET == "kic":
        vch = Vch(tmpdir_session, registry.addr)
        d = make_docker(vch.env, "kic", registry.addr, tmpdir_session)
        d.vch = vch
        try:
            wait_until("the VCH endpoint to answer", lambda: d("version").rc == 0, 60)
            d.learn_version()
            parallel(*(lambda img=img: _pull_as(d, f"library/{img}", f"{img}:latest") for img in layouts))
            yield d
        finally:
            vch.delete()
    else:
        pytest.exit(f"KIC_TEST_TARGET must be kic or dockerd, not {TARGET!r}", returncode=2)


@pytest.fixture(scope="session")
def vch_factory(tmpdir_session, registry):
    """Makes more VCHs (KIC only); all deleted at the end of the session."""
    made = []

    def make(extra=()):
        v = Vch(tmpdir_session, registry.addr, extra)
        made.append(v)
        d = make_docker(v.env, "kic", registry.addr, tmpdir_session)
        wait_until(f"VCH {v.name} to answer", lambda: d("version").rc == 0, 60)
        d.learn_version()
        d.vch = v
        return v, d

    yield make
    for v in made:
        v.delete()


def pytest_configure(config):
    config.addinivalue_line("markers", "kic_only: only meaningful against a KIC VCH (skipped on dockerd)")


def pytest_collection_modifyitems(config, items):
    if TARGET != "kic":
        skip = pytest.mark.skip(reason="KIC only (KIC_TEST_TARGET=%s)" % TARGET)
        for item in items:
            if "kic_only" in item.keywords:
                item.add_marker(skip)
