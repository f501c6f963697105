"""Volumes: docker volume create/ls/inspect/rm/prune, named and anonymous volumes in containers,
copy-up of image content, in-use rules. On KIC a volume is an ext4 disk on a volume store,
attached to each container VM that mounts it."""

import json
import re
import time

import pytest

from conftest import IS_KIC, _pull_as, sh, wait_until

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def vd(request, tmpdir_session):
    """An endpoint with a default volume store (on KIC a VCH of its own made with
    `--volume-store`), busybox present."""
    if not IS_KIC:
        yield request.getfixturevalue("docker")
        return
    factory = request.getfixturevalue("vch_factory")
    vch, d = factory(["--volume-store", f"{tmpdir_session}/vs:default"])
    _pull_as(d, "library/busybox", "busybox:latest")
    d.vs = f"{tmpdir_session}/vs"
    yield d


def cap(size):
    """`--opt Capacity=` where the endpoint knows it (dockerd's local driver does not)."""
    return ["--opt", f"Capacity={size}"] if IS_KIC else []


def volumes(d, *filters):
    args = ["volume", "ls", "-q"]
    for f in filters:
        args += ["--filter", f]
    return set(d.out(*args).split())


def test_named_volume_outlives_its_containers_and_cannot_be_removed_in_use(vd):
    name = vd.name("data")
    assert vd.out("volume", "create", *cap("64MB"), name) == name
    vd.ok("run", "--rm", "-v", f"{name}:/data", "busybox", "sh", "-c", "echo hi > /data/f", timeout=180)
    assert vd.out("run", "--rm", "-v", f"{name}:/data", "busybox", "cat", "/data/f", timeout=180) == "hi"
    c = vd.out("create", "-v", f"{name}:/data", "busybox", "true")
    r = vd("volume", "rm", name)
    assert r.rc != 0
    assert f"remove {name}: volume is in use - [{c}]" in r.err
    vd.ok("rm", c)
    assert vd.out("volume", "rm", name) == name
    assert name not in volumes(vd)
    r = vd("volume", "inspect", name)
    assert r.rc != 0 and "no such volume" in r.err


def test_inspect_ls_filters_and_events(vd):
    a, b = vd.name("va"), vd.name("vb")
    since = str(int(time.time()) - 1)
    vd.ok("volume", "create", "--label", "team=blue", *cap("16MB"), a)
    vd.ok("volume", "create", b)
    j = json.loads(vd.out("volume", "inspect", a))[0]
    assert j["Name"] == a
    assert j["Driver"] == ("kic" if IS_KIC else "local")
    assert j["Labels"] == {"team": "blue"}
    assert j["Scope"] == "local"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", j["CreatedAt"]) or "+" in j["CreatedAt"]
    if IS_KIC:
        assert j["Mountpoint"].endswith(f"/volumes/{a}/disk.raw")
        assert j["Status"]["Capacity"] == 16 << 20
        assert j["Status"]["VolumeStore"] == "default"
    assert volumes(vd, "label=team=blue") == {a}
    assert volumes(vd, f"name={b}") == {b}
    assert {a, b} <= volumes(vd, "dangling=true")
    c = vd.out("create", "-v", f"{a}:/a", "busybox", "true")
    assert a not in volumes(vd, "dangling=true")
    assert a in volumes(vd, "dangling=false")
    mounts = vd.inspect(c, "{{json .Mounts}}")
    assert len(mounts) == 1
    m = mounts[0]
    assert (m["Type"], m["Name"], m["Destination"], m["RW"]) == ("volume", a, "/a", True)
    r = vd("volume", "ls", "--filter", "colour=red")
    # dockerd 20.10 capitalises it, Docker 25+ does not.
    assert r.rc != 0 and "invalid filter 'colour'" in r.err.lower()
    vd.ok("rm", c)
    vd.ok("volume", "rm", a, b)
    ev = vd.out("events", "--since", since, "--until", str(int(time.time()) + 1),
                "--filter", "type=volume", "--format", "{{.Action}} {{.Actor.ID}}")
    assert f"create {a}" in ev and f"destroy {b}" in ev, ev


def test_anonymous_volumes_go_with_rm_v_and_prune(vd):
    c = vd.out("create", "-v", "/data", "busybox", "true")
    m = vd.inspect(c, "{{json .Mounts}}")
    assert len(m) == 1 and m[0]["Destination"] == "/data" and m[0]["Type"] == "volume"
    anon = m[0]["Name"]
    assert re.fullmatch(r"[0-9a-f]{64}", anon)
    assert anon in volumes(vd)
    vd.ok("rm", "-v", c)
    assert anon not in volumes(vd)
    # Without -v it stays; prune takes anonymous volumes no container uses.
    named = vd.name("keep")
    vd.ok("volume", "create", *cap("8MB"), named)
    c = vd.out("create", "-v", "/data", "busybox", "true")
    anon = vd.inspect(c, "{{json .Mounts}}")[0]["Name"]
    vd.ok("rm", c)
    assert anon in volumes(vd)
    out = vd.out("volume", "prune", "-f")
    assert anon in out
    assert anon not in volumes(vd)
    if vd.modern:  # dockerd before API 1.42 prunes named volumes too
        assert named in volumes(vd)
    vd.ok("volume", "rm", "-f", named)
    # --rm takes the container's anonymous volumes with it.
    before = volumes(vd)
    vd.ok("run", "--rm", "-v", "/scratch", "busybox", "true", timeout=180)
    wait_until("the --rm container's anonymous volume to go", lambda: volumes(vd) == before, 30)


