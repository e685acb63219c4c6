"""Static check (mypy) that the backends and runners satisfy the contract Protocols.

Nothing calls this; mypy --strict type-checks it, so a drift between ``base.py`` and an
implementation fails lint instead of surfacing in the scheduler.
"""

from __future__ import annotations

from modelrunner.engines.base import Backend, Runner
from modelrunner.engines.llamacpp.backend import LlamaCppBackend
from modelrunner.engines.runner import ContainerRunner
from modelrunner.engines.vllm import VllmBackend


def _conforms(
    llamacpp: LlamaCppBackend, vllm: VllmBackend, runner: ContainerRunner
) -> tuple[Backend, Backend, Runner]:
    return llamacpp, vllm, runner
