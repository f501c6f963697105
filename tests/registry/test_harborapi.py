"""harborapi (Harbor's Python API client from PyPI) against a running kic-registry.

Run through tests/registry/harborapi.sh, which provides KIC_REGISTRY_BIN and the virtualenv.
"""

import asyncio
import hashlib
import json
import os
import subprocess
import tempfile
import urllib.request
import base64

import pytest
from harborapi import HarborAsyncClient
from harborapi.exceptions import Conflict, NotFound, Forbidden
from harborapi.models import (
    Access,
    ProjectMetadata,
    ProjectReq,
    RobotCreate,
    RobotPermission,
    Tag,
    UserCreationReq,
)

ADMIN_PW = "Harbor12345"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def registry():
    binary = os.environ["KIC_REGISTRY_BIN"]
    data = tempfile.mkdtemp(prefix="kic-registry-harborapi-")
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data, "--admin-password", ADMIN_PW,
         "--argon2-memory-kib", "256", "--argon2-iterations", "1"],
        stdout=subprocess.PIPE, text=True,
    )
    base = None
    for line in proc.stdout:
        if line.startswith("kic-registry listening on "):
            base = line.split(" on ", 1)[1].strip()
            break
    assert base, "registry did not start"
    yield base
    proc.kill()
    proc.wait()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def http(method, url, data=None, headers=None, auth=("admin", ADMIN_PW)):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req) as r:
        return r.status, dict(r.headers), r.read()


def push_image(base, repo, tag, layer: bytes) -> str:
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}).encode()
    for blob in (cfg, layer):
        status, _, _ = http("POST", f"{base}/v2/{repo}/blobs/uploads/?digest={sha(blob)}", data=blob)
        assert status == 201
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(cfg), "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer), "size": len(layer)}],
    }).encode()
    status, _, _ = http("PUT", f"{base}/v2/{repo}/manifests/{tag}", data=manifest,
                        headers={"Content-Type": OCI_MANIFEST})
    assert status == 201
    return sha(manifest)


def client(base, user="admin", pw=ADMIN_PW):
    return HarborAsyncClient(url=f"{base}/api/v2.0", username=user, secret=pw)


def test_system(registry):
    async def run():
        c = client(registry)
        info = await c.get_system_info()
        assert info.auth_mode == "db_auth"
        health = await c.health_check()
        assert health.status == "healthy"
        assert (await c.ping()) == "Pong"
    asyncio.run(run())


def test_projects_repositories_artifacts(registry):
    async def run():
        c = client(registry)
        await c.create_project(ProjectReq(project_name="library", metadata=ProjectMetadata(public="true")))
        for i in range(12):
            await c.create_project(ProjectReq(project_name=f"proj{i:02}", metadata=ProjectMetadata(public="false")))
        with pytest.raises(Conflict):
            await c.create_project(ProjectReq(project_name="library"))
        # Pagination: harborapi follows our Link headers to get all 13.
        projects = await c.get_projects(page_size=5)
        assert len(projects) == 13
        assert {p.name for p in projects} >= {"library", "proj11"}
        lib = await c.get_project("library")
        assert lib.metadata.public == "true"
        assert await c.project_exists("library")
        assert not await c.project_exists("nope")

        d1 = push_image(registry, "library/busybox", "1.36", b"layer-one")
        push_image(registry, "library/busybox", "latest", b"layer-two")
        push_image(registry, "library/team/app", "v1", b"layer-three")
        repos = await c.get_repositories("library")
        assert sorted(r.name for r in repos) == ["library/busybox", "library/team/app"]
        repo = await c.get_repository("library", "team/app")
        assert repo.artifact_count == 1
        arts = await c.get_artifacts("library", "busybox")
        assert len(arts) == 2
        assert {t.name for a in arts for t in (a.tags or [])} == {"1.36", "latest"}
        art = await c.get_artifact("library", "busybox", "1.36")
        assert art.digest == d1
        await c.create_artifact_tag("library", "busybox", d1, Tag(name="stable"))
        tags = await c.get_artifact_tags("library", "busybox", d1)
        assert {t.name for t in tags} == {"1.36", "stable"}
        await c.delete_artifact_tag("library", "busybox", d1, "stable")
        await c.delete_artifact("library", "busybox", "latest")
        assert len(await c.get_artifacts("library", "busybox")) == 1
        with pytest.raises(NotFound):
            await c.get_artifact("library", "busybox", "latest")
        stats = await c.get_statistics()
        assert stats.total_project_count == 13
        assert stats.public_repo_count == 2
    asyncio.run(run())


def test_users_members_robots_audit(registry):
    async def run():
        c = client(registry)
        await c.create_project(ProjectReq(project_name="private", metadata=ProjectMetadata(public="false")))
        await c.create_user(UserCreationReq(username="alice", email="alice@x.test", realname="Alice",
                                            password="Passw0rd!"))
        users = await c.get_users()
        assert {u.username for u in users} >= {"admin", "alice"}
        alice = await c.get_user_by_username("alice")
        await c.add_project_member_user("private", "alice", 3)
        members = await c.get_project_members("private")
        assert {m.entity_name for m in members} == {"admin", "alice"}
        ac = client(registry, "alice", "Passw0rd!")
        me = await ac.get_current_user()
        assert me.user_id == alice.user_id
        # A guest sees the project but may not add members.
        assert (await ac.get_project("private")).name == "private"
        with pytest.raises(Forbidden):
            await ac.add_project_member_user("private", "admin", 2)

        created = await c.create_robot(RobotCreate(
            name="puller", description="pull only", level="project", duration=7, disable=False,
            permissions=[RobotPermission(kind="project", namespace="private",
                                         access=[Access(resource="repository", action="pull")])],
        ))
        assert created.name == "robot$private+puller"
        assert created.secret
        robots = await c.get_robots()
        assert any(r.name == "robot$private+puller" for r in robots)

        logs = []
        for _ in range(50):
            logs = await c.get_audit_logs(limit=100)
            if any(l.resource_type == "robot" for l in logs):
                break
            await asyncio.sleep(0.1)
        ops = {(l.operation, l.resource_type) for l in logs}
        assert ("create", "project") in ops
        assert ("create", "member") in ops
        assert ("create", "robot") in ops
        plogs = await c.get_project_logs("private")
        assert plogs
    asyncio.run(run())
