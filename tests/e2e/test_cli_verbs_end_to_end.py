"""Every remaining `modelrunner` verb against the real daemon (and a real registry for push/pull),
including the interactive chat on a terminal."""

from __future__ import annotations

import json

import httpx
import pytest
import testmodels

from tests.e2e.daemon import Daemon
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.integration


def test_tag_inspect_push_rm_pull_df(daemon: Daemon, packaged: dict[str, str], registry: Registry) -> None:
    cli = daemon.cli()
    remote = f"{registry.host}/e2e/chat:v1"
    assert cli("tag", "ai/e2e-chat", remote).returncode == 0
    inspected = json.loads(cli("inspect", remote).stdout)
    assert inspected["id"] == packaged["ai/e2e-chat"]
    assert f"{registry.host}/e2e/chat:v1" in inspected["tags"]

    pushed = cli("push", remote)
    assert pushed.returncode == 0, pushed.stderr

    removed = cli("rm", remote)
    assert removed.returncode == 0, removed.stderr
    assert "Untagged" in removed.stdout
    assert httpx.get(f"{daemon.url}/models/{remote}").status_code == 404

    pulled = cli("pull", remote)
    assert pulled.returncode == 0, pulled.stderr
    # Same manifest bytes, so the same model ID as the model it was tagged from.
    assert json.loads(cli("inspect", remote).stdout)["id"] == packaged["ai/e2e-chat"]
    again = cli("pull", remote)
    assert again.returncode == 0 and "cached" in (again.stdout + again.stderr).lower()

    df = cli("df")
    assert df.returncode == 0 and "Models" in df.stdout


def test_configure_logs_uninstall_and_reinstall_engine(daemon: Daemon, packaged: dict[str, str]) -> None:
    cli = daemon.cli()
    configured = cli("configure", "--context-size", "1024", "ai/e2e-chat")
    assert configured.returncode == 0, configured.stderr
    assert cli("run", "ai/e2e-chat", "hi").stdout.strip() == testmodels.CHAT_REPLY
    argv = " ".join(daemon.ctr("containers", "info", daemon.ctr_rows("tasks", "ls", "-q")[0]).split())
    assert '"--ctx-size", "1024"' in argv or "--ctx-size 1024" in argv

    logs = cli("logs")
    assert logs.returncode == 0
    assert "modelrunner" in logs.stdout

    assert cli("unload", "--all").returncode == 0
    assert cli("uninstall-engine", "llama.cpp").returncode == 0
    assert httpx.get(f"{daemon.url}/engines/status").json()["llama.cpp"].startswith("Not Installed")
    assert cli("install-engine").returncode == 0
    assert httpx.get(f"{daemon.url}/engines/status").json()["llama.cpp"].startswith("Running")
    assert cli("run", "ai/e2e-chat", "hi").stdout.strip() == testmodels.CHAT_REPLY


def test_interactive_run_on_a_terminal(daemon: Daemon, packaged: dict[str, str]) -> None:
    session = daemon.cli().spawn_pty("run", "ai/e2e-chat")
    try:
        session.expect(">>> ", timeout=60)
        session.sendline("Hello there")
        assert testmodels.CHAT_REPLY in session.expect(">>> ", timeout=60)
        session.sendline('"""first')
        session.expect("... ")
        session.sendline('second"""')
        assert testmodels.CHAT_REPLY in session.expect(">>> ", timeout=60)
        session.sendline("/set num_ctx 2048")
        session.expect(">>> ")
        session.sendline("/bye")
        assert session.wait(30) == 0
    finally:
        session.close()
