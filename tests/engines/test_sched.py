"""CPU scheduling: the API loop's short slice and engines as batch work (engines/sched.py), on this
machine's kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from modelrunner.engines.sched import (
    DEFAULT_SLICE_NS,
    SCHED_BATCH,
    current_policy,
    current_slice_ns,
    request_short_slice,
    run_as_batch,
)

CHILD = "from modelrunner.engines.sched import current_slice_ns; print(current_slice_ns())"


def test_the_calling_thread_gets_the_slice_and_nothing_it_starts_does() -> None:
    results: dict[str, object] = {}

    def api_loop() -> None:
        results["before"] = current_slice_ns()
        results["refused"] = request_short_slice()
        results["after"] = current_slice_ns()
        child_thread = threading.Thread(target=lambda: results.setdefault("thread", current_slice_ns()))
        child_thread.start()
        child_thread.join()
        child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
        results["process"] = int(child.stdout)

    worker = threading.Thread(target=api_loop)  # not pytest's own thread: the slice dies with it
    worker.start()
    worker.join()
    assert results["refused"] is None
    assert results["after"] == DEFAULT_SLICE_NS
    assert results["before"] != DEFAULT_SLICE_NS
    assert results["thread"] == results["before"]
    assert results["process"] == results["before"]
    assert current_slice_ns() == results["before"]  # the test's own thread is untouched


def test_run_as_batch_covers_every_thread_and_those_started_later() -> None:
    script = (
        "import threading, time, sys\n"
        "for _ in range(2): threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "print('more', flush=True)\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "ready\n"
        assert run_as_batch(child.pid) is None
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "more\n"
        threads = [int(tid) for tid in os.listdir(f"/proc/{child.pid}/task")]
        assert len(threads) == 4
        assert {current_policy(tid) for tid in threads} == {SCHED_BATCH}
    finally:
        child.kill()
        child.wait()
    assert current_policy() != SCHED_BATCH
    assert run_as_batch(2**22 + 12345) is not None  # no such process: a reason, not an exception
