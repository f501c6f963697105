"""Test images for the suite: the OCI layouts `make images` writes (build/images/{busybox,debian}).

dockerd needs one repair. kic-mkimage writes busybox's applets as tar hard-link entries with
mode 0644 (crates/kic-image/src/oci.rs `hardlink`), and Docker's layer applier chmods the
shared inode to the mode of every hard-link entry it applies, so on dockerd every applet
(and /bin/busybox itself) ends up non-executable: `exec: "sh": executable file not found`.
A hard link has no mode of its own, so the repaired layer gives each link entry its target's
mode; nothing else changes. KIC is tested with the layouts exactly as built.
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile


def _blob(layout, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexd)


def _put(layout, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    p = _blob(layout, d)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    return d


def _repair_layer(raw):
    """Returns (new uncompressed tar, changed?)."""
    src = tarfile.open(fileobj=io.BytesIO(raw), mode="r:*")
    out = io.BytesIO()
    dst = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT)
    modes = {}
    changed = False
    for m in src:
        name = m.name.lstrip("./") if m.name not in (".", "./") else m.name
        if m.islnk():
            target = m.linkname.lstrip("./")
            if target in modes and modes[target] != m.mode:
                m.mode = modes[target]
                changed = True
            dst.addfile(m)
        elif m.isreg():
            modes[name] = m.mode
            dst.addfile(m, src.extractfile(m))
        else:
            dst.addfile(m)
    dst.close()
    return out.getvalue(), changed


def repaired_layout(src, dst):
    """Copies OCI layout `src` to `dst` with hard-link entries carrying their target's mode."""
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "index.json")) as f:
        index = json.load(f)
    for desc in index["manifests"]:
        with open(_blob(dst, desc["digest"]), "rb") as f:
            manifest = json.load(f)
        with open(_blob(dst, manifest["config"]["digest"]), "rb") as f:
            config = json.load(f)
        any_change = False
        for i, layer in enumerate(manifest["layers"]):
            with open(_blob(dst, layer["digest"]), "rb") as f:
                raw = f.read()
            fixed, changed = _repair_layer(raw)
            if not changed:
                continue
            any_change = True
            gz = gzip.compress(fixed, mtime=0)
            layer["digest"] = _put(dst, gz)
            layer["size"] = len(gz)
            layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
            config["rootfs"]["diff_ids"][i] = "sha256:" + hashlib.sha256(fixed).hexdigest()
        if not any_change:
            continue
        cfg = json.dumps(config, separators=(",", ":")).encode()
        manifest["config"]["digest"] = _put(dst, cfg)
        manifest["config"]["size"] = len(cfg)
        man = json.dumps(manifest, separators=(",", ":")).encode()
        desc["digest"] = _put(dst, man)
        desc["size"] = len(man)
    with open(os.path.join(dst, "index.json"), "w") as f:
        json.dump(index, f)
    return dst


def with_layer(src, dst, files, created_by):
    """Copies OCI layout `src` to `dst` adding one layer with `files` ({path: bytes}) on top."""
    import time as _time

    shutil.copytree(src, dst)
    with open(os.path.join(dst, "index.json")) as f:
        index = json.load(f)
    desc = index["manifests"][0]
    with open(_blob(dst, desc["digest"]), "rb") as f:
        manifest = json.load(f)
    with open(_blob(dst, manifest["config"]["digest"]), "rb") as f:
        config = json.load(f)
    out = io.BytesIO()
    tar = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT)
    now = int(_time.time())
    for path, data in sorted(files.items()):
        info = tarfile.TarInfo(path)
        info.size, info.mode, info.mtime = len(data), 0o644, now
        tar.addfile(info, io.BytesIO(data))
    tar.close()
    raw = out.getvalue()
    gz = gzip.compress(raw, mtime=0)
    manifest["layers"].append({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": _put(dst, gz),
        "size": len(gz),
    })
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(raw).hexdigest())
    stamp = _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(now))
    config["created"] = stamp
    config.setdefault("history", []).append({"created": stamp, "created_by": created_by})
    cfg = json.dumps(config, separators=(",", ":")).encode()
    manifest["config"] = {"mediaType": manifest["config"]["mediaType"], "digest": _put(dst, cfg), "size": len(cfg)}
    man = json.dumps(manifest, separators=(",", ":")).encode()
    index["manifests"] = [dict(desc, digest=_put(dst, man), size=len(man))]
    with open(os.path.join(dst, "index.json"), "w") as f:
        json.dump(index, f)
    return dst
