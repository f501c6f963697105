"""docker cp (both directions; running, exited and never-started containers; volumes; tar on
stdin/stdout), the path stat of HEAD /containers/{id}/archive, archives that try to leave their
target, docker diff, docker commit, docker export.

Every expectation here was taken from a real dockerd (KIC_TEST_TARGET=dockerd). On KIC a
stopped container's cp/diff/commit/export boots a maintenance VM, so the tests use few
containers and group their checks per container.

What dockerd does that is easy to get wrong:
- cp into a container keeps the archive's (the host file's) uid/gid, mode and mtime, with or
  without -a when the container has no USER. With a USER, -a chowns to it, but dockerd looks
  the name up in the daemon host's passwd (20.10: `getent unable to find entry "1000:1000" in
  passwd database` for -u 1000:1000), so that case is host-dependent and not tested here.
  cp out of a container writes files owned by the user running the CLI, -a or not.
- A destination that is a symlink (even a dangling one) is resolved by the CLI through the
  stat header's linkTarget: the copy lands where it points and the link stays.
- `SRC/.` copies the contents into an existing directory and leaves that directory's own mode.
- A directory copied to an existing directory goes inside it (`cp -a` semantics).
- The stat header is base64 JSON {name, size, mode (Go os.FileMode bits), mtime, linkTarget};
  a symlink's linkTarget is the link fully resolved inside the container, as an absolute path.
- Tar headers from dockerd carry the file type bits in the mode field (0100644, 040755, 0120777).
- docker diff's order follows the storage driver's directory walk (not stable between runs), so
  it is compared as a set, with every listed parent before its children.
"""

import base64
import datetime
import io
import json
import os
import re
import stat
import tarfile
from pathlib import Path

import docker as dockersdk
import pytest

from conftest import IS_KIC, _pull_as, t, wait_until

pytestmark = pytest.mark.timeout(900)

NET = ("--network", "none")
# A stopped container's cp/diff/commit/export boots a maintenance VM on KIC.
SLOW = 180
MTIME = 1_000_000_000  # 2001-09-09T01:46:40Z: any fixed time the copies must keep
# Go's os.FileMode bits in the stat header.
MODE_DIR = 1 << 31
MODE_SYMLINK = 1 << 27
MODE_SETUID = 1 << 23
MODE_STICKY = 1 << 20


@pytest.fixture(scope="module")
def ad(request, tmpdir_session):
    """An endpoint with a default volume store (on KIC a VCH of its own made with
    `--volume-store`, as in test_volumes.py), busybox present."""
    if not IS_KIC:
        yield request.getfixturevalue("docker")
        return
    factory = request.getfixturevalue("vch_factory")
    _, d = factory(["--volume-store", f"{tmpdir_session}/vs-archive:default"])
    _pull_as(d, "library/busybox", "busybox:latest")
    yield d


@pytest.fixture(scope="module")
def sdk(ad):
    """The Python Docker SDK on the same endpoint (for raw archive API calls)."""
    # A fixed version: "auto" would ask the endpoint before trust_env can be turned off.
    version = "%d.%d" % ad.api
    client = dockersdk.from_env(environment=ad.env, version=version, timeout=int(t(120)))
    # python-requests would let REQUESTS_CA_BUNDLE replace the endpoint's CA (see README).
    client.api.trust_env = False
    yield client
    client.close()


@pytest.fixture(scope="module")
def host_tree(tmp_path_factory):
    """Host files to copy in: f.txt (uid 1234:2345, 0640) and tree/ (0751; nested dirs, a
    symlink, a 0750 dir, a 4755 file, an empty 0700 dir, a file owned by 1234), fixed mtimes."""
    root = tmp_path_factory.mktemp("hosttree")
    f = root / "f.txt"
    f.write_text("hello from the host\n")
    os.chown(f, 1234, 2345)
    os.chmod(f, 0o640)
    tree = root / "tree"
    (tree / "sub" / "deep").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "a").write_text("a\n")
    (tree / "sub" / "deep" / "b").write_text("b in deep\n")
    (tree / "suid").write_text("#!/bin/sh\necho suid\n")
    (tree / "link").symlink_to("sub/deep/b")
    os.chown(tree / "a", 1234, 2345)
    os.chmod(tree / "a", 0o644)
    os.chmod(tree / "sub" / "deep" / "b", 0o600)
    os.chmod(tree / "suid", 0o4755)
    os.chmod(tree / "sub", 0o750)
    os.chmod(tree / "sub" / "deep", 0o755)
    os.chmod(tree / "empty", 0o700)
    os.chmod(tree, 0o751)
    for p in (f, tree / "a", tree / "sub" / "deep" / "b", tree / "suid"):
        os.utime(p, (MTIME, MTIME))
    return root


def host_listing(base, uid=None, gid=None):
    """{relative path: (type, mode, uid, gid, size, mtime, link)} under `base` ("." is base
    itself). Directories carry no size or mtime (they differ by filesystem and by what was
    added later), symlinks no mtime. uid/gid override the owners (copies out of a container
    belong to the CLI's user)."""
    out = {}
    base = Path(base)
    for p in [base, *sorted(base.rglob("*"))]:
        st = os.lstat(p)
        rel = "." if p == base else "./" + str(p.relative_to(base))
        if stat.S_ISDIR(st.st_mode):
            kind, size, mtime, link = "d", None, None, None
        elif stat.S_ISLNK(st.st_mode):
            kind, size, mtime, link = "l", st.st_size, None, os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            kind, size, mtime, link = "f", st.st_size, int(st.st_mtime), None
        else:
            raise AssertionError(f"unexpected file type at {p}: {st}")
        out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid if uid is None else uid,
                    st.st_gid if gid is None else gid, size, mtime, link)
    return out


