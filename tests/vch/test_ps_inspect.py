"""ps (flags and filters), inspect fields and --format, top, stats, port, names under concurrency."""

import datetime
import re
import threading

import pytest

from conftest import parallel

NET = ("--network", "none")


@pytest.fixture(scope="module")
def fleet(docker):
    """Three containers with one label: exited (3), running, created (made last, in that order)."""
    tag = docker.name("fleet")
    names = {"exited": docker.name("exited"), "running": docker.name("running"), "created": docker.name("created")}
    lbl = ("--label", f"kt={tag}")
    parallel(
        lambda: docker.ok("run", "-d", "--name", names["exited"], *lbl, *NET, "busybox", "sh", "-c", "exit 3"),
        lambda: docker.ok("run", "-d", "--name", names["running"], *lbl, "--label", "role=server", *NET,
                          "-m", "256m", "--cpus", "1", "-e", "ONE=1", "busybox", "sleep", "900"),
    )
    docker.ok("wait", names["exited"])
    docker.ok("create", "--name", names["created"], *lbl, *NET, "debian", "true")
    ids = {k: docker.inspect(v, "{{.Id}}") for k, v in names.items()}
    yield tag, names, ids
    docker("rm", "-f", *names.values())


def q(docker, *args):
    return docker.out("ps", "-q", *args).split()


def test_ps_flags(docker, fleet):
    tag, names, ids = fleet
    lbl = f"label=kt={tag}"
    all_short = q(docker, "-a", "--filter", lbl)
    assert sorted(all_short) == sorted(i[:12] for i in ids.values()), all_short
    assert q(docker, "--filter", lbl) == [ids["running"][:12]]
    assert sorted(q(docker, "-a", "--no-trunc", "--filter", lbl)) == sorted(ids.values())
    # Newest first; -n limits (and implies -a).
    assert q(docker, "-n", "1") == [ids["created"][:12]]
    assert q(docker, "-a", "--filter", lbl)[0] == ids["created"][:12]
    # Default table: header and a row per running container with its name last.
    table = docker.out("ps", "--filter", lbl).splitlines()
    assert re.match(r"CONTAINER ID\s+IMAGE\s+COMMAND\s+CREATED\s+STATUS\s+PORTS\s+NAMES", table[0]), table
    assert len(table) == 2 and table[1].split()[-1] == names["running"] and table[1].startswith(ids["running"][:12])
    fmt = docker.out("ps", "-a", "--filter", lbl, "--format", "{{.Names}}|{{.Image}}|{{.Status}}|{{.Command}}")
    rows = {r.split("|")[0]: r.split("|")[1:] for r in fmt.splitlines()}
    assert rows[names["running"]][0] == "busybox" and rows[names["running"]][1].startswith("Up "), rows
    assert rows[names["exited"]][1].startswith("Exited (3) "), rows
    assert rows[names["created"]][0] == "debian" and rows[names["created"]][1] == "Created", rows
    assert rows[names["running"]][2] == '"sleep 900"', rows
    labels = docker.out("ps", "--filter", lbl, "--format", '{{.Label "role"}}')
    assert labels == "server"


def test_ps_filters(docker, fleet):
    tag, names, ids = fleet
    lbl = ("--filter", f"label=kt={tag}")
    short = {k: v[:12] for k, v in ids.items()}
    assert q(docker, "-a", *lbl, "--filter", "status=exited") == [short["exited"]]
    assert q(docker, "-a", *lbl, "--filter", "status=running") == [short["running"]]
    assert q(docker, "-a", *lbl, "--filter", "status=created") == [short["created"]]
    assert q(docker, "-a", *lbl, "--filter", "exited=3") == [short["exited"]]
    assert q(docker, "-a", *lbl, "--filter", "exited=0") == []
    assert q(docker, "-a", "--filter", f"name={names['exited']}") == [short["exited"]]
    assert q(docker, "-a", "--filter", f"id={ids['running'][:16]}") == [short["running"]]
    assert sorted(q(docker, "-a", *lbl, "--filter", "ancestor=busybox")) == sorted([short["exited"], short["running"]])
    assert q(docker, "-a", *lbl, "--filter", "ancestor=debian") == [short["created"]]
    assert q(docker, "-a", "--filter", "label=role=server") == [short["running"]]
    assert q(docker, "-a", "--filter", "label=kt=nothing-has-this") == []
    # Two filters of one kind are ORed; of different kinds ANDed.
    both = q(docker, "-a", *lbl, "--filter", "status=exited", "--filter", "status=created")
    assert sorted(both) == sorted([short["exited"], short["created"]])
    r = docker("ps", "--filter", "bogus=1")
    # dockerd 20.10 says "Invalid filter", 28 "invalid filter".
    assert r.rc == 1 and "invalid filter 'bogus'" in r.err.lower(), r


