"""Pure parts, bytes in, values out: digests and manifests, auth challenges and credentials,
progress events and their throttle, and the package's exports."""

from __future__ import annotations

import base64
import json

import modelrunner.distribution as distribution
import pytest
from modelrunner.distribution import InvalidDigest, InvalidManifest, UnsupportedMediaType
from modelrunner.distribution.auth import (
    Challenge,
    DockerConfig,
    parse_helper_output,
    parse_token_response,
    parse_www_authenticate,
)
from modelrunner.distribution.oci import (
    Descriptor,
    Manifest,
    created_unix,
    parse_digest,
    parse_index,
    parse_manifest,
    parse_model_config,
)
from modelrunner.distribution.progress import Mode, ProgressEvent, ProgressThrottle

HEX = "a" * 64


def test_exports_are_in_step() -> None:
    exported = set(distribution.__all__)
    for name in exported:
        assert hasattr(distribution, name), name
    modules = {"archive", "auth", "errors", "ggufinfo", "oci", "packaging", "progress", "reference",
               "registry", "store"}
    public = {n for n in dir(distribution) if not n.startswith("_")} - modules
    assert public == exported


@pytest.mark.parametrize("bad", ["sha256:" + "a" * 63, "sha256:" + "A" * 64, "md5:abc", "sha256:../../etc",
                                 f"sha256:{HEX}/x", "", None, 42, "sha512:" + "a" * 64])
def test_digests_are_strict(bad: object) -> None:
    with pytest.raises(InvalidDigest):
        parse_digest(bad)


