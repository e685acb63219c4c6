"""The I/O helpers beside the builder: the engine directory and prepared network namespaces."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import trio
from modelrunner.sandbox import (
    InvalidSandboxRequest,
    NetnsError,
    SandboxRequest,
    UserNamespace,
    create_loopback_netns,
    netns_interfaces,
    netns_path,
    open_loopback_netns,
    prepare_engine_dir,
    remove_netns,
)


def request_for(engine_dir: Path, **overrides: object) -> SandboxRequest:
    fields: dict[str, object] = {
        "args": ("/bin/true",),
        "bundle_dir": "/var/lib/modelrunner/bundles/b",
        "engine_dir": str(engine_dir),
        "memory_limit_bytes": 1 << 30,
        "cgroups_path": "/modelrunner/x",
    }
    fields.update(overrides)
    return SandboxRequest(**fields)  # type: ignore[arg-type]


def test_engine_dir_belongs_to_the_engine(tmp_path: Path) -> None:
    engine_dir = tmp_path / "runner-1"
    prepare_engine_dir(request_for(engine_dir, uid=65532, gid=65533))
    st = engine_dir.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65532, 65533, 0o700)


def test_engine_dir_under_userns_uses_the_mapped_ids(tmp_path: Path) -> None:
    engine_dir = tmp_path / "runner-2"
    engine_dir.mkdir()  # an existing empty directory is taken over
    prepare_engine_dir(request_for(engine_dir, userns=UserNamespace.single_range(200_000)))
    st = engine_dir.stat()
    assert (st.st_uid, st.st_gid) == (200_000 + 65532, 200_000 + 65532)


def test_engine_dir_refuses_leftovers_and_symlinks(tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "engine.sock").write_text("")
    with pytest.raises(InvalidSandboxRequest, match="not empty"):
        prepare_engine_dir(request_for(stale))
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(InvalidSandboxRequest, match="not a directory"):
        prepare_engine_dir(request_for(link))
    assert target.stat().st_uid == 0, "the symlink's target must be left alone"
    with pytest.raises(InvalidSandboxRequest, match="parent"):
        prepare_engine_dir(request_for(tmp_path / "missing" / "dir"))


def unique_name() -> str:
    return f"mr-test-{uuid.uuid4().hex[:12]}"


@pytest.mark.integration
def test_loopback_netns_has_only_lo_up() -> None:
    name = unique_name()
    path = create_loopback_netns(name)
    try:
        assert path == netns_path(name) == f"/var/run/netns/{name}"
        (lo,) = netns_interfaces(path)
        assert lo.name == "lo"
        assert lo.up
        assert set(lo.addresses) == {"127.0.0.1", "::1"}
        with pytest.raises(NetnsError, match="already exists"):
            create_loopback_netns(name)
    finally:
        remove_netns(name)
    assert not Path(path).exists()
    remove_netns(name)  # removing twice is fine


def test_netns_names_are_checked() -> None:
    for bad in ("", "../etc", "a/b", "x" * 64, "-leading"):
        with pytest.raises(NetnsError, match="must be"):
            netns_path(bad)
    with pytest.raises(NetnsError, match="no network namespace"):
        netns_interfaces("/var/run/netns/definitely-not-there")


@pytest.mark.integration
async def test_open_loopback_netns_removes_it_even_when_cancelled() -> None:
    name = unique_name()
    async with open_loopback_netns(name) as path:
        assert [i.name for i in netns_interfaces(path)] == ["lo"]
    assert not await trio.Path(path).exists()

    name = unique_name()
    with trio.move_on_after(0.2) as scope:
        async with open_loopback_netns(name) as path:
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert not await trio.Path(path).exists()
