"""sandbox/__init__.py re-exports the public names, and the package imports nothing it must not."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import modelrunner.sandbox as sandbox

SANDBOX_DIR = Path(__file__).resolve().parents[2] / "sandbox"
MODULES = ("cdi", "edits", "errors", "gpus", "hostdirs", "netns", "seccomp", "spec")


def test_every_exported_name_exists_and_is_listed_once() -> None:
    assert len(sandbox.__all__) == len(set(sandbox.__all__))
    for name in sandbox.__all__:
        assert getattr(sandbox, name) is not None, name


def test_exports_come_from_the_modules_all() -> None:
    for module_name in MODULES:
        module = importlib.import_module(f"modelrunner.sandbox.{module_name}")
        for name in getattr(module, "__all__", ()):
            if name in sandbox.__all__:
                assert getattr(sandbox, name) is getattr(module, name), name


def test_no_imports_from_other_areas() -> None:
    # sandbox/ sits below scheduler/ and beside shim/, engines/ and distribution/: it imports none.
    forbidden = (
        "modelrunner.shim",
        "modelrunner.engines",
        "modelrunner.distribution",
        "modelrunner.scheduler",
        "modelrunner.api",
        "modelrunner.cli",
    )
    for path in SANDBOX_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(forbidden), f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith(forbidden), f"{path.name} imports {alias.name}"
