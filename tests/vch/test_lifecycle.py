"""logs, attach, exec, stop/kill/restart/rm, rename, wait."""

import datetime
import re
import time

import pytest

from conftest import parallel, wait_until

NET = ("--network", "none")


def ts(s):
    """RFC 3339 with nanoseconds -> aware datetime (microseconds kept)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", s)
    assert m, f"not an RFC 3339 timestamp: {s!r}"
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.datetime.fromisoformat(f"{m.group(1)}.{frac}{tz}")


@pytest.fixture(scope="module")
def sleeper(docker):
    """One running container for exec, top, attach-to-output checks."""
    name = docker.name("sleeper")
    docker.ok("run", "-d", "--name", name, *NET, "busybox", "sleep", "900")
    yield name
    docker("rm", "-f", name)


# ----------------------------------------------------------------------------------------- logs


def test_logs_follow_tail_timestamps_since(docker):
    name = docker.name("logs")
    docker.ok("run", "-d", "--name", name, *NET, "busybox", "sh", "-c",
              "echo early; sleep 3; for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done; echo err-line >&2")
    # -f right away: it must end by itself when the container exits, with every line once.
    f = docker("logs", "-f", name, timeout=60)
    assert f.rc == 0, f
    assert f.out == "early\n" + "".join(f"line {i}\n" for i in range(1, 6)), f.out
    assert f.err == "err-line\n", f.err
    assert docker.state(name)["Status"] == "exited"

    assert docker.ok("logs", "--tail", "2", name).out == "line 5\n"
    assert docker.ok("logs", "--tail", "2", name).err == "err-line\n"
    tail = docker.ok("logs", "--tail", "2", name)
    assert tail.out + tail.err == "line 5\nerr-line\n"

    stamped = docker.ok("logs", "-t", name).out.splitlines()
    assert len(stamped) == 6, stamped
    times = []
    for line in stamped:
        stamp, text = line.split(" ", 1)
        times.append(ts(stamp))
    assert [ln.split(" ", 1)[1] for ln in stamped] == ["early"] + [f"line {i}" for i in range(1, 6)]
    assert times == sorted(times), stamped
    gap = (times[1] - times[0]).total_seconds()
    assert 2.5 <= gap <= 10, f"echo early; sleep 3; echo line 1 were {gap}s apart: {stamped}"
    # --since a point in the sleep: only the later lines.
    mid = times[0] + (times[1] - times[0]) / 2
    since = docker.ok("logs", "--since", mid.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), name).out
    assert since == "".join(f"line {i}\n" for i in range(1, 6)), since
    since_unix = docker.ok("logs", "--since", f"{mid.timestamp():.6f}", name).out
    assert since_unix == since
    until = docker.ok("logs", "--until", mid.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), name).out
    assert until == "early\n", until
    docker.ok("rm", name)


def test_logs_of_missing_container(docker):
    r = docker("logs", "no-such-container-kt")
    assert r.rc == 1 and "No such container: no-such-container-kt" in r.err, r


# --------------------------------------------------------------------------------------- attach


def test_attach_streams_output_and_exit_code(docker):
    name = docker.name("att")
    docker.ok("run", "-d", "--name", name, *NET, "busybox", "sh", "-c",
              "sleep 3; for i in 1 2 3; do echo att $i; echo atterr $i >&2; sleep 0.3; done; exit 6")
    r = docker("attach", "--no-stdin", name, timeout=60)
    assert r.rc == 6, r
    assert r.out == "att 1\natt 2\natt 3\n", r
    assert r.err == "atterr 1\natterr 2\natterr 3\n", r
    docker.ok("rm", name)


def test_attach_with_detach_keys_leaves_it_running(docker):
    name = docker.name("detach")
    docker.ok("run", "-dit", "--name", name, *NET, "busybox", "sh")
    p = docker.pty("attach", "--detach-keys", "ctrl-x", name)
    try:
        time.sleep(1)
        p.send(b"echo hello-$((40+2))\r")
        p.expect(rb"hello-42", 30)
        p.send(b"\x18")
        p.expect(rb"read escape sequence", 30)
        # CLI 28 ends a detached attach with status 1 (checked on dockerd).
        assert p.wait(30) == 1
    finally:
        p.close()
    assert docker.state(name)["Running"] is True
    # Attach again: the same shell still answers.
    p = docker.pty("attach", name)
    try:
        time.sleep(1)
        p.send(b"echo again-$((1+1))\r")
        p.expect(rb"again-2", 30)
        p.send(b"exit 3\r")
        assert p.wait(30) == 3
    finally:
        p.close()
    assert docker.out("wait", name) == "3"
    docker.ok("rm", name)


# ----------------------------------------------------------------------------------------- exec


def test_exec(docker, sleeper):
    s = sleeper
    out, code, env, user, wd, stdin, missing = parallel(
        lambda: docker("exec", s, "echo", "from exec"),
        lambda: docker("exec", s, "sh", "-c", "echo bye >&2; exit 5"),
        lambda: docker("exec", "-e", "A=1", "-e", "B=two words", s, "sh", "-c", 'echo "$A/$B"'),
        lambda: docker("exec", "-u", "1000:1000", s, "sh", "-c", "id -u; id -g"),
        lambda: docker("exec", "-w", "/etc", s, "pwd"),
        lambda: docker("exec", "-i", s, "sh", "-c", "wc -l; cat /dev/null", input="a\nb\nc\n"),
        lambda: docker("exec", s, "nosuch-cmd"),
    )
    assert out.rc == 0 and out.out == "from exec\n", out
    assert code.rc == 5 and code.err == "bye\n", code
    assert env.out == "1/two words\n", env
    assert user.out == "1000\n1000\n", user
    assert wd.out == "/etc\n", wd
    assert stdin.out.strip() == "3", stdin
    # Docker 25+ gives 127 when the command is not found (126 only when it cannot be
    # executed); 20.10 gave 126 for both.
    assert missing.rc == (127 if docker.modern else 126), missing
    # dockerd sends this message on the exec's output stream (stdout), not as an API error.
    assert 'exec: "nosuch-cmd": executable file not found in $PATH' in missing.out + missing.err, missing


def test_exec_tty_and_detached(docker, sleeper):
    # dockerd 20.10 (API 1.41) sizes an exec TTY only after it starts: give it a moment.
    p = docker.pty("exec", "-it", sleeper, "sh", "-c", "tty; sleep 1; stty size", rows=33, cols=99)
    try:
        p.expect(rb"/dev/pts/\d+\r\r?\n33 99", 30)
        assert p.wait(30) == 0
    finally:
        p.close()
    r = docker.ok("exec", "-d", sleeper, "sh", "-c", "sleep 1; echo done > /tmp/exec-d")
    assert r.out == "", r
    wait_until("exec -d to write its file", lambda: docker("exec", sleeper, "cat", "/tmp/exec-d").out == "done\n", 30)


def test_exec_in_stopped_container_refused(docker):
    name = docker.name("notrunning")
    cid = docker.out("create", "--name", name, *NET, "busybox", "true")
    r = docker("exec", name, "echo")
    assert r.rc == 1, r
    # "Container" in 20.10, "container" in Docker 25+.
    assert f"container {cid} is not running" in r.err.lower(), r.err
    docker.ok("rm", name)


# ------------------------------------------------------------------------ stop / kill / restart


def test_stop_kill_restart_rm(docker):
    trap = docker.name("trap")
    ignore = docker.name("ignore")
    usr1 = docker.name("usr1")
    rst = docker.name("restart")
    parallel(
        lambda: docker.ok("run", "-d", "--name", trap, *NET, "busybox", "sh", "-c",
                          'trap "echo got-term; exit 42" TERM; echo ready; while true; do sleep 0.1; done'),
        lambda: docker.ok("run", "-d", "--name", ignore, *NET, "busybox", "sh", "-c",
                          'trap "" TERM; echo ready; while true; do sleep 0.1; done'),
        lambda: docker.ok("run", "-d", "--name", usr1, *NET, "busybox", "sh", "-c",
                          'trap "echo got-usr1" USR1; echo ready; while true; do sleep 0.1; done'),
        lambda: docker.ok("run", "-d", "--name", rst, *NET, "busybox", "sh", "-c",
                          'trap "exit 0" TERM; echo started; while true; do sleep 0.1; done'),
    )
    for n in (trap, ignore, usr1, rst):
        wait_until(f"{n} to print ready", lambda n=n: docker("logs", n).out.strip() in ("ready", "started"), 30)

    # rm of a running container is refused, in Docker's words.
    cid = docker.inspect(trap, "{{.Id}}")
    r = docker("rm", trap)
    assert r.rc == 1, r
    if docker.modern:
        want = f'cannot remove container "/{trap}": container is running: stop the container before removing or force remove'
    else:
        want = (f"You cannot remove a running container {cid}. Stop the container before attempting "
                "removal or force remove")
    assert want in r.err, r.err

    def stop_trap():
        t0 = time.monotonic()
        r = docker.ok("stop", trap)
        return r, time.monotonic() - t0

    def stop_ignore():
        t0 = time.monotonic()
        r = docker.ok("stop", "--time", "2", ignore)
        return r, time.monotonic() - t0

    def usr1_then_kill():
        docker.ok("kill", "-s", "USR1", usr1)
        wait_until("the USR1 trap to run", lambda: "got-usr1" in docker("logs", usr1).out, 30)
        assert docker.state(usr1)["Running"] is True
        return docker.ok("kill", usr1)

    def restart():
        before = docker.state(rst)["StartedAt"]
        docker.ok("restart", "--time", "5", rst, timeout=120)
        return before

    (r_trap, d_trap), (r_ign, d_ign), r_kill, started_before = parallel(
        stop_trap, stop_ignore, usr1_then_kill, restart)

    assert r_trap.out.strip() == trap
    st = docker.state(trap)
    assert st["Status"] == "exited" and st["ExitCode"] == 42, st
    assert docker.ok("logs", trap).out == "ready\ngot-term\n"
    assert d_trap < 10, f"stop of a container that exits on SIGTERM took {d_trap:.1f}s"

    st = docker.state(ignore)
    assert st["ExitCode"] == 137, st
    assert 2 <= d_ign < 9, f"stop --time 2 of a container ignoring SIGTERM took {d_ign:.1f}s"

    assert r_kill.out.strip() == usr1
    docker.wait_status(usr1, "exited", 30)
    assert docker.state(usr1)["ExitCode"] == 137

    st = docker.state(rst)
    assert st["Running"] is True, st
    assert st["StartedAt"] != started_before, st
    assert ts(st["StartedAt"]) > ts(started_before)
    wait_until("the restarted container to print again",
               lambda: docker("logs", rst).out == "started\nstarted\n", 30)

    # rm -f kills and removes; the name is free again.
    r = docker.ok("rm", "-f", rst)
    assert r.out.strip() == rst
    r = docker("inspect", rst)
    assert r.rc == 1 and f"No such object: {rst}" in r.err, r
    docker.ok("rm", trap, ignore, usr1)
    assert docker.out("ps", "-aq", "--filter", f"name={trap}") == ""


def test_stop_of_a_main_process_without_handlers(docker):
    """The main process is PID 1 of the container: signals it has no handler for are ignored,
    so `docker stop` of a plain `sleep` waits out --time and kills (137), while SIGKILL and a
    trapped SIGTERM work as usual."""
    plain = docker.name("pid1")
    docker.ok("run", "-d", "--name", plain, *NET, "busybox", "sleep", "600")
    assert docker.out("exec", plain, "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '") == "sleep 600"
    t0 = time.monotonic()
    docker.ok("stop", "--time", "2", plain)
    took = time.monotonic() - t0
    st = docker.state(plain)
    assert st["ExitCode"] == 137, st
    assert took >= 2, f"stop --time 2 of a PID 1 without a SIGTERM handler took only {took:.1f}s"
    docker.ok("rm", plain)


def test_stop_and_kill_of_missing_or_stopped(docker):
    r = docker("stop", "no-such-kt")
    assert r.rc == 1 and "No such container: no-such-kt" in r.err, r
    name = docker.name("created")
    cid = docker.out("create", "--name", name, *NET, "busybox", "true")
    # stop of a container that is not running succeeds; kill is refused.
    assert docker.ok("stop", name).out.strip() == name
    r = docker("kill", name)
    assert r.rc == 1 and f"container {cid} is not running" in r.err.lower(), r
    docker.ok("rm", name)


# ------------------------------------------------------------------------------- rename / wait


def test_rename(docker):
    old, new, other = docker.name("old"), docker.name("new"), docker.name("other")
    cid = docker.out("create", "--name", old, *NET, "busybox", "true")
    other_id = docker.out("create", "--name", other, *NET, "busybox", "true")
    docker.ok("rename", old, new)
    assert docker.inspect(new, "{{.Name}}") == f"/{new}"
    assert docker.inspect(new, "{{.Id}}") == cid
    assert docker("inspect", old).rc == 1
    r = docker("rename", new, other)
    assert r.rc == 1, r
    assert f'Conflict. The container name "/{other}" is already in use by container "{other_id}"' in r.err, r.err
    docker.ok("rm", new, other)


def test_wait(docker):
    a, b = docker.name("wa"), docker.name("wb")
    parallel(
        lambda: docker.ok("run", "-d", "--name", a, *NET, "busybox", "sh", "-c", "sleep 2; exit 9"),
        lambda: docker.ok("run", "-d", "--name", b, *NET, "busybox", "sh", "-c", "exit 0"),
    )
    r = docker.ok("wait", a, b)
    assert r.out.split() == ["9", "0"], r
    r = docker("wait", "no-such-kt")
    assert r.rc == 1 and "No such container: no-such-kt" in r.err, r
    docker.ok("rm", a, b)
