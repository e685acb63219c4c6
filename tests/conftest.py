"""Shared pytest configuration: every area's fixtures live in tests/fixtures/ as plugins (the real-engine
API fixtures in tests/api/llama_fixtures.py, shared by the proxy and compatibility-layer suites)."""

pytest_plugins = [
    "tests.fixtures.engine",
    "tests.fixtures.models",
    "tests.fixtures.registry",
    "tests.fixtures.containerd",
    "tests.fixtures.images",
    "tests.fixtures.engines",
    "tests.api.llama_fixtures",
]
