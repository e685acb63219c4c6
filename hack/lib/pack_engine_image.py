"""Pack an engine binary into a deterministic OCI image-layout tarball (stdlib only).

Same inputs give the same bytes: fixed mtimes, uid/gid 0, sorted entries, gzip without a timestamp.
The image holds the binary (plus its shared libraries when it is not static), the licence, an
``/etc/passwd`` with the unprivileged ``engine`` user and the empty mount points the sandbox uses.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from dataclasses import dataclass

ENGINE_UID = 65532
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
FIXED_TIME = "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class Entry:
    path: str  # without leading slash
    mode: int
    data: bytes | None = None  # None means directory
    uid: int = 0


def _dirs_for(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def shared_libraries(binary: str) -> list[str]:
    """Host paths of the libraries a dynamic binary needs; empty for a static one."""
    proc = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or "not a dynamic executable" in proc.stdout + proc.stderr:
        return []
    libs = []
    for line in proc.stdout.splitlines():
        match = re.search(r"(/\S+)\s+\(0x", line)
        if match:
            libs.append(match.group(1))
    return sorted(set(libs))


def build_layer(binary: str, license_path: str) -> bytes:
    with open(binary, "rb") as f:
        binary_bytes = f.read()
    with open(license_path, "rb") as f:
        license_bytes = f.read()
    passwd = (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"engine:x:{ENGINE_UID}:{ENGINE_UID}:engine:/tmp:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ).encode()
    group = f"root:x:0:\nengine:x:{ENGINE_UID}:\nnogroup:x:65534:\n".encode()
    files = [
        Entry("usr/local/bin/llama-server", 0o755, binary_bytes),
        Entry("usr/share/licenses/llama.cpp/LICENSE", 0o644, license_bytes),
        Entry("etc/passwd", 0o644, passwd),
        Entry("etc/group", 0o644, group),
    ]
    for lib in shared_libraries(binary):
        real = os.path.realpath(lib)
        with open(real, "rb") as f:
            files.append(Entry(lib.lstrip("/"), 0o755, f.read()))
    dirs = {d for e in files for d in _dirs_for(e.path)}
    # Mount points the sandbox binds over; they must exist in a read-only rootfs.
    mount_points = {"models": 0o755, "run": 0o755, "run/engine": 0o755, "tmp": 0o1777, "dev": 0o755,
                    "proc": 0o755, "sys": 0o755}
    entries = [Entry(d, mount_points.get(d, 0o755)) for d in sorted(dirs | set(mount_points))]
    entries += sorted(files, key=lambda e: e.path)

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(entry.path if entry.data is not None else entry.path + "/")
            info.mtime = 0
            info.uid = info.gid = entry.uid
            info.uname = info.gname = ""
            info.mode = entry.mode
            if entry.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return raw.getvalue()


def gzip_deterministic(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return out.getvalue()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def pack(binary: str, license_path: str, build: str, variant: str, ref: str) -> bytes:
    layer_tar = build_layer(binary, license_path)
    layer = gzip_deterministic(layer_tar)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": FIXED_TIME,
        "config": {
            "User": f"{ENGINE_UID}:{ENGINE_UID}",
            "Entrypoint": ["/usr/local/bin/llama-server"],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp"],
            "WorkingDir": "/tmp",
            "Labels": {
                "io.modelrunner.engine": "llama.cpp",
                "io.modelrunner.llamacpp.build": build,
                "io.modelrunner.llamacpp.variant": variant,
                "org.opencontainers.image.licenses": "MIT",
                "org.opencontainers.image.version": f"b{build}-{variant}",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [digest(layer_tar)]},
        "history": [{"created": FIXED_TIME, "created_by": "hack/build-engine-llamacpp"}],
    }
    config_bytes = canonical_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": digest(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": digest(layer), "size": len(layer)}],
        "annotations": {"org.opencontainers.image.version": f"b{build}-{variant}"},
    }
    manifest_bytes = canonical_json(manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": digest(manifest_bytes),
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": ref,
                },
            }
        ],
    }
    members = {
        "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical_json(index),
    }
    for blob in (layer, config_bytes, manifest_bytes):
        members["blobs/sha256/" + digest(blob).split(":", 1)[1]] = blob

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs/", "blobs/sha256/"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(members[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(members[name]))
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--license", required=True)
    parser.add_argument("--build", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--ref", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    data = pack(args.binary, args.license, args.build, args.variant, args.ref)
    with open(args.output, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


if __name__ == "__main__":
    main()
