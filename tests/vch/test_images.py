"""pull progress, images (filters, digests, dangling), tag, rmi conflicts, save/load, history."""

import json
import os
import re
import secrets
import tarfile

import pytest

import images
from conftest import parallel

NET = ("--network", "none")


@pytest.fixture(scope="module")
def fresh(docker, registry, layouts, tmpdir_session):
    """Makes images no endpoint has seen: busybox plus one layer holding /hello.txt."""
    made = []

    def make(content):
        d = images.with_layer(layouts["busybox"], f"{tmpdir_session}/fresh-{secrets.token_hex(4)}",
                              {"hello.txt": content.encode()}, f"kic-test add hello.txt {content}")
        made.append(d)
        return d

    return make


def short(image_id):
    return image_id.split(":", 1)[1][:12]


def test_pull_progress_digests_dangling(docker, registry, fresh):
    repo = f"test/pm-{secrets.token_hex(3)}"
    ref = f"{docker.registry}/{repo}"
    registry.push(fresh("v1"), f"{repo}:latest")
    r = docker.ok("pull", ref, timeout=300)
    out = r.out
    assert f"latest: Pulling from {repo}" in out, out
    assert "Pull complete" in out, out
    m = re.search(r"Digest: (sha256:[0-9a-f]{64})", out)
    assert m, out
    digest = m.group(1)
    assert f"Status: Downloaded newer image for {ref}:latest" in out, out
    assert out.rstrip().splitlines()[-1] == f"{ref}:latest", out
    assert docker.ok("run", "--rm", *NET, ref, "cat", "/hello.txt").out == "v1"
    v1 = docker.inspect(ref, "{{.Id}}")
    assert docker.out("images", "-q", ref) == short(v1)
    dig = docker.out("images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}", ref)
    assert dig == f"{ref} latest {digest}", dig
    assert docker.inspect(ref, "{{json .RepoDigests}}") == [f"{ref}@{digest}"]

    again = docker.ok("pull", ref, timeout=120).out
    assert f"Status: Image is up to date for {ref}:latest" in again, again
    assert "Pull complete" not in again

    # A new image under the same tag: the old one is left dangling.
    registry.push(fresh("v2"), f"{repo}:latest")
    out2 = docker.ok("pull", ref, timeout=300).out
    assert f"Status: Downloaded newer image for {ref}:latest" in out2, out2
    v2 = docker.inspect(ref, "{{.Id}}")
    assert v2 != v1
    assert docker.ok("run", "--rm", *NET, ref, "cat", "/hello.txt").out == "v2"
    dangling = docker.out("images", "-q", "--no-trunc", "--filter", "dangling=true").split()
    assert v1 in dangling and v2 not in dangling, (v1, v2, dangling)
    assert docker.out("images", "-q", "--filter", f"reference={ref}:latest") == short(v2)
    r = docker.ok("rmi", short(v1))
    assert f"Deleted: {v1}" in r.out, r
    assert v1 not in docker.out("images", "-q", "--no-trunc", "--filter", "dangling=true").split()
    docker.ok("rmi", ref)


def test_pull_missing(docker):
    ref = f"{docker.registry}/library/nosuchimage-kt"
    r = docker("pull", ref, timeout=120)
    assert r.rc == 1, r
    assert "Error response from daemon" in r.err and ("not found" in r.err or "unknown" in r.err), r.err


def test_images_listing_and_filters(docker):
    bb = docker.inspect("busybox", "{{.Id}}")
    deb = docker.inspect("debian", "{{.Id}}")
    assert docker.out("images", "-q", "busybox") == short(bb)
    table = docker.out("images", "busybox").splitlines()
    assert re.match(r"REPOSITORY\s+TAG\s+IMAGE ID\s+CREATED\s+SIZE", table[0]), table
    assert table[1].split()[:3] == ["busybox", "latest", short(bb)], table
    refs = docker.out("images", "--filter", "reference=busy*", "--format", "{{.Repository}}:{{.Tag}}").split()
    assert refs == ["busybox:latest"], refs
    allq = docker.out("images", "-q").split()
    assert short(bb) in allq and short(deb) in allq
    sizes = docker.inspect("debian", "{{.Size}}")
    assert int(sizes) > int(docker.inspect("busybox", "{{.Size}}")) > 1_000_000
    cfg = docker.inspect("busybox", "{{json .Config}}")
    assert cfg["Cmd"] == ["sh"] and any(e.startswith("PATH=") for e in cfg["Env"]), cfg
    assert docker.inspect("busybox", "{{.Os}}/{{.Architecture}}") == "linux/amd64"
    r = docker("image", "inspect", "nosuch-image-kt")
    assert r.rc == 1 and "No such image: nosuch-image-kt" in r.err, r


