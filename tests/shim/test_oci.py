"""OCI documents and chain IDs (pure)."""

from __future__ import annotations

import hashlib
import json

import pytest
from modelrunner.shim.errors import InvalidArgument
from modelrunner.shim.oci import (
    Descriptor,
    Platform,
    chain_ids,
    parse_config,
    parse_index,
    parse_manifest,
    select_manifest,
    validate_digest,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_chain_ids_follow_the_image_spec() -> None:
    assert chain_ids([D1]) == (D1,)
    second = "sha256:" + hashlib.sha256(f"{D1} {D2}".encode()).hexdigest()
    third = "sha256:" + hashlib.sha256(f"{second} {D3}".encode()).hexdigest()
    assert chain_ids([D1, D2, D3]) == (D1, second, third)
    assert chain_ids([]) == ()


def test_manifest_and_config_are_parsed() -> None:
    manifest = parse_manifest(
        _json(
            {
                "schemaVersion": 2,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 10},
                "layers": [{"mediaType": LAYER, "digest": D2, "size": 20, "annotations": {"a": "b"}}],
            }
        )
    )
    assert manifest.config.digest == D1
    assert manifest.layers == (Descriptor(LAYER, D2, 20, {"a": "b"}),)
    config = parse_config(
        _json(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {
                    "User": "65532:65532",
                    "Entrypoint": ["/e"],
                    "Cmd": ["x"],
                    "Env": ["A=1"],
                    "WorkingDir": "/tmp",
                    "Labels": {"k": "v"},
                    "StopSignal": "SIGINT",
                },
                "rootfs": {"type": "layers", "diff_ids": [D3]},
            }
        )
    )
    assert config.diff_ids == (D3,)
    assert (config.user, config.entrypoint, config.cmd, config.env) == (
        "65532:65532",
        ("/e",),
        ("x",),
        ("A=1",),
    )
    assert (config.working_dir, dict(config.labels), config.stop_signal) == ("/tmp", {"k": "v"}, "SIGINT")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a JSON object"),
        (_json({"schemaVersion": 1}), "schemaVersion"),
        (
            _json({"schemaVersion": 2, "config": {"mediaType": "x", "digest": D1, "size": 1}, "layers": []}),
            "not an image config",
        ),
        (
            _json(
                {
                    "schemaVersion": 2,
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": "md5:abc",
                        "size": 1,
                    },
                    "layers": [],
                }
            ),
            "not a sha256",
        ),
        (
            _json(
                {
                    "schemaVersion": 2,
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": D1,
                        "size": -1,
                    },
                    "layers": [],
                }
            ),
            "valid size",
        ),
        (
            _json(
                {
                    "schemaVersion": 2,
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": D1,
                        "size": 1,
                    },
                    "layers": [{"mediaType": "application/x-tar-lz4", "digest": D2, "size": 1}],
                }
            ),
            "cannot unpack",
        ),
    ],
)
def test_bad_manifests_name_the_broken_rule(document: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_manifest(document)


def test_config_without_layers_rootfs_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="rootfs"):
        parse_config(_json({"rootfs": {"type": "other"}}))
    with pytest.raises(InvalidArgument, match="Entrypoint"):
        parse_config(_json({"rootfs": {"type": "layers", "diff_ids": []}, "config": {"Entrypoint": "sh"}}))


def test_platform_selection() -> None:
    index = parse_index(
        _json(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": D1,
                        "size": 1,
                        "platform": {"os": "linux", "architecture": "arm64"},
                    },
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": D2,
                        "size": 1,
                        "platform": {"os": "linux", "architecture": "amd64"},
                    },
                ],
            }
        )
    )
    assert select_manifest(index).digest == D2
    assert select_manifest(index, Platform("linux", "arm64", "v8")).digest == D1
    with pytest.raises(
        InvalidArgument, match=r"no manifest for linux/s390x \(it has: linux/amd64, linux/arm64\)"
    ):
        select_manifest(index, Platform("linux", "s390x"))
    unlabelled = parse_index(
        _json(
            {
                "schemaVersion": 2,
                "manifests": [
                    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D3, "size": 1}
                ],
            }
        )
    )
    assert select_manifest(unlabelled).digest == D3


def test_digest_validation() -> None:
    assert validate_digest(D1) == D1
    for bad in ("sha256:" + "A" * 64, "sha256:123", D1 + "0", "", "sha1:" + "1" * 40):
        with pytest.raises(InvalidArgument):
            validate_digest(bad)
