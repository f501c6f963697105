"""docker run: output, exit codes, options, TTY."""

import re

from conftest import parallel

NET = ("--network", "none")


def test_run_echo(docker):
    r = docker.ok("run", "--rm", *NET, "busybox", "echo", "hi")
    assert r.out == "hi\n"


def test_exit_codes_and_start_errors(docker):
    exit3, missing, no_path, not_exec = parallel(
        lambda: docker("run", "--rm", *NET, "busybox", "sh", "-c", "exit 3"),
        lambda: docker("run", "--rm", *NET, "busybox", "nosuchcmd"),
        lambda: docker("run", "--rm", *NET, "busybox", "/nosuch/path"),
        lambda: docker("run", "--rm", *NET, "busybox", "/etc/passwd"),
    )
    assert exit3.rc == 3, exit3
    # Docker: 127 when the command cannot be found, 126 when it cannot be executed.
    assert missing.rc == 127, missing
    assert 'exec: "nosuchcmd": executable file not found in $PATH' in missing.err, missing.err
    assert no_path.rc == 127, no_path
    assert "/nosuch/path" in no_path.err and "no such file or directory" in no_path.err, no_path.err
    assert not_exec.rc == 126, not_exec
    assert "/etc/passwd" in not_exec.err and "permission denied" in not_exec.err, not_exec.err


def test_run_missing_image_from_registry(docker):
    ref = f"{docker.registry}/library/nosuchimage:latest"
    r = docker("run", "--rm", *NET, ref, "true", timeout=120)
    assert r.rc == 125, r
    assert f"Unable to find image '{ref}' locally" in r.err, r.err
    assert "Error response from daemon" in r.err and ("not found" in r.err or "unknown" in r.err), r.err
    # Nothing was left behind.
    assert docker.out("images", "-q", ref) == ""


def test_stdout_stderr_separated(docker):
    r = docker.ok("run", "--rm", *NET, "busybox", "sh", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2")
    assert r.out == "out1\nout2\n"
    assert r.err == "err1\nerr2\n"


def test_run_options(docker):
    name = docker.name("opts")
    r = docker.ok(
        "run", "--name", name, *NET, "-e", "FOO=bar baz", "-e", "EMPTY=", "-w", "/tmp", "-u", "1000:1000",
        "--hostname", "kichost", "--label", "k1=v1", "--label", "k2=v 2",
        "busybox", "sh", "-c", 'echo "foo=$FOO"; echo "empty=[$EMPTY]"; pwd; id -u; id -g; hostname; cat /etc/hostname',
    )
    assert r.out.splitlines() == ["foo=bar baz", "empty=[]", "/tmp", "1000", "1000", "kichost", "kichost"], r.out
    labels = docker.inspect(name, "{{json .Config.Labels}}")
    assert labels.get("k1") == "v1" and labels.get("k2") == "v 2", labels
    env = docker.inspect(name, "{{json .Config.Env}}")
    assert "FOO=bar baz" in env and "EMPTY=" in env, env
    # The image's PATH is kept alongside.
    assert any(e.startswith("PATH=") for e in env), env
    docker.ok("rm", name)


def test_entrypoint(docker):
    r = docker.ok("run", "--rm", *NET, "--entrypoint", "/bin/echo", "busybox", "a", "b")
    assert r.out == "a b\n"
    # An empty entrypoint clears it: the command runs alone.
    r = docker.ok("run", "--rm", *NET, "--entrypoint", "", "busybox", "echo", "cleared")
    assert r.out == "cleared\n"


def test_stdin_piped(docker):
    r = docker.ok("run", "--rm", "-i", *NET, "busybox", "sh", "-c", "tr a-z A-Z; echo done", input="hello\nworld\n")
    assert r.out == "HELLO\nWORLD\ndone\n"


def test_run_with_tty(docker):
    p = docker.pty("run", "-it", "--rm", *NET, "busybox", "sh", rows=40, cols=120)
    try:
        p.expect(rb"[#$] ", 60)
        p.send(b"tty; stty size; echo end-$((6*7))\r")
        m = p.expect(rb"(/dev/pts/\d+)\r\n(\d+ \d+)\r\nend-42", 30)
        assert m.group(2) == b"40 120", p.buf
        p.send(b"exit 5\r")
        assert p.wait(30) == 5, p.buf
    finally:
        p.close()


def test_tty_merges_streams_and_translates_newlines(docker):
    p = docker.pty("run", "-t", "--rm", *NET, "busybox", "sh", "-c", "echo to-out; echo to-err >&2; exit 4")
    try:
        # The container's terminal turns \n into \r\n; the CLI does not put this terminal in
        # raw mode without -i, so its own onlcr adds one more \r.
        p.expect(rb"to-out\r\r\nto-err\r\r\n", 60)
        assert p.wait(30) == 4
    finally:
        p.close()


def test_detached_run_prints_id(docker):
    r = docker.ok("run", "-d", *NET, "busybox", "sh", "-c", "echo bg")
    cid = r.out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid), r.out
    assert docker.out("wait", cid) == "0"
    assert docker.out("logs", cid) == "bg"
    docker.ok("rm", cid)
