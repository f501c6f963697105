"""version, info, events, system df, and what KIC does not support."""

import json
import os
import socket
import subprocess
import time

import pytest

from conftest import IS_KIC, Result, parallel, t

NET = ("--network", "none")


def test_version(docker):
    v = json.loads(docker.out("version", "--format", "{{json .}}"))
    server = v["Server"]
    assert server is not None, v
    assert server["Os"] == "linux" and server["Arch"] == "amd64", server
    if IS_KIC:
        assert server["ApiVersion"] == "1.51", server
    # The CLI talks the server's version (or its own, if older).
    assert v["Client"]["ApiVersion"] == server["ApiVersion"] or float(server["ApiVersion"]) > 1.50, v
    assert docker.out("version", "--format", "{{.Server.Version}}") == server["Version"]


def test_info_counts(docker):
    keep = docker.name("info")
    docker.ok("run", "-d", "--name", keep, *NET, "busybox", "sleep", "600")
    try:
        info = json.loads(docker.out("info", "--format", "{{json .}}"))
        all_ids = docker.out("ps", "-aq").split()
        running = docker.out("ps", "-q").split()
        assert info["Containers"] == len(all_ids), (info["Containers"], all_ids)
        assert info["ContainersRunning"] == len(running) >= 1, (info["ContainersRunning"], running)
        assert info["ContainersRunning"] + info["ContainersStopped"] + info["ContainersPaused"] == info["Containers"]
        image_ids = set(docker.out("images", "-aq").split())
        assert info["Images"] == len(image_ids) >= 2, (info["Images"], image_ids)
        assert info["OSType"] == "linux" and info["Architecture"] == "x86_64", info
        assert info["ServerVersion"] == docker.out("version", "--format", "{{.Server.Version}}")
        assert info["MemTotal"] > 0 and info["NCPU"] > 0, info
        if IS_KIC:
            assert info["Name"] == docker.vch.name, info["Name"]
        else:
            assert info["Name"] == socket.gethostname(), info["Name"]
        text = docker.out("info")
        assert f"Containers: {info['Containers']}" in text and f"Images: {info['Images']}" in text, text
    finally:
        docker("rm", "-f", keep)


def test_events_since_until(docker):
    t0 = time.time()
    name = docker.name("ev")
    cid = docker.out("run", "-d", "--name", name, *NET, "busybox", "sh", "-c", "exit 2")
    docker.ok("wait", name)
    docker.ok("rm", name)
    time.sleep(1.1)
    t1 = time.time()
    r = docker.ok("events", "--since", f"{t0 - 1:.3f}", "--until", f"{t1:.3f}", "--filter", f"container={cid}",
                  "--format", "{{.Type}} {{.Action}} {{.Actor.ID}} {{index .Actor.Attributes \"name\"}}",
                  timeout=30)
    lines = r.out.splitlines()
    actions = [ln.split()[1] for ln in lines]
    for want in ("create", "start", "die", "destroy"):
        assert want in actions, lines
    assert actions.index("create") < actions.index("start") < actions.index("die") < actions.index("destroy"), lines
    for ln in lines:
        typ, _, actor, nm = ln.split()
        assert typ == "container" and actor == cid and nm == name, ln
    die = docker.ok("events", "--since", f"{t0 - 1:.3f}", "--until", f"{t1:.3f}", "--filter", f"container={cid}",
                    "--filter", "event=die", "--format", "{{index .Actor.Attributes \"exitCode\"}}", timeout=30)
    assert die.out.split() == ["2"], die
    # A window before the container existed shows none of it.
    before = docker.ok("events", "--since", f"{t0 - 60:.3f}", "--until", f"{t0 - 30:.3f}", "--filter",
                       f"container={cid}", timeout=30)
    assert before.out == "", before


def test_system_df(docker):
    rows = docker.out("system", "df", "--format", "{{.Type}}|{{.TotalCount}}|{{.Active}}|{{.Size}}").splitlines()
    by = {r.split("|")[0]: r.split("|")[1:] for r in rows}
    assert "Images" in by and "Containers" in by, rows
    assert int(by["Images"][0]) == len(set(docker.out("images", "-aq").split())), by
    assert int(by["Containers"][0]) == len(docker.out("ps", "-aq").split()), by
    assert by["Images"][2] != "0B", by
    verbose = docker.out("system", "df", "-v")
    assert "busybox" in verbose and "debian" in verbose, verbose


@pytest.mark.kic_only
def test_unsupported_fail_fast(docker, tmpdir_session):
    # dockerd supports all of these (swarm init even succeeds here), so they are KIC-only checks.
    ctx = f"{tmpdir_session}/buildctx"
    os.makedirs(ctx, exist_ok=True)
    open(f"{ctx}/Dockerfile", "w").write("FROM busybox\nRUN true\n")
    cmds = [("swarm", "init"), ("service", "ls"), ("secret", "ls"), ("plugin", "ls"), ("build", ctx)]

    def run(cmd):
        t0 = time.monotonic()
        # DOCKER_BUILDKIT=0: the legacy builder asks the daemon (POST /build) instead of buildx.
        r = docker(*cmd, timeout=30) if cmd[0] != "build" else _legacy_build(docker, ctx)
        return cmd, r, time.monotonic() - t0

    for cmd, r, took in parallel(*(lambda c=c: run(c) for c in cmds)):
        assert r.rc != 0, (cmd, r)
        assert "not supported by KIC" in r.err, (cmd, r)
        assert took < 15, (cmd, took)


def _legacy_build(docker, ctx):
    env = dict(docker.env, DOCKER_BUILDKIT="0")
    p = subprocess.run(["docker", "build", ctx], env=env, capture_output=True, text=True, timeout=t(30))
    return Result(p.returncode, p.stdout, p.stderr)
