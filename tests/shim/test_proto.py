"""The committed generated code is current, and the hand-written protos are wire-compatible."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from google.protobuf import any_pb2
from modelrunner.shim.proto import (
    containerd_containers_pb2,
    containerd_events_pb2,
    containerd_runc_options_pb2,
    containerd_tasks_pb2,
    containerd_types_pb2,
)

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "shim" / "proto"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen-proto"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in PROTO_DIR.iterdir() if "_pb2" in p.name)
    assert fresh == committed
    _, mismatch, errors = filecmp.cmpfiles(PROTO_DIR, tmp_path, fresh, shallow=False)
    assert (mismatch, errors) == ([], []), "run .venv/bin/python hack/gen-proto and commit the result"


def test_generated_imports_are_package_relative() -> None:
    for path in PROTO_DIR.glob("*_pb2*.py"):
        for line in path.read_text().splitlines():
            assert not line.startswith("import containerd_"), f"{path.name}: {line}"


def _fields(message: object) -> dict[str, tuple[int, int]]:
    descriptor = message.DESCRIPTOR  # type: ignore[attr-defined]
    return {f.name: (f.number, f.type) for f in descriptor.fields}


def test_wire_layout_matches_containerd() -> None:
    # Spot checks of the field numbers everything depends on (upstream api/*.proto).
    create = _fields(containerd_tasks_pb2.CreateTaskRequest)
    assert create["rootfs"][0] == 3 and create["stdout"][0] == 5 and create["options"][0] == 9
    container = _fields(containerd_containers_pb2.Container)
    assert (container["spec"][0], container["snapshotter"][0], container["snapshot_key"][0]) == (5, 6, 7)
    assert _fields(containerd_tasks_pb2.KillRequest)["all"][0] == 4
    assert _fields(containerd_types_pb2.Descriptor)["annotations"][0] == 5
    assert _fields(containerd_runc_options_pb2.Options)["root"][0] == 7
    assert _fields(containerd_events_pb2.Envelope)["event"][0] == 4
    # Full names matter for services and Any type URLs.
    assert (
        containerd_tasks_pb2.DESCRIPTOR.services_by_name["Tasks"].full_name
        == "containerd.services.tasks.v1.Tasks"
    )
    assert containerd_runc_options_pb2.Options.DESCRIPTOR.full_name == "containerd.runc.v1.Options"
    encoded = containerd_tasks_pb2.KillRequest(container_id="c", signal=9, all=True).SerializeToString()
    assert encoded == b"\n\x01c\x18\x09\x20\x01"
    assert any_pb2.Any(type_url="containerd.runc.v1.Options").type_url == "containerd.runc.v1.Options"
