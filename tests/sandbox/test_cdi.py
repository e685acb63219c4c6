"""CDI discovery and resolution with fake specs on harmless character devices made by the test."""

from __future__ import annotations

import json
import os
import stat
import textwrap
from pathlib import Path

import pytest
from modelrunner.sandbox import (
    CDIDeviceNotFound,
    CDISpecError,
    CDIUnsupported,
    HostDeviceError,
    SandboxRequest,
    build_spec,
    discover_cdi,
    load_cdi_spec_file,
    parse_cdi_spec,
    parse_device_name,
)

UUID = "GPU-1b2c3d4e-0000-1111-2222-333344445555"


@pytest.fixture
def fake_devices(tmp_path: Path) -> Path:
    """Copies of /dev/null (1:3) and /dev/zero (1:5) under a temp dir: real nodes, harmless ones."""
    dev = tmp_path / "dev"
    dev.mkdir()
    os.mknod(dev / "fakegpu0", stat.S_IFCHR | 0o660, os.makedev(1, 5))
    os.mknod(dev / "fakectl", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(dev / "fakegpu0", 0o660)  # not left to the umask
    os.chmod(dev / "fakectl", 0o666)
    (dev / "plainfile").write_text("not a device")
    return dev


def nvidia_style_yaml(dev: Path, lib: Path, *, kind: str = "example.com/gpu", version: str = "0.5.0") -> str:
    # The layout `nvidia-ctk cdi generate` writes: per-GPU devices by index and UUID, an `all` device,
    # and spec-level edits for control nodes, driver libraries, env and hooks.
    return textwrap.dedent(
        f"""\
        ---
        cdiVersion: {version}
        kind: {kind}
        devices:
        - name: "0"
          containerEdits:
            deviceNodes:
            - path: /dev/fakegpu0
              hostPath: {dev}/fakegpu0
        - name: {UUID}
          containerEdits:
            deviceNodes:
            - path: /dev/fakegpu0
              hostPath: {dev}/fakegpu0
        - name: all
          containerEdits:
            deviceNodes:
            - path: /dev/fakegpu0
              hostPath: {dev}/fakegpu0
        containerEdits:
          env:
          - NVIDIA_VISIBLE_DEVICES=void
          deviceNodes:
          - path: /dev/fakectl
            hostPath: {dev}/fakectl
            permissions: rw
          mounts:
          - hostPath: {lib}
            containerPath: /usr/lib/libfake.so.1
            options:
            - ro
            - nosuid
            - nodev
            - bind
          hooks:
          - hookName: createContainer
            path: /usr/bin/true
            args:
            - nvidia-cdi-hook
            - create-symlinks
            - --link
            - libfake.so.1::/usr/lib/libfake.so
        """
    )


@pytest.fixture
def cdi_dirs(tmp_path: Path, fake_devices: Path) -> tuple[Path, Path]:
    etc, run = tmp_path / "etc-cdi", tmp_path / "run-cdi"
    etc.mkdir()
    run.mkdir()
    lib = tmp_path / "libfake.so.1"
    lib.write_text("fake driver library\n")
    (etc / "example.yaml").write_text(nvidia_style_yaml(fake_devices, lib))
    return etc, run


def test_parse_device_name() -> None:
    assert parse_device_name("nvidia.com/gpu=all") == ("nvidia.com/gpu", "all")
    assert parse_device_name("nvidia.com/gpu=0") == ("nvidia.com/gpu", "0")
    assert parse_device_name(f"nvidia.com/gpu={UUID}") == ("nvidia.com/gpu", UUID)
    assert parse_device_name("vendor.example.org/mig-class=MIG-1:2.3") == (
        "vendor.example.org/mig-class",
        "MIG-1:2.3",
    )
    for bad in (
        "gpu=0",
        "nvidia.com/gpu",
        "nvidia.com/gpu=",
        "nvidia.com/=0",
        "nvidia.com/gpu=a b",
        "/gpu=0",
    ):
        with pytest.raises(CDIDeviceNotFound, match="fully-qualified"):
            parse_device_name(bad)


def test_yaml_spec_resolves_to_edits_with_host_numbers(
    cdi_dirs: tuple[Path, Path], fake_devices: Path
) -> None:
    registry = discover_cdi([str(d) for d in cdi_dirs])
    assert registry.errors == ()
    assert registry.kinds() == ("example.com/gpu",)
    assert registry.device_names() == ("example.com/gpu=0", f"example.com/gpu={UUID}", "example.com/gpu=all")

    common, device = registry.resolve(["example.com/gpu=0"])
    assert "example.yaml" in common.origin
    assert common.env == ("NVIDIA_VISIBLE_DEVICES=void",)
    (ctl,) = common.device_nodes
    assert (ctl.path, ctl.type, ctl.major, ctl.minor, ctl.permissions) == ("/dev/fakectl", "c", 1, 3, "rw")
    assert ctl.file_mode == 0o666, "mode read from the host node"
    assert ctl.host_path == str(fake_devices / "fakectl")
    (gpu,) = device.device_nodes
    assert (gpu.path, gpu.type, gpu.major, gpu.minor, gpu.file_mode, gpu.permissions) == (
        "/dev/fakegpu0",
        "c",
        1,
        5,
        0o660,
        "rwm",
    )
    assert common.mounts[0].container_path == "/usr/lib/libfake.so.1"
    assert common.mounts[0].options == ("ro", "nosuid", "nodev", "bind")
    assert common.hooks[0].hook_name == "createContainer"
    assert common.hooks[0].args[:2] == ("nvidia-cdi-hook", "create-symlinks")


def test_common_edits_once_per_spec_and_devices_once(cdi_dirs: tuple[Path, Path]) -> None:
    registry = discover_cdi([str(d) for d in cdi_dirs])
    edits = registry.resolve(["example.com/gpu=0", "example.com/gpu=all", "example.com/gpu=0"])
    assert [e.origin.split(" ")[0] for e in edits] == [
        "example.com/gpu",
        "example.com/gpu=0",
        "example.com/gpu=all",
    ]


def test_by_uuid_with_and_without_prefix(cdi_dirs: tuple[Path, Path]) -> None:
    registry = discover_cdi([str(d) for d in cdi_dirs])
    assert registry.resolve([f"example.com/gpu={UUID}"])[1].origin.startswith(f"example.com/gpu={UUID}")
    bare = UUID.removeprefix("GPU-")
    assert registry.resolve([f"example.com/gpu={bare}"])[1].origin.startswith(f"example.com/gpu={UUID}")


def test_json_spec_and_later_directory_wins(cdi_dirs: tuple[Path, Path], fake_devices: Path) -> None:
    etc, run = cdi_dirs
    override = {
        "cdiVersion": "0.6.0",
        "kind": "example.com/gpu",
        "devices": [
            {
                "name": "0",
                "containerEdits": {
                    "env": ["FROM_RUN=1"],
                    "deviceNodes": [
                        {
                            "path": "/dev/fakegpu0",
                            "type": "c",
                            "major": 1,
                            "minor": 7,
                            "fileMode": 0o640,
                            "permissions": "r",
                            "uid": 1000,
                            "gid": 44,
                        }
                    ],
                },
            }
        ],
    }
    (run / "override.json").write_text(json.dumps(override))
    registry = discover_cdi([str(etc), str(run)])
    (edits,) = registry.resolve(["example.com/gpu=0"])  # the JSON spec has no common edits
    assert edits.env == ("FROM_RUN=1",)
    (node,) = edits.device_nodes
    assert (node.major, node.minor, node.file_mode, node.permissions, node.uid, node.gid) == (
        1,
        7,
        0o640,
        "r",
        1000,
        44,
    )
    assert node.host_path == "/dev/fakegpu0", "hostPath defaults to path; fully specified nodes need no stat"
    # `all` is only in /etc/cdi and still resolves from there
    assert "example.yaml" in registry.resolve(["example.com/gpu=all"])[0].origin


def test_same_priority_duplicate_is_refused(cdi_dirs: tuple[Path, Path]) -> None:
    etc, run = cdi_dirs
    (etc / "copy.yml").write_text((etc / "example.yaml").read_text())
    registry = discover_cdi([str(etc), str(run)])
    with pytest.raises(CDIDeviceNotFound, match="more than one spec"):
        registry.resolve(["example.com/gpu=0"])


def test_broken_file_is_reported_and_others_still_load(cdi_dirs: tuple[Path, Path]) -> None:
    etc, run = cdi_dirs
    (run / "broken.yaml").write_text("cdiVersion: 0.5.0\nkind: other.com/npu\ndevices: [ {name: 0\n")
    (run / "notes.txt").write_text("ignored: not a spec suffix")
    registry = discover_cdi([str(etc), str(run), str(etc.parent / "missing-dir")])
    assert len(registry.errors) == 1
    assert "broken.yaml" in str(registry.errors[0])
    assert registry.resolve(["example.com/gpu=0"])
    with pytest.raises(CDIDeviceNotFound) as info:
        registry.resolve(["other.com/npu=0"])
    assert "broken.yaml" in str(info.value), "the error must point at the file that failed"


def test_unknown_device_lists_the_known_ones(cdi_dirs: tuple[Path, Path]) -> None:
    registry = discover_cdi([str(d) for d in cdi_dirs])
    with pytest.raises(CDIDeviceNotFound, match=r"no device '7' \(known: 0, GPU-.*, all\)"):
        registry.resolve(["example.com/gpu=7"])
    with pytest.raises(CDIDeviceNotFound, match=r"no CDI spec defines kind 'nvidia\.com/gpu'"):
        registry.resolve(["nvidia.com/gpu=0"])


def test_missing_or_wrong_host_device(tmp_path: Path, fake_devices: Path) -> None:
    def spec(node: dict[str, object]) -> str:
        doc = {
            "cdiVersion": "0.5.0",
            "kind": "example.com/gpu",
            "devices": [{"name": "0", "containerEdits": {"deviceNodes": [node]}}],
        }
        path = tmp_path / "one.json"
        path.write_text(json.dumps(doc))
        return str(tmp_path)

    registry = discover_cdi([spec({"path": "/dev/fakegpu0", "hostPath": str(fake_devices / "gone")})])
    with pytest.raises(HostDeviceError, match="does not exist"):
        registry.resolve(["example.com/gpu=0"])
    registry = discover_cdi([spec({"path": "/dev/fakegpu0", "hostPath": str(fake_devices / "plainfile")})])
    with pytest.raises(HostDeviceError, match="not a device node"):
        registry.resolve(["example.com/gpu=0"])
    registry = discover_cdi(
        [spec({"path": "/dev/fakegpu0", "hostPath": str(fake_devices / "fakectl"), "type": "b"})]
    )
    with pytest.raises(HostDeviceError, match="the host node is 'c'"):
        registry.resolve(["example.com/gpu=0"])


def test_net_devices_are_refused(tmp_path: Path) -> None:
    doc = {
        "cdiVersion": "1.1.0",
        "kind": "example.com/nic",
        "devices": [
            {"name": "0", "containerEdits": {"netDevices": [{"hostInterfaceName": "eth1", "name": "e"}]}}
        ],
    }
    (tmp_path / "nic.json").write_text(json.dumps(doc))
    with pytest.raises(CDIUnsupported, match="eth1"):
        discover_cdi([str(tmp_path)]).resolve(["example.com/nic=0"])


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"kind": "a.com/b", "devices": [{"name": "0"}]}, "'cdiVersion' is required"),
        ({"cdiVersion": "9.0.0", "kind": "a.com/b", "devices": [{"name": "0"}]}, "newer than the newest"),
        ({"cdiVersion": "0.2.0", "kind": "a.com/b", "devices": [{"name": "0"}]}, "unknown"),
        ({"cdiVersion": "latest", "kind": "a.com/b", "devices": [{"name": "0"}]}, "not a semantic version"),
        ({"cdiVersion": "0.5.0", "kind": "gpu", "devices": [{"name": "0"}]}, "not vendor/class"),
        ({"cdiVersion": "0.5.0", "kind": "a.com/b", "devices": []}, "at least one device"),
        (
            {"cdiVersion": "0.5.0", "kind": "a.com/b", "devices": [{"name": "0"}, {"name": "0"}]},
            "defined twice",
        ),
        ({"cdiVersion": "0.5.0", "kind": "a.com/b", "devices": [{"name": "a b"}]}, "device name"),
        (
            {
                "cdiVersion": "0.5.0",
                "kind": "a.com/b",
                "devices": [{"name": "0", "containerEdits": {"deviceNodes": [{"path": "dev/x"}]}}],
            },
            "absolute",
        ),
        (
            {
                "cdiVersion": "0.5.0",
                "kind": "a.com/b",
                "devices": [
                    {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/x", "type": "z"}]}}
                ],
            },
            "'type'",
        ),
        (
            {
                "cdiVersion": "0.5.0",
                "kind": "a.com/b",
                "devices": [
                    {
                        "name": "0",
                        "containerEdits": {"deviceNodes": [{"path": "/dev/x", "permissions": "wr"}]},
                    }
                ],
            },
            "'permissions'",
        ),
        (
            {
                "cdiVersion": "0.5.0",
                "kind": "a.com/b",
                "devices": [
                    {"name": "0", "containerEdits": {"hooks": [{"hookName": "preStart", "path": "/x"}]}}
                ],
            },
            "'hookName'",
        ),
        (
            {
                "cdiVersion": "0.5.0",
                "kind": "a.com/b",
                "devices": [{"name": "0", "containerEdits": {"mounts": [{"hostPath": "/x"}]}}],
            },
            "'containerPath'",
        ),
        (
            {
                "cdiVersion": "0.5.0",
                "kind": "a.com/b",
                "devices": [{"name": "0", "containerEdits": {"env": ["NOVALUE"]}}],
            },
            "KEY=VALUE",
        ),
        (
            {
                "cdiVersion": "0.5.0",
                "kind": "a.com/b",
                "devices": [{"name": "0", "containerEdits": {"additionalGids": [-1]}}],
            },
            "additionalGids",
        ),
        (["not", "a", "mapping"], "must be a mapping"),
    ],
)
def test_invalid_specs(doc: object, message: str) -> None:
    with pytest.raises(CDISpecError, match=message) as info:
        parse_cdi_spec(doc, "/etc/cdi/test.yaml")
    assert "/etc/cdi/test.yaml" in str(info.value)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CDISpecError, match="must end in"):
        load_cdi_spec_file(tmp_path / "spec.toml")
    with pytest.raises(CDISpecError, match="cannot read"):
        load_cdi_spec_file(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CDISpecError, match="not valid JSON"):
        load_cdi_spec_file(tmp_path / "bad.json")


def test_resolved_edits_land_in_the_spec(cdi_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    edits = discover_cdi([str(d) for d in cdi_dirs]).resolve(["example.com/gpu=all"])
    spec = build_spec(
        SandboxRequest(
            args=("/bin/true",),
            bundle_dir=str(tmp_path / "bundle"),
            engine_dir=str(tmp_path / "engine"),
            memory_limit_bytes=1 << 30,
            cgroups_path="/modelrunner/cdi",
            devices=edits,
        )
    )
    devices = {d["path"]: d for d in spec["linux"]["devices"]}
    assert devices["/dev/fakegpu0"]["major"] == 1 and devices["/dev/fakegpu0"]["minor"] == 5
    assert devices["/dev/fakectl"]["minor"] == 3
    rules = spec["linux"]["resources"]["devices"]
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"} in rules
    assert {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"} in rules
    assert "NVIDIA_VISIBLE_DEVICES=void" in spec["process"]["env"]
    assert any(m["destination"] == "/usr/lib/libfake.so.1" for m in spec["mounts"])
    assert spec["hooks"]["createContainer"][0]["path"] == "/usr/bin/true"