def test_tag_and_history(docker):
    tag = f"kt/bb-{secrets.token_hex(3)}:1"
    docker.ok("tag", "busybox", tag)
    assert docker.inspect(tag, "{{.Id}}") == docker.inspect("busybox", "{{.Id}}")
    assert docker.out("images", "--format", "{{.Repository}}:{{.Tag}}", tag.split(":")[0]) == tag
    r = docker.ok("rmi", tag)
    assert r.out.strip() == f"Untagged: {tag}", r
    assert docker("image", "inspect", tag).rc == 1
    assert docker("image", "inspect", "busybox").rc == 0
    hist = docker.out("history", "--no-trunc", "--format", "{{.CreatedBy}}", "busybox").splitlines()
    assert hist == ["kic-mkimage busybox"], hist
    r = docker("tag", "nosuch-image-kt", "x:1")
    assert r.rc == 1 and "No such image: nosuch-image-kt" in r.err, r


def test_rmi_conflicts(docker, registry, fresh):
    repo = f"test/rmi-{secrets.token_hex(3)}"
    ref = f"{docker.registry}/{repo}"
    registry.push(fresh("rmi"), f"{repo}:latest")
    docker.ok("pull", "-q", ref, timeout=300)
    img = docker.inspect(ref, "{{.Id}}")
    stopped = docker.out("create", *NET, ref, "true")
    running = docker.out("run", "-d", *NET, ref, "sleep", "600")

    by_ref, by_id_running = parallel(lambda: docker("rmi", ref), lambda: docker("rmi", img))
    assert by_ref.rc == 1, by_ref
    assert re.search(
        rf'conflict: unable to remove repository reference "{re.escape(ref)}" \(must force\) - '
        rf"container ({stopped[:12]}|{running[:12]}) is using its referenced image {short(img)}", by_ref.err), by_ref.err
    assert by_id_running.rc == 1, by_id_running
    assert (f"conflict: unable to delete {short(img)} (cannot be forced) - image is being used by running "
            f"container {running[:12]}") in by_id_running.err, by_id_running.err
    docker.ok("rm", "-f", running)
    r = docker("rmi", img)
    assert r.rc == 1 and (f"conflict: unable to delete {short(img)} (must be forced) - image is being used by "
                          f"stopped container {stopped[:12]}") in r.err, r
    # -f untags and deletes an image only stopped containers use; they keep its ID.
    r = docker.ok("rmi", "-f", ref)
    assert f"Untagged: {ref}:latest" in r.out and f"Deleted: {img}" in r.out, r
    assert docker("image", "inspect", ref).rc == 1
    assert docker("image", "inspect", img).rc == 1
    assert docker.inspect(stopped, "{{.Image}}") == img
    docker.ok("rm", stopped)


def test_save_load_roundtrip(docker, registry, fresh, tmpdir_session):
    repo = f"test/save-{secrets.token_hex(3)}"
    ref = f"{docker.registry}/{repo}:latest"
    registry.push(fresh("saved"), f"{repo}:latest")
    docker.ok("pull", "-q", ref, timeout=300)
    img = docker.inspect(ref, "{{.Id}}")
    path = os.path.join(tmpdir_session, f"save-{secrets.token_hex(3)}.tar")
    docker.ok("save", "-o", path, ref, timeout=300)
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] == [ref], manifest
    assert len(manifest[0]["Layers"]) == 2, manifest
    docker.ok("rmi", ref)
    assert docker("image", "inspect", ref).rc == 1
    r = docker.ok("load", "-i", path, timeout=300)
    assert f"Loaded image: {ref}" in r.out, r
    assert docker.inspect(ref, "{{.Id}}") == img
    assert docker.ok("run", "--rm", *NET, ref, "cat", "/hello.txt").out == "saved"
    # Through a pipe too: save to stdout, load from stdin.
    with open(path, "rb") as f:
        data = f.read()
    docker.ok("rmi", ref)
    r = docker("load", input=data, timeout=300)
    assert r.rc == 0 and f"Loaded image: {ref}" in r.out.decode(), r
    docker.ok("rmi", ref)
    r = docker("load", "-i", "/etc/hostname")
    assert r.rc == 1, r
