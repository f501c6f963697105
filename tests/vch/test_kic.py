"""What only a KIC VCH does: mutual TLS, VCH limits, isolation between VCHs, and an endpoint
killed with SIGKILL while containers run (its supervisor restarts it; nothing is lost)."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import parallel, sh, wait_until

NET = ("--network", "none")

pytestmark = pytest.mark.kic_only


def _docker_raw(docker, *args, timeout=30):
    """docker with the VCH's address but none of its TLS settings."""
    env = {k: v for k, v in docker.env.items() if k not in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_HOST")}
    p = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)
    return p


def _other_ca_client(tmp):
    """A CA the VCH has never seen and a client certificate it signed."""
    d = Path(tmp) / "other-ca"
    d.mkdir(exist_ok=True)
    sh(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other-ca",
        "-keyout", f"{d}/ca-key.pem", "-out", f"{d}/ca.pem"])
    sh(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=intruder",
        "-keyout", f"{d}/key.pem", "-out", f"{d}/client.csr"])
    (d / "ext.cnf").write_text("extendedKeyUsage=clientAuth\n")
    sh(["openssl", "x509", "-req", "-in", f"{d}/client.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca-key.pem",
        "-CAcreateserial", "-days", "2", "-extfile", f"{d}/ext.cnf", "-out", f"{d}/cert.pem"])
    return d


def test_env_file_and_certificates(docker):
    env = docker.vch.env
    assert env["DOCKER_TLS_VERIFY"] == "1", env
    assert env["DOCKER_HOST"] == f"tcp://{docker.vch.addr}", env
    certs = Path(env["DOCKER_CERT_PATH"])
    for f in ("ca.pem", "cert.pem", "key.pem"):
        assert (certs / f).is_file(), f"{certs / f} missing"
    assert (certs / "key.pem").stat().st_mode & 0o077 == 0, "the client key is readable by others"


def test_mutual_tls_refuses_clients_without_the_vch_certificate(docker, tmpdir_session):
    host = docker.env["DOCKER_HOST"]
    certs = docker.env["DOCKER_CERT_PATH"]
    other = _other_ca_client(tmpdir_session)
    cases = {
        "plain http": ("-H", host, "ps"),
        "tls, no client certificate": ("-H", host, "--tlsverify", "--tlscacert", f"{certs}/ca.pem", "ps"),
        "another CA's client certificate": ("-H", host, "--tlsverify", "--tlscacert", f"{certs}/ca.pem",
                                            "--tlscert", f"{other}/cert.pem", "--tlskey", f"{other}/key.pem", "ps"),
        "VCH's client certificate, server not trusted": ("-H", host, "--tlsverify", "--tlscacert", f"{other}/ca.pem",
                                                         "--tlscert", f"{certs}/cert.pem", "--tlskey",
                                                         f"{certs}/key.pem", "ps"),
    }
    results = parallel(*(lambda a=a: _docker_raw(docker, *a) for a in cases.values()))
    for (what, _), p in zip(cases.items(), results):
        assert p.returncode != 0, f"{what}: the VCH answered: {p.stdout}"
        assert "CONTAINER ID" not in p.stdout, f"{what}: {p.stdout}"
    no_cert, other_ca, untrusted = results[1], results[2], results[3]
    for what, p in (("no client certificate", no_cert), ("another CA", other_ca)):
        assert any(w in p.stderr for w in ("certificate required", "bad certificate", "unknown certificate",
                                          "remote error: tls")), f"{what}: {p.stderr}"
    assert "certificate signed by unknown authority" in untrusted.stderr, untrusted.stderr
    # The VCH's own pair works (control).
    ok = _docker_raw(docker, "-H", host, "--tlsverify", "--tlscacert", f"{certs}/ca.pem", "--tlscert",
                     f"{certs}/cert.pem", "--tlskey", f"{certs}/key.pem", "ps")
    assert ok.returncode == 0 and "CONTAINER ID" in ok.stdout, ok


@pytest.fixture(scope="module")
def vch2(vch_factory):
    """A second VCH on the same image store: at most 2 containers and 1536 MiB of container memory."""
    return vch_factory(["--containers", "2", "--memory", "1536", "--container-memory", "512"])