# One line per file: name|type|octal mode|uid|gid|size|mtime, then "L name|target" per symlink.
LIST_SCRIPT = r"""
for base in "$@"; do
  echo "== $base"
  [ -e "$base" ] || { echo "missing"; continue; }
  cd "$base" && find . -exec stat -c '%n|%F|%a|%u|%g|%s|%Y' {} + && find . -type l | while read -r l; do
    echo "L $l|$(readlink "$l")"; done
done
"""


def parse_listings(text):
    """The output of LIST_SCRIPT -> {base: listing like host_listing, or None if missing}."""
    result, cur, links = {}, None, {}
    kinds = {"directory": "d", "symbolic link": "l", "regular file": "f"}
    for line in text.splitlines():
        if line.startswith("== "):
            cur = line[3:]
            result[cur] = {}
            links[cur] = {}
        elif line == "missing":
            result[cur] = None
        elif line.startswith("L "):
            name, target = line[2:].split("|", 1)
            links[cur][name] = target
        elif line:
            name, kind, mode, uid, gid, size, mtime = line.split("|")
            k = kinds.get(kind)
            assert k, f"unexpected file type {kind!r} in {line!r}"
            result[cur][name] = (k, int(mode, 8), int(uid), int(gid),
                                 None if k == "d" else int(size), int(mtime) if k == "f" else None, None)
    for base, listing in result.items():
        for name, target in links.get(base, {}).items():
            listing[name] = listing[name][:6] + (target,)
    return result


def listings_in(d, container, *bases, timeout=60):
    r = d.ok("exec", container, "sh", "-c", LIST_SCRIPT, "sh", *bases, timeout=timeout)
    return parse_listings(r.out)


def owned(listing, uid, gid):
    return {k: v[:2] + (uid, gid) + v[4:] for k, v in listing.items()}


def tar_members(data):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return {m.name: m for m in tf.getmembers()}


def stat_header(sdk, container, path):
    """HEAD /containers/{id}/archive?path=: (status code, decoded X-Docker-Container-Path-Stat)."""
    api = sdk.api
    r = api.head(api._url("/containers/{0}/archive", container), params={"path": path})
    h = r.headers.get("X-Docker-Container-Path-Stat")
    return r.status_code, (json.loads(base64.b64decode(h)) if h else None)


def mtime_seconds(s):
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)", s)
    assert m, f"stat mtime is not RFC 3339: {s!r}"
    tz = "+00:00" if m.group(2) == "Z" else m.group(2)
    return int(datetime.datetime.fromisoformat(m.group(1) + tz).timestamp())


def stdin_tar():
    """A tar for `docker cp -`: dir in/ (0700, 42:43) with s.txt (0640, 42:43), fixed mtimes."""
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("in")
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = tarfile.DIRTYPE, 0o700, 42, 43, MTIME
        tf.addfile(ti)
        data = b"from stdin\n"
        ti = tarfile.TarInfo("in/s.txt")
        ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = len(data), 0o640, 42, 43, MTIME
        tf.addfile(ti, io.BytesIO(data))
    return b.getvalue()


# ------------------------------------------------------------------------------ cp, running


@pytest.fixture(scope="module")
def running(ad):
    """A running container with a named volume at /vol; removed (with the volume) at the end."""
    name, vol = ad.name("cp-run"), ad.name("cpvol")
    ad.ok("run", "-d", "--name", name, *NET, "-v", f"{vol}:/vol", "busybox", "sleep", "3600", timeout=180)
    yield name, vol
    ad("rm", "-f", name, timeout=120)
    ad("volume", "rm", "-f", vol, timeout=120)


