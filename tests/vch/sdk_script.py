#!/usr/bin/python3
"""A small program on the Python Docker SDK (docker-py), configured from the environment
(DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH): pull, list, run, inspect, logs, stop, remove.
Usage: sdk_script.py REGISTRY_IMAGE NAME. Prints one line per step; exits non-zero on failure."""

import sys
import time

import docker


def main():
    image_ref, name = sys.argv[1], sys.argv[2]
    client = docker.from_env(version="auto", timeout=120)
    img = client.images.pull(image_ref)
    assert image_ref in img.tags, img.tags
    print("pulled ok")
    assert any(image_ref in i.tags for i in client.images.list()), "pulled image not listed"
    print("listed ok")
    out = client.containers.run("busybox", ["sh", "-c", "echo sdk-says-hello uid=$(id -u)"], network_mode="none",
                                remove=True)
    print("output:", out.decode().strip())
    script = "trap 'exit 0' TERM; echo sdk-says-hello uid=$(id -u); echo tick; while true; do sleep 0.1; done"
    c = client.containers.run("busybox", ["sh", "-c", script],
                              name=name, network_mode="none", detach=True, labels={"sdk": "yes"})
    c.reload()
    print("name:", c.attrs["Name"])
    print("status:", c.status)
    assert c.labels == {"sdk": "yes"}, c.labels
    deadline = time.monotonic() + 60
    while b"tick" not in c.logs() and time.monotonic() < deadline:
        time.sleep(0.2)
    print("logs:", c.logs().decode().strip().replace("\n", "|"))
    c.stop(timeout=10)
    c.reload()
    print("stopped:", c.status, c.attrs["State"]["ExitCode"])
    c.remove()
    names = [x.name for x in client.containers.list(all=True)]
    assert name not in names, names
    print("removed ok")


if __name__ == "__main__":
    main()
