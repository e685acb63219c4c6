"""Shared pytest configuration: every area's fixtures live in tests/fixtures/ as plugins."""

pytest_plugins = [
    "tests.fixtures.engine",
    "tests.fixtures.models",
    "tests.fixtures.registry",
    "tests.fixtures.containerd",
    "tests.fixtures.images",
    "tests.fixtures.engines",
]