def test_second_vch_sees_nothing_of_the_first(docker, vch2):
    v2, d2 = vch2
    name = docker.name("first-only")
    cid = docker.out("create", "--name", name, "--label", "vch=first", *NET, "busybox", "true")
    try:
        assert docker.vch.name != v2.name
        assert d2.out("ps", "-aq") == ""
        assert d2.out("images", "-q") == "", "a new VCH lists images it never pulled"
        r = d2("inspect", cid)
        assert r.rc == 1 and f"No such object: {cid}" in r.err, r
        r = d2("image", "inspect", "busybox")
        assert r.rc == 1 and "No such image: busybox" in r.err, r
        info = d2.out("info", "--format", "{{.Name}} {{.Containers}} {{.Images}}")
        assert info == f"{v2.name} 0 0", info
        # Its own images come from the registry; the name taken in the first VCH is free here.
        d2.ok("pull", "-q", f"{d2.registry}/library/busybox", timeout=300)
        d2.ok("tag", f"{d2.registry}/library/busybox", "busybox:latest")
        cid2 = d2.out("create", "--name", name, *NET, "busybox", "true")
        assert cid2 != cid
        assert docker.out("ps", "-aq", "--no-trunc", "--filter", f"name={name}") == cid
        assert d2.out("ps", "-aq", "--no-trunc") == cid2
        d2.ok("rm", name)
    finally:
        docker("rm", "-f", name)


def test_vch_limits_refuse_a_create(vch2):
    v2, d2 = vch2
    if d2("image", "inspect", "busybox").rc != 0:
        d2.ok("pull", "-q", f"{d2.registry}/library/busybox", timeout=300)
        d2.ok("tag", f"{d2.registry}/library/busybox", "busybox:latest")
    made = []
    try:
        # Memory: one 2 GiB container is more than the VCH's 1536 MiB.
        r = d2("create", "-m", "2g", *NET, "busybox", "true")
        assert r.rc == 1, r
        low = r.err.lower()
        assert "memory" in low and "limit" in low and "1536" in r.err, r.err
        assert d2.out("ps", "-aq") == "", "a refused create left a container behind"
        # Count: two fit (512 MiB each), the third is refused; running or not does not matter.
        made.append(d2.out("run", "-d", *NET, "busybox", "sleep", "600"))
        made.append(d2.out("create", *NET, "busybox", "true"))
        r = d2("create", *NET, "busybox", "true")
        assert r.rc == 1, r
        low = r.err.lower()
        assert "container" in low and "limit" in low and "2" in r.err, r.err
        r = d2("run", *NET, "busybox", "true")
        assert r.rc == 125 and "limit" in r.err.lower(), r
        assert sorted(d2.out("ps", "-aq", "--no-trunc").split()) == sorted(made)
        # Removing one makes room again.
        d2.ok("rm", made.pop())
        made.append(d2.out("create", *NET, "busybox", "true"))
    finally:
        if made:
            d2("rm", "-f", *made)


def test_kill9_of_the_endpoint_loses_nothing(docker):
    vch = docker.vch
    counter = docker.name("counter")
    idle = docker.name("idle")
    created = docker.name("created")
    parallel(
        lambda: docker.ok("run", "-d", "--name", counter, *NET, "busybox", "sh", "-c",
                          "for i in $(seq 1 40); do echo line $i; sleep 0.2; done; exit 7"),
        lambda: docker.ok("run", "-d", "--name", idle, *NET, "busybox", "sleep", "600"),
        lambda: docker.ok("create", "--name", created, *NET, "busybox", "true"),
    )
    try:
        wait_until("the counter to print line 3", lambda: "line 3\n" in docker("logs", counter).out, 30)
        before = docker.out("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}")
        pid = vch.pid()
        assert pid, f"no pid in {vch.root / vch.name / 'vch.pid'}"
        assert Path(f"/proc/{pid}/exe").resolve().name == "kic-vch", f"pid {pid} is not kic-vch"
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        wait_until("kic-vch to be gone", lambda: not Path(f"/proc/{pid}").exists()
                   or "zombie" in _status(pid), 10)
        wait_until("the supervisor to restart kic-vch",
                   lambda: vch.pid() not in (None, pid) and docker("version").rc == 0, 60)
        restarted_in = time.monotonic() - t0
        assert docker.out("wait", counter, timeout=120) == "7"
        logs = docker.ok("logs", counter)
        assert logs.out == "".join(f"line {i}\n" for i in range(1, 41)), logs.out
        assert logs.err == ""
        after = docker.out("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}")
        assert sorted(after.splitlines()) == sorted(before.splitlines())
        assert docker.state(idle)["Running"] is True
        assert docker.state(created)["Status"] == "created"
        assert docker.ok("exec", idle, "echo", "still here").out == "still here\n"
        assert restarted_in < 60
    finally:
        docker("rm", "-f", counter, idle, created)


def _status(pid):
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"