def test_cp_running_container_round_trip(ad, running, host_tree, tmp_path):
    c, vol = running
    tree, f = host_tree / "tree", host_tree / "f.txt"
    src = host_listing(tree)
    ad.ok("exec", c, "mkdir", "-m", "0700", "/dot")

    # Host -> container.
    ad.ok("cp", str(f), f"{c}:/tmp/")                 # into an existing directory
    ad.ok("cp", "-a", str(f), f"{c}:/tmp/fa.txt")     # to a new name, -a (no USER: same owner)
    ad.ok("cp", str(tree), f"{c}:/tmp")               # a directory into an existing directory
    ad.ok("cp", str(tree), f"{c}:/copy")              # a directory to a new name ...
    ad.ok("cp", str(tree), f"{c}:/copy")              # ... and again: now it goes inside it
    ad.ok("cp", f"{tree}/.", f"{c}:/dot")             # contents into an existing directory
    ad.ok("cp", f"{tree}/.", f"{c}:/fromdot")         # contents to a new name: the dir itself
    ad.ok("cp", str(tree), f"{c}:/vol/")              # into the named volume
    ad.ok("cp", "-", f"{c}:/tmp", input=stdin_tar())  # a tar on stdin

    got = listings_in(ad, c, "/tmp/tree", "/copy", "/dot", "/fromdot", "/vol/tree", "/tmp/in")
    assert got["/tmp/tree"] == src
    assert got["/fromdot"] == src
    assert got["/vol/tree"] == src
    copy = {k: v for k, v in got["/copy"].items() if not k.startswith("./tree")}
    assert copy == src, "a directory copied to a new name is that directory under the new name"
    nested = {"." + k[len("./tree"):]: v for k, v in got["/copy"].items() if k.startswith("./tree")}
    assert nested == src, "a directory copied onto an existing directory goes inside it"
    dot = dict(got["/dot"])
    assert dot.pop(".")[1] == 0o700, "SRC/. must leave the destination directory's own mode"
    assert dot == {k: v for k, v in src.items() if k != "."}
    assert got["/tmp/in"] == {
        ".": ("d", 0o700, 42, 43, None, None, None),
        "./s.txt": ("f", 0o640, 42, 43, 11, MTIME, None),
    }
    size = f.stat().st_size
    r = ad.ok("exec", c, "stat", "-c", "%n|%a|%u|%g|%s|%Y", "/tmp/f.txt", "/tmp/fa.txt")
    assert r.out.splitlines() == [
        f"/tmp/f.txt|640|1234|2345|{size}|{MTIME}",
        f"/tmp/fa.txt|640|1234|2345|{size}|{MTIME}",
    ], "cp keeps the host file's owner, mode and mtime (with or without -a when the container has no USER)"
    assert ad.out("exec", c, "cat", "/tmp/fa.txt", "/dot/sub/deep/b") == "hello from the host\nb in deep"
    assert ad.out("exec", c, "/tmp/tree/suid") == "suid"
    # A file onto an existing file replaces it, owner and mode included.
    ad.ok("cp", str(tree / "suid"), f"{c}:/tmp/fa.txt")
    assert ad.out("exec", c, "stat", "-c", "%a|%u|%g|%Y", "/tmp/fa.txt") == f"4755|0|0|{MTIME}"
    assert ad.out("exec", c, "/tmp/fa.txt") == "suid"

    # Container -> host: owned by the CLI's user, modes, mtimes and links kept.
    me = (os.getuid(), os.getgid())
    out = tmp_path / "out"
    out.mkdir()
    ad.ok("cp", f"{c}:/tmp/tree", str(out))                      # into an existing directory
    ad.ok("cp", f"{c}:/tmp/f.txt", str(out / "renamed"))         # a file to a new name
    (out / "dotdir").mkdir(mode=0o711)
    os.chmod(out / "dotdir", 0o711)
    ad.ok("cp", f"{c}:/tmp/tree/.", str(out / "dotdir"))         # contents into an existing dir
    ad.ok("cp", f"{c}:/vol/tree", str(out / "fromvol"))          # out of the volume, new name
    ad.ok("cp", "-L", f"{c}:/tmp/tree/link", str(out / "followed"))  # -L follows the link
    ad.ok("cp", f"{c}:/tmp/tree/link", str(out / "link"))           # without, the link itself
    assert host_listing(out / "tree") == owned(src, *me)
    assert host_listing(out / "fromvol") == owned(src, *me)
    dd = host_listing(out / "dotdir")
    assert dd.pop(".")[1] == 0o711
    assert dd == {k: v for k, v in owned(src, *me).items() if k != "."}
    st = os.lstat(out / "renamed")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == (0o640, *me, MTIME)
    assert (out / "renamed").read_text() == "hello from the host\n"
    assert not (out / "followed").is_symlink() and (out / "followed").read_text() == "b in deep\n"
    assert os.readlink(out / "link") == "sub/deep/b"

    # A tar on stdout: entries named from the source's base name, the container's owners.
    r = ad("cp", f"{c}:/tmp/tree", "-", input=b"")
    assert r.rc == 0, r.err
    members = tar_members(r.out)
    assert sorted(members) == sorted(["tree"] + [f"tree/{k[2:]}" for k in src if k != "."]), sorted(members)
    a = members["tree/a"]
    # dockerd's (Go's) tar headers carry the file type bits in the mode field too.
    assert (a.mode, a.uid, a.gid, a.mtime, a.size) == (0o100644, 1234, 2345, MTIME, 2)
    assert members["tree/suid"].mode == 0o104755 and members["tree/sub"].mode == 0o40750
    assert members["tree/link"].mode == 0o120777 and members["tree/empty"].mode == 0o40700
    assert members["tree/sub"].isdir() and members["tree/link"].issym()
    assert members["tree/link"].linkname == "sub/deep/b"
    r = ad("cp", f"{c}:/tmp/tree/.", "-", input=b"")
    assert r.rc == 0, r.err
    # dockerd names them ./a ...; KIC a ... (tar readers take both as the same path).
    names = {n[2:] if n.startswith("./") else n for n in tar_members(r.out)}
    assert {"a", "sub/deep/b"} <= names and not any(n.startswith("tree") for n in names), sorted(names)

    # What another container sees in the volume once this one is gone.
    ad.ok("rm", "-f", c, timeout=120)
    r = ad.ok("run", "--rm", *NET, "-v", f"{vol}:/v", "busybox", "sh", "-c", LIST_SCRIPT, "sh", "/v/tree",
              timeout=180)
    assert parse_listings(r.out)["/v/tree"] == src


def test_cp_archive_mode_gives_files_to_the_containers_user(ad, host_tree):
    """With a USER, `cp -a` makes the copies the user's; without -a they keep the archive's
    owners. (`nobody` is 65534:65534 in the test image and on Debian hosts, where dockerd looks
    it up.)"""
    c = ad.name("cp-user")
    ad.ok("run", "-d", "--name", c, *NET, "-u", "nobody", "busybox", "sleep", "3600", timeout=180)
    try:
        f = host_tree / "f.txt"
        ad.ok("cp", str(f), f"{c}:/tmp/plain.txt")
        ad.ok("cp", "-a", str(f), f"{c}:/tmp/archive.txt")
        r = ad.ok("exec", c, "stat", "-c", "%n|%u|%g", "/tmp/plain.txt", "/tmp/archive.txt")
        assert r.out.splitlines() == ["/tmp/plain.txt|1234|2345", "/tmp/archive.txt|65534|65534"], r.out
    finally:
        ad("rm", "-f", c, timeout=120)