def test_new_volume_starts_with_the_image_content(vd):
    name = vd.name("etc")
    out = vd.out("run", "--rm", "-v", f"{name}:/etc", "busybox", "sh", "-c",
                 "grep ^root: /etc/passwd; ls -A /etc | grep -c lost+found; true", timeout=180)
    lines = out.splitlines()
    assert lines[0].startswith("root:x:0:0:"), out
    assert lines[-1] == "0", f"mkfs's lost+found shows in the volume: {out}"
    # The copy is in the volume itself.
    assert vd.out("run", "--rm", "-v", f"{name}:/x", "busybox", "head", "-1", "/x/passwd",
                  timeout=180).startswith("root:")
    vd.ok("volume", "rm", name)


def test_mount_flag_and_read_only(vd):
    name = vd.name("ro")
    vd.ok("run", "--rm", "--mount", f"type=volume,source={name},target=/m", "busybox",
          "sh", "-c", "echo data > /m/f", timeout=180)
    r = vd("run", "--rm", "--mount", f"type=volume,source={name},target=/m,readonly", "busybox",
           "sh", "-c", "cat /m/f; touch /m/g", timeout=180)
    assert r.rc == 1 and r.out.strip() == "data"
    assert "Read-only file system" in r.err
    r = vd("run", "--rm", "-v", f"{name}:/m:ro", "busybox", "cat", "/m/f", timeout=180)
    assert r.rc == 0 and r.out.strip() == "data"
    vd.ok("volume", "rm", name)


@pytest.mark.kic_only
def test_invalid_options_and_names_are_refused(vd):
    cases = [
        (["--opt", "Capacity=lots"], 'invalid Capacity "lots"'),
        (["--opt", "Capacity=1KB"], "a volume needs at least 1MB"),
        (["--opt", "VolumeStore=nowhere"], 'unknown volume store "nowhere"'),
        (["--opt", "size=1G"], "unknown option: size"),
        (["--driver", "nfs"], 'plugin "nfs" not found'),
    ]
    for args, msg in cases:
        name = vd.name("bad")
        r = vd("volume", "create", *args, name)
        assert r.rc != 0 and msg in r.err, (args, r)
        assert name not in volumes(vd)
    r = vd("volume", "create", "a/b")
    assert r.rc != 0
    assert 'create a/b: "a/b" includes invalid characters for a local volume name' in r.err
    name = vd.name("dup")
    vd.ok("volume", "create", *cap("8MB"), name)
    vd.ok("volume", "create", name)  # the same again: dockerd answers the existing volume
    r = vd("volume", "create", *cap("16MB"), name)
    assert r.rc != 0 and "already exists with other options" in r.err
    vd.ok("volume", "rm", name)


@pytest.mark.kic_only
def test_host_bind_mounts_are_refused(vd):
    for args in (["-v", "/tmp:/data"], ["--mount", "type=bind,source=/tmp,target=/data"]):
        r = vd("run", "--rm", *args, "busybox", "true")
        assert r.rc != 0
        assert "host directory bind mounts are not supported by KIC" in r.err
        assert "docker volume create" in r.err


@pytest.mark.kic_only
def test_two_running_containers_cannot_both_write_a_volume(vd):
    name = vd.name("w")
    a = vd.out("run", "-d", "-v", f"{name}:/w", "busybox", "sleep", "300", timeout=180)
    try:
        r = vd("run", "--rm", "-v", f"{name}:/w", "busybox", "true", timeout=180)
        assert r.rc != 0
        assert f"volume {name} is in use by running container {a}" in r.err
    finally:
        vd.ok("rm", "-f", a, timeout=120)
    vd.ok("run", "--rm", "-v", f"{name}:/w", "busybox", "true", timeout=180)
    vd.ok("volume", "rm", name)


@pytest.mark.kic_only
def test_volumes_survive_an_endpoint_restart(vd):
    name = vd.name("keep")
    vd.ok("run", "--rm", "-v", f"{name}:/k", "busybox", "sh", "-c", "echo kept > /k/f", timeout=180)
    v = vd.vch
    sh([v.machine, "--state-root", str(v.root), "stop", v.name], timeout=120)
    sh([v.machine, "--state-root", str(v.root), "start", v.name], timeout=300)
    wait_until("the VCH to answer again", lambda: vd("version").rc == 0, 60)
    assert name in volumes(vd)
    assert vd.out("run", "--rm", "-v", f"{name}:/k", "busybox", "cat", "/k/f", timeout=180) == "kept"
    vd.ok("volume", "rm", name)


@pytest.mark.kic_only
def test_no_default_store_names_the_fix(docker):
    """The suite's main VCH has no volume store."""
    r = docker("volume", "create", docker.name("nostore"))
    assert r.rc != 0 and "--volume-store PATH:default" in r.err
    r = docker("run", "--rm", "-v", "/data", "busybox", "true")
    assert r.rc != 0 and "--volume-store PATH:default" in r.err