def test_inspect_fields(docker, fleet):
    tag, names, ids = fleet
    run = docker.inspect(names["running"])
    assert run["Id"] == ids["running"]
    assert run["Name"] == "/" + names["running"]
    assert run["State"]["Status"] == "running" and run["State"]["Running"] is True
    assert run["State"]["ExitCode"] == 0
    assert run["Config"]["Image"] == "busybox"
    assert run["Image"] == docker.inspect("busybox", "{{.Id}}"), run["Image"]
    assert run["Image"].startswith("sha256:")
    assert "ONE=1" in run["Config"]["Env"]
    assert run["Config"]["Labels"] == {"kt": tag, "role": "server"}
    assert run["Config"]["Cmd"] == ["sleep", "900"]
    assert run["HostConfig"]["Memory"] == 256 * 1024 * 1024
    assert run["HostConfig"]["NanoCpus"] == 1_000_000_000
    started = run["State"]["StartedAt"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", started), started
    when = datetime.datetime.fromisoformat(started[:19] + "+00:00")
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 3600, started
    assert run["Created"] <= started or run["Created"][:19] <= started[:19]

    ex = docker.inspect(names["exited"])
    assert ex["State"]["Status"] == "exited" and ex["State"]["ExitCode"] == 3 and ex["State"]["Running"] is False
    # (dockerd can stamp FinishedAt a moment before StartedAt for an instant exit: no order check.)
    assert not ex["State"]["FinishedAt"].startswith("0001-"), ex["State"]
    cr = docker.inspect(names["created"])
    assert cr["State"]["Status"] == "created"
    assert cr["State"]["StartedAt"].startswith("0001-01-01"), cr["State"]
    assert cr["Config"]["Image"] == "debian"

    # --format templates, and inspect of several objects at once.
    out = docker.out("inspect", "--format", "{{.Name}} {{.State.Status}} {{.State.ExitCode}}",
                     names["exited"], names["running"])
    assert out.splitlines() == [f"/{names['exited']} exited 3", f"/{names['running']} running 0"]
    assert docker.out("inspect", "-f", '{{index .Config.Labels "role"}}', names["running"]) == "server"
    assert docker.out("container", "inspect", "-f", "{{.State.Pid}}", names["exited"]) == "0"
    r = docker("inspect", "no-such-thing-kt")
    assert r.rc == 1 and "No such object: no-such-thing-kt" in r.err, r


def test_top_stats_port(docker, fleet):
    tag, names, ids = fleet
    top = docker.out("top", names["running"]).splitlines()
    assert "PID" in top[0].split() and "CMD" in top[0].split(), top
    assert any(line.endswith("sleep 900") for line in top[1:]), top
    r = docker("top", names["exited"])
    assert r.rc == 1 and f"container {ids['exited']} is not running" in r.err.lower(), r

    stats = docker.out("stats", "--no-stream", "--format", "{{.Name}}|{{.ID}}|{{.MemUsage}}|{{.CPUPerc}}",
                       names["running"], timeout=60)
    name, cid, mem, cpu = stats.split("|")
    assert name == names["running"] and ids["running"].startswith(cid), stats
    assert re.fullmatch(r"[\d.]+[KMG]?i?B / [\d.]+[KMG]i?B", mem), stats
    assert re.fullmatch(r"[\d.]+%", cpu), stats

    r = docker.ok("port", names["running"])
    assert r.out == "", r


def test_name_conflicts_under_concurrency(docker):
    name = docker.name("race")
    n = 6
    barrier = threading.Barrier(n)

    def create():
        barrier.wait()
        return docker("create", "--name", name, *NET, "busybox", "true")

    results = parallel(*[create for _ in range(n)])
    winners = [r for r in results if r.rc == 0]
    losers = [r for r in results if r.rc != 0]
    assert len(winners) == 1, results
    cid = winners[0].out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid), winners
    for r in losers:
        assert r.rc == 1, r
        assert (f'Conflict. The container name "/{name}" is already in use by container "{cid}". '
                "You have to remove (or rename) that container to be able to reuse that name.") in r.err, r.err
    assert q(docker, "-a", "--no-trunc", "--filter", f"name=^/{name}$") == [cid]
    # A run with the taken name fails before anything starts.
    r = docker("run", "--name", name, *NET, "busybox", "true")
    assert r.rc == 125 and "Conflict." in r.err, r
    docker.ok("rm", name)
    # The name is free again.
    docker.ok("create", "--name", name, *NET, "busybox", "true")
    docker.ok("rm", name)


def test_generated_names_are_unique(docker):
    ids = [docker.out("create", *NET, "busybox", "true") for _ in range(5)]
    try:
        names = [docker.inspect(i, "{{.Name}}") for i in ids]
        assert len(set(names)) == 5, names
        for n in names:
            # Docker's generator: adjective_surname, a digit appended on a retry.
            assert re.fullmatch(r"/[a-z]+_[a-z]+\d?", n), names
    finally:
        docker("rm", *ids)