# ------------------------------------------------------------------- errors and path stats


@pytest.fixture(scope="module")
def plain(ad):
    """A running container for error cases, symlinked destinations and stat headers."""
    name = ad.name("cp-plain")
    ad.ok("run", "-d", "--name", name, *NET, "busybox", "sh", "-c",
          "mkdir -p /s/sub/deep && echo bee > /s/sub/deep/b && ln -s sub/deep/b /s/link && "
          "echo x > /s/suid && chmod 4755 /s/suid && chmod 0750 /s/sub && touch -d @1000000000 /s/suid && "
          "mkdir -p /lk/d2 && echo inside > /lk/d2/inside && echo old > /lk/target && ln -s target /lk/filelink && "
          "ln -s /lk/d2 /lk/dirlink && ln -s nowhere /lk/dangling && "
          "echo ready > /s/ready && exec sleep 3600", timeout=180)
    wait_until(f"{name} to set up /s", lambda: ad("exec", name, "cat", "/s/ready").out.strip() == "ready", 60)
    yield name
    ad("rm", "-f", name, timeout=120)


def test_cp_errors_use_dockers_messages(ad, plain, host_tree, tmp_path):
    c = plain
    tree, f = host_tree / "tree", host_tree / "f.txt"
    (tmp_path / "afile").write_text("x")

    def fails(*args, msg, input=None):
        r = ad("cp", *args, input=input)
        err = r.err.decode() if isinstance(r.err, bytes) else r.err
        assert r.rc == 1, (args, r)
        assert msg in err, (args, err)
        return err

    # A source that does not exist in the container (the daemon's message, named as given).
    fails(f"{c}:/nosuch", str(tmp_path), msg=f"Error response from daemon: Could not find the file /nosuch in container {c}")
    fails(f"{c}:/nosuch/deeper", "-", msg=f"Could not find the file /nosuch/deeper in container {c}", input=b"")
    # A destination whose parent does not exist.
    fails(str(f), f"{c}:/nosuchdir/f", msg=f"Error response from daemon: Could not find the file /nosuchdir in container {c}")
    fails(str(f), f"{c}:/nosuchdir/", msg="no such directory")
    fails(f"{c}:/etc/passwd", str(tmp_path / "nosuch" / "x"),
          msg=f'invalid output path: directory "{tmp_path}/nosuch" does not exist')
    # A directory onto a file, both ways.
    fails(str(tree), f"{c}:/etc/passwd", msg="cannot copy directory")
    fails(f"{c}:/s", str(tmp_path / "afile"), msg="cannot copy directory")
    # A tar on stdin needs a directory.
    fails("-", f"{c}:/etc/passwd", msg=f'destination "{c}:/etc/passwd" must be a directory', input=stdin_tar())
    fails("-", f"{c}:/nosuchdir", msg=f'destination "{c}:/nosuchdir" must be a directory', input=stdin_tar())
    # Not a tar at all.
    r = ad("cp", "-", f"{c}:/tmp", input=b"this is not a tar archive\n" * 40)
    assert r.rc == 1 and b"Error response from daemon" in r.err, r
    # No such container.
    fails(str(f), "nosuch-container-x:/tmp", msg="Error response from daemon: No such container: nosuch-container-x")
    # Nothing was written by the failed copies.
    r = ad.ok("exec", c, "sh", "-c", 'for p in "$@"; do [ -e "$p" ] && echo "$p"; done; true', "sh",
              "/nosuchdir", "/etc/passwd/tree", "/tmp/in", "/tmp/tree", "/tmp/f.txt")
    assert r.out == "", f"failed copies left files behind: {r.out}"
    assert sorted(os.listdir(tmp_path)) == ["afile"]
    assert (tmp_path / "afile").read_text() == "x"


def test_cp_through_symlinks(ad, plain, host_tree, tmp_path):
    """The CLI resolves a symlinked destination with the stat header's linkTarget: the copy
    lands where the link points (a dangling one included), the link stays. Out of a
    container, a link is copied as a link unless -L or a trailing slash follows it."""
    c, f = plain, host_tree / "f.txt"
    ad.ok("cp", str(f), f"{c}:/lk/filelink")
    ad.ok("cp", str(f), f"{c}:/lk/dirlink")
    ad.ok("cp", str(f), f"{c}:/lk/dangling")
    r = ad.ok("exec", c, "sh", "-c", "cd /lk && for l in filelink dirlink dangling; do readlink $l; done && "
              "stat -c '%n|%a|%u|%g' target d2/f.txt nowhere && cat target")
    assert r.out.splitlines() == [
        "target", "/lk/d2", "nowhere",
        "target|640|1234|2345", "d2/f.txt|640|1234|2345", "nowhere|640|1234|2345",
        "hello from the host",
    ], r.out
    out = tmp_path / "out"
    out.mkdir()
    ad.ok("cp", f"{c}:/lk/dirlink", str(out / "asis"))
    ad.ok("cp", f"{c}:/lk/dirlink/", str(out / "slash"))
    ad.ok("cp", "-L", f"{c}:/lk/dirlink", str(out / "followed"))
    assert os.readlink(out / "asis") == "/lk/d2"
    for d in ("slash", "followed"):
        assert not (out / d).is_symlink() and sorted(os.listdir(out / d)) == ["f.txt", "inside"], d
        assert (out / d / "inside").read_text() == "inside\n"


