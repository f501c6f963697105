"""docker-compose 1.29 (docker-py underneath, API version negotiated) and the Python Docker SDK."""

import os
import secrets
import subprocess
import sys

from conftest import HERE, wait_until, t


def compose(docker, project, *args, timeout=180):
    p = subprocess.run(
        ["docker-compose", "-f", str(HERE / "compose" / "docker-compose.yml"), "-p", project, "--no-ansi", *args],
        env=docker.env, capture_output=True, text=True, timeout=t(timeout))
    return p


def test_compose_up_ps_logs_down(docker):
    project = f"kt{secrets.token_hex(3)}"
    lbl = f"label=com.docker.compose.project={project}"
    try:
        up = compose(docker, project, "up", "-d")
        assert up.returncode == 0, up
        assert f"Creating {project}_printer_1" in up.stderr and f"Creating {project}_sleeper_1" in up.stderr, up.stderr
        ids = docker.out("ps", "-q", "--filter", lbl).split()
        assert len(ids) == 2, ids
        ps = compose(docker, project, "ps")
        assert ps.returncode == 0, ps
        rows = [ln for ln in ps.stdout.splitlines() if ln.startswith(project)]
        assert len(rows) == 2 and all(" Up " in f" {r} " for r in rows), ps.stdout
        assert docker.inspect(f"{project}_printer_1", '{{index .Config.Labels "kic.test"}}') == "printer"
        assert "ROLE=sleeper" in docker.inspect(f"{project}_sleeper_1", "{{json .Config.Env}}")
        assert docker.inspect(f"{project}_sleeper_1", "{{.HostConfig.NetworkMode}}") == "none"

        def all_lines():
            r = compose(docker, project, "logs", "--no-color", "printer")
            return r.returncode == 0 and all(f"compose-line {i}" in r.stdout for i in range(1, 6)) and r
        logs = wait_until("docker-compose logs to show all 5 lines", all_lines, 60)
        for i in range(1, 6):
            assert logs.stdout.count(f"compose-line {i}\n") == 1, logs.stdout
        assert f"{project}_printer_1" in logs.stdout

        down = compose(docker, project, "down", "-t", "2", timeout=240)
        assert down.returncode == 0, down
        assert f"Removing {project}_printer_1" in down.stderr, down.stderr
        assert docker.out("ps", "-aq", "--filter", lbl) == ""
    finally:
        if docker.out("ps", "-aq", "--filter", lbl):
            compose(docker, project, "down", "-t", "1")


def test_python_sdk_script(docker):
    name = f"sdk-{secrets.token_hex(4)}"
    p = subprocess.run(
        [sys.executable if sys.executable.startswith("/usr/bin") else "/usr/bin/python3",
         str(HERE / "sdk_script.py"), f"{docker.registry}/library/busybox:latest", name],
        env=docker.env, capture_output=True, text=True, timeout=t(300))
    assert p.returncode == 0, p
    lines = p.stdout.splitlines()
    assert "pulled ok" in lines, p.stdout
    assert "listed ok" in lines, p.stdout
    assert "output: sdk-says-hello uid=0" in lines, p.stdout
    assert f"name: /{name}" in lines and "status: running" in lines, p.stdout
    assert "logs: sdk-says-hello uid=0|tick" in lines, p.stdout
    assert "stopped: exited 0" in lines, p.stdout
    assert "removed ok" in lines, p.stdout
    assert docker("inspect", name).rc == 1
