"""`GET /logs`: merged service and engine logs, `follow`, `no-engines`, and DMR's error codes."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.api.conftest import Fakes, serve_fakes


def _write_logs(log_dir: Path) -> None:
    log_dir.mkdir()
    (log_dir / "modelrunner.log").write_text(
        "[2026-11-27T10:00:01Z] daemon started\n[2026-11-27T10:00:03Z] runner ready\n"
    )
    (log_dir / "engine-llama.cpp.log").write_text(
        "[2026-11-27T10:00:02Z] llama-server loading\n  model details\n[2026-11-27T10:00:04Z] serving\n"
    )


async def test_logs_merged_by_time(fakes: Fakes, tmp_path: Path) -> None:
    _write_logs(tmp_path / "logs")
    async with serve_fakes(fakes, tmp_path, log_dir=tmp_path / "logs") as served:
        response = await served.client.get("/logs")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text == (
            "[2026-11-27T10:00:01Z] daemon started\n[2026-11-27T10:00:02Z] llama-server loading\n"
            "  model details\n[2026-11-27T10:00:03Z] runner ready\n[2026-11-27T10:00:04Z] serving\n"
        )
        response = await served.client.get("/logs?no-engines=true")
        assert "llama-server" not in response.text
        assert response.text.count("\n") == 2


async def test_logs_follow_streams_new_lines(fakes: Fakes, tmp_path: Path) -> None:
    _write_logs(tmp_path / "logs")
    async with serve_fakes(fakes, tmp_path, log_dir=tmp_path / "logs") as served:
        async with served.client.stream("GET", "/logs?follow=true") as response:
            assert response.status_code == 200
            pieces = response.aiter_text()
            with trio.fail_after(5):
                first = await pieces.__anext__()
            assert first.startswith("[2026-11-27T10:00:01Z] daemon started")
            with (tmp_path / "logs" / "engine-llama.cpp.log").open("a") as handle:
                handle.write("[2026-11-27T10:00:05Z] a new line\n")
            with trio.fail_after(5):
                received = ""
                while "a new line" not in received:
                    received += await pieces.__anext__()
        # The client left: the server stops following (and keeps serving).
        assert (await served.client.get("/version")).status_code == 200


async def test_logs_errors(fakes: Fakes, tmp_path: Path) -> None:
    async with serve_fakes(fakes, tmp_path) as served:
        response = await served.client.get("/logs")
        assert response.status_code == 501
    (tmp_path / "empty").mkdir()
    async with serve_fakes(fakes, tmp_path, log_dir=tmp_path / "empty") as served:
        assert (await served.client.get("/logs")).status_code == 404
    _write_logs(tmp_path / "logs")
    async with serve_fakes(fakes, tmp_path, log_dir=tmp_path / "logs") as served:
        response = await served.client.get("/logs?follow=maybe")
        assert response.status_code == 400
        assert response.text.startswith("invalid query parameter")