def test_archive_path_stat_header(ad, sdk, plain):
    c = plain
    cid = ad.out("inspect", "--format", "{{.Id}}", c)
    code, s = stat_header(sdk, cid, "/s/sub/deep/b")
    assert code == 200 and s is not None
    assert set(s) == {"name", "size", "mode", "mtime", "linkTarget"}, s
    assert (s["name"], s["size"], s["mode"], s["linkTarget"]) == ("b", 4, 0o644, "")
    secs = int(ad.out("exec", c, "stat", "-c", "%Y", "/s/sub/deep/b"))
    assert mtime_seconds(s["mtime"]) == secs
    # Directories, setuid files and symlinks carry Go's os.FileMode type bits.
    _, s = stat_header(sdk, cid, "/s/sub")
    assert (s["name"], s["mode"]) == ("sub", MODE_DIR | 0o750), s
    _, s = stat_header(sdk, cid, "/s/sub/")
    assert (s["name"], s["mode"]) == ("sub", MODE_DIR | 0o750), s
    _, s = stat_header(sdk, cid, "/s/suid")
    assert (s["name"], s["size"], s["mode"], mtime_seconds(s["mtime"])) == ("suid", 2, MODE_SETUID | 0o755, MTIME), s
    _, s = stat_header(sdk, cid, "/tmp")
    assert s["mode"] == MODE_DIR | MODE_STICKY | 0o777, s
    # A symlink: its own size and mode; linkTarget is the link resolved in the container.
    _, s = stat_header(sdk, cid, "/s/link")
    assert (s["name"], s["size"], s["mode"], s["linkTarget"]) == \
        ("link", len("sub/deep/b"), MODE_SYMLINK | 0o777, "/s/sub/deep/b"), s
    _, s = stat_header(sdk, cid, "/lk/dangling")
    assert (s["mode"], s["linkTarget"]) == (MODE_SYMLINK | 0o777, "/lk/nowhere"), s
    _, s = stat_header(sdk, cid, "/lk/dirlink")
    assert (s["name"], s["mode"], s["linkTarget"]) == ("dirlink", MODE_SYMLINK | 0o777, "/lk/d2"), s
    _, s = stat_header(sdk, cid, "/")
    assert s["name"] == "/" and s["mode"] & MODE_DIR, s
    # Relative and unclean paths are taken from the root.
    _, s = stat_header(sdk, cid, "s/sub/deep/../../suid")
    assert s["name"] == "suid", s
    # Missing: 404 without a stat; GET says which file and container (as the client named it).
    assert stat_header(sdk, cid, "/s/nosuch") == (404, None)
    with pytest.raises(dockersdk.errors.NotFound) as e:
        sdk.containers.get(cid).get_archive("/s/nosuch")
    assert f"Could not find the file /s/nosuch in container {cid}" in str(e.value.explanation)
    assert stat_header(sdk, "nosuch-container-y", "/")[0] == 404
    # get_archive hands back the same stat and a tar of the path.
    bits, s = sdk.containers.get(cid).get_archive("/s/sub")
    members = tar_members(b"".join(bits))
    assert sorted(members) == ["sub", "sub/deep", "sub/deep/b"], sorted(members)
    assert s["name"] == "sub" and s["mode"] == MODE_DIR | 0o750


# ------------------------------------------------------------------------- cp, stopped ones

def test_cp_exited_container(ad, host_tree, tmp_path):
    """An exited container: copies in and out while it is stopped, seen by its next start."""
    name = ad.name("cp-exited")
    tree, f = host_tree / "tree", host_tree / "f.txt"
    script = ("if [ -e /box/made ]; then sh -c \"$0\" sh /box; else mkdir /box && echo made > /box/made && "
              "chown 1234:2345 /box/made && chmod 0604 /box/made && touch -d @1000000000 /box/made && echo first; fi")
    r = ad.ok("run", "--name", name, *NET, "busybox", "sh", "-c", script, LIST_SCRIPT, timeout=180)
    assert r.out == "first\n", r
    try:
        assert ad.state(name)["Status"] == "exited"
        ad.ok("cp", str(f), f"{name}:/box/", timeout=SLOW)
        ad.ok("cp", f"{tree}/.", f"{name}:/box/tree", timeout=SLOW)  # SRC/. to a new name
        out = tmp_path / "out"
        out.mkdir()
        ad.ok("cp", f"{name}:/box", str(out), timeout=SLOW)
        assert ad.state(name)["Status"] == "exited", "cp must not start a stopped container"
        me = (os.getuid(), os.getgid())
        src = host_listing(tree)
        got = host_listing(out / "box")
        assert got.pop("./made") == ("f", 0o604, *me, 5, MTIME, None)
        assert got.pop("./f.txt") == ("f", 0o640, *me, f.stat().st_size, MTIME, None)
        assert got.pop(".")[0] == "d"
        assert got == {("./tree" + k[1:]): v for k, v in owned(src, *me).items()}
        assert (out / "box" / "made").read_text() == "made\n"
        # The container itself sees the copies, owners from the archive.
        r = ad.ok("start", "-a", name, timeout=180)
        inside = parse_listings(r.out)["/box"]
        assert inside["./made"] == ("f", 0o604, 1234, 2345, 5, MTIME, None)
        assert inside["./f.txt"] == ("f", 0o640, 1234, 2345, f.stat().st_size, MTIME, None)
        assert {("." + k[len("./tree"):]): v for k, v in inside.items() if k.startswith("./tree")} == src
    finally:
        ad("rm", "-f", name, timeout=120)


