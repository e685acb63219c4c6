"""The daemon's request for a short scheduler slice (cli/_sched.py), on this machine's kernel."""

from __future__ import annotations

import subprocess
import sys
import threading

from modelrunner.cli._sched import DEFAULT_SLICE_NS, current_slice_ns, request_short_slice

CHILD = "from modelrunner.cli._sched import current_slice_ns; print(current_slice_ns())"


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