def test_manifest_round_trip_and_validation() -> None:
    manifest = Manifest(Descriptor("application/vnd.docker.ai.model.config.v0.1+json", f"sha256:{HEX}", 10),
                        (Descriptor("application/vnd.docker.ai.gguf.v3", f"sha256:{'b' * 64}", 5,
                                    {"org.cncf.model.filepath": "m.gguf"}),))
    data = manifest.to_bytes()
    assert data.startswith(b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",')
    assert parse_manifest(data) == manifest
    for broken in (b"[]", b"{", b'{"schemaVersion":1,"layers":[]}',
                   b'{"schemaVersion":2,"config":{"digest":"sha256:x","size":1},"layers":[]}',
                   json.dumps({"schemaVersion": 2, "config": {"mediaType": "x", "digest": f"sha256:{HEX}",
                                                              "size": -1}, "layers": []}).encode(),
                   b"x" * (5 * 1024 * 1024)):
        with pytest.raises(InvalidManifest):
            parse_manifest(broken)
    with pytest.raises(UnsupportedMediaType):
        parse_manifest(b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}')
    index = parse_index(b'{"schemaVersion":2,"manifests":[{"mediaType":"m","digest":"sha256:' + HEX.encode()
                        + b'","size":3}]}')
    assert index.manifests[0].size == 3


def test_model_configs_docker_and_cncf() -> None:
    docker = parse_model_config(json.dumps({
        "config": {"format": "gguf", "context_size": 4096, "size": "1GiB", "gguf": {"a": "1"}},
        "descriptor": {"created": "2025-04-03T10:00:00.123456789Z"},
        "rootfs": {"type": "rootfs", "diff_ids": [f"sha256:{HEX}"]}}).encode(),
        "application/vnd.docker.ai.model.config.v0.1+json")
    assert docker.context_size == 4096 and docker.format == "gguf" and docker.gguf == {"a": "1"}
    assert created_unix(docker.created) == 1743674400
    cncf = parse_model_config(json.dumps({
        "descriptor": {"createdAt": "2025-01-01T00:00:00Z", "family": "llama"},
        "modelfs": {"type": "layers", "diffIds": [f"sha256:{HEX}"]},
        "config": {"architecture": "llama", "format": "gguf", "paramSize": "8B",
                   "quantization": "Q4_0"}}).encode(),
        "application/vnd.cncf.model.config.v1+json")
    assert dict(cncf.config) == {"format": "gguf", "quantization": "Q4_0", "parameters": "8B",
                                 "architecture": "llama"}
    assert cncf.context_size is None and cncf.diff_ids == (f"sha256:{HEX}",)
    with pytest.raises(UnsupportedMediaType) as info:
        parse_model_config(b"{}", "application/vnd.oci.image.config.v1+json")
    assert info.value.status_hint == 422
    assert "application/vnd.cncf.model.config.v1+json" in str(info.value)
    assert created_unix("") == 0 and created_unix("yesterday") == 0


def test_www_authenticate_parsing() -> None:
    header = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:samalba/my-app:pull,push"')
    assert parse_www_authenticate(header) == [Challenge("bearer", {
        "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
        "scope": "repository:samalba/my-app:pull,push"})]
    basic = parse_www_authenticate('Basic realm="Registry Realm"')
    assert basic == [Challenge("basic", {"realm": "Registry Realm"})]
    both = parse_www_authenticate('Basic realm="a, b", Bearer realm="x\\"y", service=svc')
    assert both == [Challenge("basic", {"realm": "a, b"}),
                    Challenge("bearer", {"realm": 'x"y', "service": "svc"})]
    assert parse_www_authenticate("") == []
    assert parse_www_authenticate("Bearer") == [Challenge("bearer", {})]
    unterminated = parse_www_authenticate('Bearer realm="unterminated')
    assert unterminated == [Challenge("bearer", {"realm": "unterminated"})]


def test_docker_config_credentials() -> None:
    encoded = base64.b64encode(b"alice:s3cr:et").decode()
    config = DockerConfig.parse(json.dumps({
        "auths": {
            "https://index.docker.io/v1/": {"auth": encoded},
            "registry.example.com:5000": {"username": "bob", "password": "pw"},
            "https://ghcr.io": {"identitytoken": "refresh"},
        },
        "credHelpers": {"gcr.io": "gcloud"},
        "credsStore": "desktop",
    }).encode())
    hub = config.inline_credentials("docker.io")
    assert hub is not None and (hub.username, hub.password) == ("alice", "s3cr:et")
    other = config.inline_credentials("registry.example.com:5000")
    assert other is not None and other.username == "bob"
    ghcr = config.inline_credentials("ghcr.io")
    assert ghcr is not None and ghcr.identity_token == "refresh"
    assert config.inline_credentials("quay.io") is None
    assert config.helper_for("gcr.io") == "gcloud"
    assert config.helper_for("quay.io") == "desktop"
    assert config.helper_server_url("docker.io") == "https://index.docker.io/v1/"
    assert DockerConfig.parse(b"not json") == DockerConfig()
    assert "s3cr" not in repr(hub)


def test_helper_and_token_answers() -> None:
    creds = parse_helper_output(b'{"ServerURL":"x","Username":"u","Secret":"p"}')
    assert creds is not None and (creds.username, creds.password) == ("u", "p")
    token_creds = parse_helper_output(b'{"Username":"<token>","Secret":"refresh"}')
    assert token_creds is not None and token_creds.identity_token == "refresh"
    assert parse_helper_output(b"credentials not found") is None
    assert parse_token_response(b'{"token":"t","expires_in":300}') == ("t", 300)
    assert parse_token_response(b'{"access_token":"t"}') == ("t", 60)
    with pytest.raises(ValueError):
        parse_token_response(b'{"expires_in":3}')


def test_progress_lines_have_dmr_shape() -> None:
    event = ProgressEvent.transfer(Mode.PULL, 2000000, f"sha256:{HEX}", 1048576, 524288)
    assert json.loads(event.to_json_line()) == {
        "type": "progress", "message": "Downloaded: 0.50 MB", "total": 2000000,
        "layer": {"id": f"sha256:{HEX}", "size": 1048576, "current": 524288}, "mode": "pull"}
    assert ProgressEvent.transfer(Mode.PUSH, 1, "x", 1, 1).message == "Uploaded: 0.00 MB"
    error = ProgressEvent.error(Mode.PUSH, "denied <x>")
    line = error.to_json_line()
    assert line.endswith(b"\n") and b"<" not in line  # escaped as Go's encoder does
    assert json.loads(line) == {"type": "error", "message": "Error: denied <x>", "total": 0,
                                "layer": {"size": 0, "current": 0}, "mode": "push"}
    assert ProgressEvent.from_json(json.loads(event.to_json_line())) == event


def test_progress_throttle_follows_dmr_rule() -> None:
    now = [0.0]
    throttle = ProgressThrottle(Mode.PULL, 10 * 1024 * 1024, lambda: now[0])
    size = 10 * 1024 * 1024
    assert throttle.update("a", size, 1000) is not None  # first update goes out
    assert throttle.update("a", size, 2000) is None  # too soon, too little
    assert throttle.update("b", size, 10) is not None  # layers are throttled separately
    now[0] = 0.05
    assert throttle.update("a", size, 1024 * 1024 + 1000) is not None  # 1 MiB more
    assert throttle.update("a", size, 1024 * 1024 + 2000) is None
    now[0] = 0.16
    assert throttle.update("a", size, 1024 * 1024 + 3000) is not None  # 100 ms later
    assert throttle.update("a", size, size) is not None  # done always goes out