def test_cp_created_container_and_its_volume(ad, host_tree, tmp_path):
    """A container never started: copy into its rootfs and into its named volume, copy the
    image's files out; its first start sees the copies."""
    name, vol = ad.name("cp-created"), ad.name("cpvol2")
    tree, f = host_tree / "tree", host_tree / "f.txt"
    ad.ok("create", "--name", name, *NET, "-v", f"{vol}:/vol", "busybox", "sh", "-c", LIST_SCRIPT, "sh",
          "/vol/tree", "/etc/extra", timeout=120)
    try:
        assert ad.state(name)["Status"] == "created"
        ad.ok("cp", str(tree), f"{name}:/vol/", timeout=SLOW)
        ad.ok("cp", str(tree), f"{name}:/etc/extra", timeout=SLOW)
        out = tmp_path / "out"
        out.mkdir()
        ad.ok("cp", f"{name}:/etc/passwd", str(out / "passwd"), timeout=SLOW)
        assert (out / "passwd").read_text().startswith("root:x:0:0:root:"), (out / "passwd").read_text()
        r = ad("cp", f"{name}:/vol", "-", input=b"", timeout=SLOW)
        assert r.rc == 0, r.err
        members = tar_members(r.out)
        assert {"vol", "vol/tree", "vol/tree/sub/deep/b", "vol/tree/link"} <= set(members), sorted(members)
        assert ad.state(name)["Status"] == "created", "cp must not start a created container"
        src = host_listing(tree)
        got = parse_listings(ad.ok("start", "-a", name, timeout=180).out)
        assert got["/vol/tree"] == src
        assert got["/etc/extra"] == src
        # Round trip: diff shows what cp added (not the volume's content, only its mount
        # point), and a commit carries it into an image.
        added = {f"A /etc/extra{k[1:]}" for k in src}
        check_diff(ad.out("diff", name, timeout=SLOW).splitlines(), {"C /etc", "A /vol"} | added)
        tag = f"{ad.name('cpcommit')}:v1"
        ad.ok("commit", name, tag, timeout=SLOW)
        try:
            r = ad.ok("run", "--rm", *NET, tag, "sh", "-c", 'echo "in /vol: $(ls -A /vol)"' + LIST_SCRIPT,
                      "sh", "/etc/extra", timeout=180)
            first, rest = r.out.split("\n", 1)
            assert first == "in /vol: ", f"the volume's content went into the image: {first!r}"
            assert parse_listings(rest)["/etc/extra"] == src
        finally:
            ad("rmi", "-f", tag, timeout=120)
    finally:
        ad("rm", "-f", name, timeout=120)
        ad("volume", "rm", "-f", vol, timeout=120)


# ------------------------------------------------------------------ archives that try to leave


def _tar(*entries):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for kind, name, arg in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = MTIME
            if kind == "file":
                ti.size, ti.mode = len(arg), 0o644
                tf.addfile(ti, io.BytesIO(arg))
            elif kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, arg
                tf.addfile(ti)
            elif kind == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, arg
                tf.addfile(ti)
    return b.getvalue()


MALICIOUS = {
    "dotdot": _tar(("file", "../escape", b"escaped\n")),
    "absolute": _tar(("file", "/abs", b"absolute\n")),
    "symlink-to-root": _tar(("symlink", "ln", "/"), ("file", "ln/etc/pwned", b"pwned\n")),
    "symlink-up": _tar(("symlink", "ln2", "../../.."), ("file", "ln2/x", b"up\n")),
    "hardlink-passwd": _tar(("hardlink", "hl", "/etc/passwd"), ("file", "hl", b"pwned::0:0::/:/bin/sh\n")),
    "hardlink-up": _tar(("hardlink", "hl2", "../etc/passwd"), ("file", "hl2", b"pwned::0:0::/:/bin/sh\n")),
    "all-in-one": _tar(("file", "ok", b"ok\n"), ("file", "../escape", b"escaped\n"), ("file", "/abs", b"a\n"),
                       ("symlink", "ln", "/"), ("file", "ln/etc/pwned", b"pwned\n"),
                       ("symlink", "ln2", "../../.."), ("file", "ln2/x", b"up\n"),
                       ("hardlink", "hl", "/etc/passwd"), ("file", "hl", b"pwned\n")),
}

OUTSIDE = ["/escape", "/abs", "/x", "/etc/x", "/etc/pwned", "/target/../escape"]


