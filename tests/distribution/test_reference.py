"""Reference normalization: DMR's own table (pkg/distribution/distribution/normalize_test.go) and
the canonical stored form (dmr.md 1.8)."""

from __future__ import annotations

import pytest
from modelrunner.distribution import InvalidReference, display_name, normalize_model_name, parse_reference
from modelrunner.distribution.reference import looks_like_digest, looks_like_id

HEX64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

# (input, DMR's normalizeModelName result) — DMR's TestNormalizeModelName cases, IDs not in store.
DMR_NORMALIZE_CASES = [
    ("gemma3", "ai/gemma3:latest"),
    ("gemma3:v1", "ai/gemma3:v1"),
    ("myorg/model", "myorg/model:latest"),
    ("myorg/model:v2", "myorg/model:v2"),
    ("ai/gemma3:latest", "ai/gemma3:latest"),
    ("registry.example.com/model", "registry.example.com/model:latest"),
    ("registry.example.com/model:v1", "registry.example.com/model:v1"),
    ("registry.example.com/myorg/model:v1", "registry.example.com/myorg/model:v1"),
    ("1234567890ab", "1234567890ab"),
    (HEX64, HEX64),
    (f"sha256:{HEX64}", f"sha256:{HEX64}"),
    ("", ""),
    ("   ", ""),
    ("  gemma3  ", "ai/gemma3:latest"),
    ("model:", "ai/model:latest"),
    ("myorg/model:", "myorg/model:latest"),
    ("abc123", "ai/abc123:latest"),
    ("model-xyz", "ai/model-xyz:latest"),
    ("MyModel", "ai/mymodel:latest"),
    ("hf.co/org/model", "huggingface.co/org/model:latest"),
    ("hf.co/org/model:Q4_K_M", "huggingface.co/org/model:Q4_K_M"),
    ("huggingface.co/org/model", "huggingface.co/org/model:latest"),
    ("huggingface.co/org/model:Q4_K_M", "huggingface.co/org/model:Q4_K_M"),
    # dmr.md 1.8 examples
    ("hf.co/org/M:Q4_K_M", "huggingface.co/org/m:Q4_K_M"),
]


@pytest.mark.parametrize(("given", "expected"), DMR_NORMALIZE_CASES)
def test_normalize_matches_dmr(given: str, expected: str) -> None:
    assert normalize_model_name(given) == expected


# DMR's TestLooksLikeID / TestLooksLikeDigest tables.
@pytest.mark.parametrize(
    ("given", "expected"),
    [("1234567890ab", True), (HEX64, True), ("12345", False), (HEX64 + "0", False),
     ("12345678xyz9", False), (HEX64[:-3] + "XYZ", False), ("1234567890AB", False), ("", False)],
)
def test_looks_like_id(given: str, expected: bool) -> None:
    assert looks_like_id(given) is expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [(f"sha256:{HEX64}", True), (HEX64, False), (f"sha512:{HEX64}", False), ("sha256:invalid", False),
     ("sha256:1234567890ab", False), ("sha256:0123456789ABCDEF" + HEX64[16:], False), ("", False),
     ("sha256:", False)],
)
def test_looks_like_digest(given: str, expected: bool) -> None:
    assert looks_like_digest(given) is expected


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("smollm2", "docker.io/ai/smollm2:latest"),
        ("ai/smollm2", "docker.io/ai/smollm2:latest"),
        ("docker.io/ai/smollm2:latest", "docker.io/ai/smollm2:latest"),
        ("index.docker.io/ai/smollm2:latest", "docker.io/ai/smollm2:latest"),
        ("docker.io/smollm2", "docker.io/ai/smollm2:latest"),  # default org replaces library/
        ("MyOrg/Model:V1", "docker.io/myorg/model:V1"),  # tag case kept
        ("gemma3:v1", "docker.io/ai/gemma3:v1"),
        ("registry.example.com/m:v1", "registry.example.com/m:v1"),
        ("localhost:5000/ai/m", "localhost:5000/ai/m:latest"),
        ("localhost/m", "localhost/m:latest"),
        ("127.0.0.1:5000/ai/m:q4", "127.0.0.1:5000/ai/m:q4"),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
         "huggingface.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M"),
        (f"ai/m@sha256:{HEX64}", f"docker.io/ai/m@sha256:{HEX64}"),
        (f"ai/m:v2@sha256:{HEX64}", f"docker.io/ai/m:v2@sha256:{HEX64}"),
    ],
)
def test_canonical_form(given: str, canonical: str) -> None:
    assert str(parse_reference(given)) == canonical


def test_default_registry_is_configurable() -> None:
    ref = parse_reference("ai/m", default_registry="registry.local:5000")
    assert str(ref) == "registry.local:5000/ai/m:latest"
    assert ref.is_local


@pytest.mark.parametrize(
    "given",
    ["", "  ", HEX64, f"sha256:{HEX64}", "ai/m:-bad", "ai/m:" + "x" * 129, "ai/M@sha256:abc",
     "ai//m", "ai/m-", "_m", "ai/m@sha256:" + HEX64[:-1], "a" * 300, "bad host!/m"],
)
def test_invalid_references_raise(given: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(given)
    assert info.value.status_hint == 400


def test_reference_properties() -> None:
    hub = parse_reference("smollm2")
    assert hub.api_host == "registry-1.docker.io"
    assert hub.is_docker_hub and not hub.is_local
    assert hub.manifest_reference == "latest"
    local = parse_reference("127.0.0.1:5000/ai/m")
    assert local.api_host == "127.0.0.1:5000" and local.is_local
    assert parse_reference("models.local/ai/m").is_local
    assert parse_reference("hf.co/org/m").is_huggingface
    pinned = parse_reference(f"ai/m@sha256:{HEX64}")
    assert pinned.manifest_reference == f"sha256:{HEX64}"


@pytest.mark.parametrize(
    ("tag", "shown"),
    [("docker.io/ai/smollm2:latest", "smollm2"), ("index.docker.io/ai/smollm2:v1", "smollm2:v1"),
     ("docker.io/myorg/m:latest", "myorg/m"), ("huggingface.co/org/m:Q4_K_M", "huggingface.co/org/m:Q4_K_M")],
)
def test_display_name(tag: str, shown: str) -> None:
    assert display_name(tag) == shown