def test_put_archive_never_writes_outside_the_container(ad, sdk):
    """Archives with ../, absolute names, symlinks and hard links pointing out of the target.
    The endpoint may refuse an entry, the archive, or unpack the harmless part; either way no
    file outside the container's filesystem is touched, nor the image, nor /etc/passwd.

    dockerd (20.10) answers 500 "Error processing tar file(exit status 1): ..." for ../escape
    ("is outside of"), ln2 -> ../../.. ("invalid symlink"), hard links out of the target
    ("invalid hardlink" / "link /target/etc/passwd ...: no such file"), puts /abs at
    /target/abs, and (extracting in a chroot of the container's root) follows the symlink
    ln -> / that the same archive made: ln/etc/pwned becomes the container's own /etc/pwned.
    KIC is held to the issue's stricter rule: nothing outside the target changes at all."""
    name = ad.name("cp-mal")
    c = sdk.containers.run("busybox", ["sh", "-c", "mkdir /target && exec sleep 3600"], name=name,
                           network_mode="none", detach=True)
    try:
        wait_until("/target", lambda: c.exec_run(["test", "-d", "/target"]).exit_code == 0, 60)
        before = c.exec_run(["sh", "-c", "ls -A / /etc /tmp; cat /etc/passwd"]).output
        answers = {}
        for case, data in MALICIOUS.items():
            try:
                answers[case] = ("ok", c.put_archive("/target", data))
            except dockersdk.errors.APIError as e:
                answers[case] = (e.status_code, str(e.explanation))
                assert e.status_code in (400, 403, 404, 409, 500), (case, e)
        print("put_archive answers:", json.dumps(answers, indent=1))
        after = c.exec_run(["sh", "-c", "ls -A / /etc /tmp; cat /etc/passwd"]).output
        probe = c.exec_run(["ls", "-d", *OUTSIDE])
        present = [ln for ln in probe.output.decode().splitlines() if not ln.startswith("ls: ")]
        if IS_KIC:
            assert after == before, f"outside /target changed:\n{before.decode()}\n---\n{after.decode()}"
            assert present == [], present
        else:
            # dockerd: the container's own /etc gained pwned through ln -> / (see above), nothing else.
            assert after.replace(b"pwned\n", b"", 1) == before, after.decode()
            assert present in ([], ["/etc/pwned"]), present
        passwd = c.exec_run(["cat", "/etc/passwd"]).output
        assert passwd.startswith(b"root:x:0:0:") and b"pwned" not in passwd, passwd
        # The host and the image are untouched.
        for p in ("/escape", "/abs", "/x", "/etc/pwned"):
            assert not os.path.lexists(p), f"{p} appeared on the host"
        r = ad.ok("run", "--rm", *NET, "busybox", "sh", "-c",
                  "ls -d /escape /abs /x /etc/pwned /target 2>/dev/null; grep -c pwned /etc/passwd; exit 0", timeout=180)
        assert r.out == "0\n", f"a new container from the image sees the archive's files: {r.out!r}"
        # The target itself holds nothing that leads out of it.
        listing = c.exec_run(["sh", "-c", "cd /target && find . -exec stat -c '%n|%F|%h' {} +"]).output.decode()
        for line in listing.splitlines():
            n, kind, links = line.split("|")
            if kind == "regular file":
                assert links == "1", f"/target/{n} shares an inode: {listing}"
    finally:
        ad("rm", "-f", name, timeout=120)


# ------------------------------------------------------------------------ diff, commit, export

CHANGES = ("mkdir -p /new/sub && echo file > /new/sub/file && echo content > /f && "
           "echo extra:x:777: >> /etc/group && rm /usr/bin/wc && rm -r /home && touch /tmp/added && "
           "echo vol > /data/v && echo '10.1.1.1 extra' >> /etc/hosts && echo h2 > /etc/hostname")
EXPECTED_DIFF = {
    "A /new", "A /new/sub", "A /new/sub/file", "A /f",
    "C /etc", "C /etc/group",
    "C /usr", "C /usr/bin", "D /usr/bin/wc", "D /home",
    "C /tmp", "A /tmp/added",
    "A /data",  # the anonymous volume's mount point is made in the container; its content is not shown
}


@pytest.fixture(scope="module")
def changed(ad):
    """An exited container that added, changed and deleted image files, wrote to an anonymous
    volume at /data and to /etc/hosts and /etc/hostname."""
    name = ad.name("changed")
    ad.ok("run", "--name", name, *NET, "-v", "/data", "busybox", "sh", "-c", CHANGES, timeout=180)
    yield name
    ad("rm", "-f", "-v", name, timeout=120)


def check_diff(lines, expected):
    """docker diff's lines as a set (the order follows a directory walk), each listed parent
    before its children."""
    assert set(lines) == expected, f"docker diff: {lines}"
    assert len(lines) == len(set(lines)), f"docker diff repeats lines: {lines}"
    listed = {ln[2:] for ln in lines}
    seen = set()
    for ln in lines:
        parent = os.path.dirname(ln[2:])
        assert parent not in listed or parent in seen, f"{ln} comes before its parent: {lines}"
        seen.add(ln[2:])


def test_diff(ad, changed):
    lines = ad.out("diff", changed, timeout=SLOW).splitlines()
    assert all(re.fullmatch(r"[ACD] /\S+", ln) for ln in lines), lines
    check_diff(lines, EXPECTED_DIFF)
    # A fresh container has nothing to show; a running one shows its changes as they are made.
    name = ad.name("diff-run")
    ad.ok("run", "-d", "--name", name, *NET, "busybox", "sh", "-c",
          "echo 9.9.9.9 x >> /etc/hosts && exec sleep 3600", timeout=180)
    try:
        assert ad("diff", name).out == ""
        ad.ok("exec", name, "sh", "-c", "mkdir /run-added && rm /bin/vi && echo >> /etc/passwd")
        check_diff(ad.out("diff", name).splitlines(),
                   {"A /run-added", "C /bin", "D /bin/vi", "C /etc", "C /etc/passwd"})
    finally:
        ad("rm", "-f", name, timeout=120)
    r = ad("diff", "nosuch-container-z")
    assert r.rc == 1 and "Error response from daemon: No such container: nosuch-container-z" in r.err, r


def test_commit_stopped_container_with_changes(ad, changed):
    tag = f"{ad.name('committed')}:v1"
    base = ad.inspect("busybox", "{{json .}}")
    cfg = ad.inspect(changed, "{{json .Config}}")
    r = ad.ok("commit", "-c", "ENV X=1", "-c", 'CMD ["cat","/f"]', "-c", "WORKDIR /w", "-a", "someone",
              "-m", "msg", changed, tag, timeout=SLOW)
    iid = r.out.strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", iid), r.out
    try:
        img = ad.inspect(tag, "{{json .}}")
        assert img["Id"] == iid
        assert (img["Author"], img["Comment"]) == ("someone", "msg")
        assert img["Config"]["Env"] == cfg["Env"] + ["X=1"], img["Config"]["Env"]
        assert img["Config"]["Cmd"] == ["cat", "/f"]
        assert img["Config"]["WorkingDir"] == "/w"
        assert img["Config"].get("Entrypoint") in (None, [])
        assert img["RootFS"]["Type"] == "layers"
        assert img["RootFS"]["Layers"][:-1] == base["RootFS"]["Layers"], (img["RootFS"], base["RootFS"])
        assert len(img["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 1
        hist = ad.out("history", "--no-trunc", "--format", "{{.ID}}|{{.CreatedBy}}|{{.Comment}}", tag).splitlines()
        assert len(hist) == len(ad.out("history", "-q", "busybox").splitlines()) + 1, hist
        assert hist[0] == f"{iid}|{' '.join(cfg['Cmd'])}|msg", hist[0]
        # The new image runs the new CMD, in the new WORKDIR, with the new ENV; the deletions
        # and the additions are carried, the anonymous volume's content is not.
        out = ad.out("run", "--rm", *NET, tag, timeout=180)
        assert out == "content"
        r = ad.ok("run", "--rm", *NET, tag, "sh", "-c",
                  "pwd; echo X=$X; cat /new/sub/file; tail -1 /etc/group; ls -A /data; "
                  "ls -d /home /usr/bin/wc /usr/bin/tr 2>&1; true", timeout=180)
        assert r.out.splitlines() == [
            "/w", "X=1", "file", "extra:x:777:",
            "ls: /home: No such file or directory", "ls: /usr/bin/wc: No such file or directory", "/usr/bin/tr",
        ], r.out
    finally:
        ad("rmi", "-f", tag, timeout=120)
    # Invalid changes: dockerd's messages, and no image.
    for change, msg in (("RUN x", "run is not a valid change command"),
                        ("FOO bar", "foo is not a valid change command"),
                        ("STOPSIGNAL SIGINT", "stopsignal is not a valid change command"),
                        ("ENV", "ENV requires at least one argument")):
        bad = f"{ad.name('bad')}:x"
        r = ad("commit", "-c", change, changed, bad, timeout=SLOW)
        assert r.rc == 1 and f"Error response from daemon: {msg}" in r.err, (change, r)
        assert ad.out("images", "-q", bad) == "", f"commit -c {change!r} made an image"
    r = ad("commit", "nosuch-container-w", "x:y")
    assert r.rc == 1 and "Error response from daemon: No such container: nosuch-container-w" in r.err, r


def test_commit_running_container(ad):
    name, tag = ad.name("commit-live"), f"{ad.name('live')}:v1"
    ad.ok("run", "-d", "--name", name, *NET, "-e", "RUNVAR=7", "busybox", "sh", "-c",
          "echo live > /live && rm /bin/vi && exec sleep 3600", timeout=180)
    try:
        wait_until("/live", lambda: ad("exec", name, "cat", "/live").out == "live\n", 60)
        cfg = ad.inspect(name, "{{json .Config}}")
        iid = ad.out("commit", name, tag, timeout=SLOW)
        assert ad.state(name)["Status"] == "running", "commit must leave a running container running"
        img = ad.inspect(tag, "{{json .}}")
        assert img["Id"] == iid
        assert (img["Author"], img["Comment"]) == ("", "")
        assert img["Config"]["Cmd"] == cfg["Cmd"] == ["sh", "-c", "echo live > /live && rm /bin/vi && exec sleep 3600"]
        assert img["Config"]["Env"] == cfg["Env"]
        out = ad.out("run", "--rm", *NET, tag, "sh", "-c", "cat /live; echo $RUNVAR; ls /bin/vi 2>&1; true", timeout=180)
        assert out.splitlines() == ["live", "7", "ls: /bin/vi: No such file or directory"]
        # The container goes on after the commit.
        ad.ok("exec", name, "sh", "-c", "echo still > /live")
        assert ad.out("exec", name, "cat", "/live") == "still"
    finally:
        ad("rm", "-f", name, timeout=120)
        ad("rmi", "-f", tag, timeout=120)


def test_export(ad, changed, tmp_path):
    r = ad("export", changed, input=b"", timeout=SLOW)
    assert r.rc == 0, r.err
    members = tar_members(r.out)
    names = set(members)
    assert not any(n.startswith(("/", "./", "../")) for n in names), sorted(names)[:20]
    for n in ("bin/busybox", "etc/passwd", "usr/bin/tr", "f", "new/sub/file", "tmp/added", "etc/group"):
        assert n in names, f"{n} missing from the export"
    for n in ("home", "home/user", "usr/bin/wc", "data/v"):
        assert n not in names, f"{n} (deleted, or in a volume) is in the export"
    assert "new" in names and members["new"].isdir() and "data" in names and members["data"].isdir()
    with tarfile.open(fileobj=io.BytesIO(r.out), mode="r:") as tf:
        assert tf.extractfile("f").read() == b"content\n"
        assert tf.extractfile("etc/group").read().endswith(b"extra:x:777:\n")
    # -o writes the same archive to a file.
    path = tmp_path / "export.tar"
    ad.ok("export", "-o", str(path), changed, timeout=SLOW)
    assert set(tar_members(path.read_bytes())) == names
    r = ad("export", "nosuch-container-v")
    assert r.rc == 1 and "Error response from daemon: No such container: nosuch-container-v" in r.err, r
