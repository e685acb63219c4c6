"""`modelrunner package`: the artifact built from local files and streamed to `POST /models/load`."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import testmodels
from modelrunner.distribution.archive import load_tar
from modelrunner.distribution.oci import parse_manifest, parse_model_config, sha256_digest
from modelrunner.distribution.packaging import package_gguf
from modelrunner.distribution.store import ModelStore

from tests.cli.cli_runner import CLI
from tests.cli.fake_daemon import FakeDaemon, RecordedRequest, Reply

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("package-inputs")
    gguf = testmodels.write_chat_model(directory / "tiny-chat.gguf")
    license_file = directory / "LICENSE"
    license_file.write_text("Apache-2.0\n")
    template = directory / "template.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    return {"gguf": gguf, "license": license_file, "template": template, "dir": directory}


class LoadRecorder:
    """The daemon side of `package`: keeps each uploaded archive, answers like DMR, and then
    accepts tags for the model it loaded."""

    def __init__(self, daemon: FakeDaemon) -> None:
        self.archives: list[bytes] = []
        self.tags: list[RecordedRequest] = []
        self.daemon = daemon
        daemon.on("POST", "/models/load", self._load)

    def _load(self, request: RecordedRequest) -> Reply:
        self.archives.append(request.body)
        model_id = sha256_digest(_members(request.body)[-1][1])
        self.daemon.on("POST", f"/models/{model_id}/tag", self._tag)
        return Reply.ndjson([{"type": "success", "message": "Model loaded successfully"}])

    def _tag(self, request: RecordedRequest) -> Reply:
        self.tags.append(request)
        return Reply.json({"message": "tagged"}, 201)


def _members(archive: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        return [(m.name, tar.extractfile(m).read() if m.isfile() else b"") for m in tar]  # type: ignore[union-attr]


def test_package_loads_a_dmr_archive_and_tags_it(
    cli: CLI, fake_daemon: FakeDaemon, inputs: dict[str, Path], tmp_path: Path
) -> None:
    recorder = LoadRecorder(fake_daemon)
    args = [
        "package",
        "--gguf",
        str(inputs["gguf"]),
        "--license",
        str(inputs["license"]),
        "--chat-template",
        str(inputs["template"]),
        "--context-size",
        "2048",
        "myorg/tiny:v1",
    ]
    result = cli(*args, env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert result.returncode == 0, result.stderr
    (archive,) = recorder.archives
    members = _members(archive)
    names = [name for name, _ in members]
    assert names[:2] == ["blobs", "blobs/sha256"] and names[-1] == "manifest.json"
    for name, data in members:
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rpartition("/")[2]
    manifest_bytes = members[-1][1]
    manifest = parse_manifest(manifest_bytes)
    assert [layer.media_type for layer in manifest.layers] == [
        "application/vnd.docker.ai.gguf.v3",
        "application/vnd.docker.ai.license",
        "application/vnd.docker.ai.chat.template.jinja",
    ]
    assert [layer.annotations["org.cncf.model.filepath"] for layer in manifest.layers] == [
        "tiny-chat.gguf",
        "LICENSE",
        "template.jinja",
    ]
    blobs = dict(members)
    config = parse_model_config(
        blobs[f"blobs/sha256/{manifest.config.digest[7:]}"], manifest.config.media_type
    )
    assert config.context_size == 2048 and config.format == "gguf"
    assert config.config["architecture"] == "llama" and config.created == "2023-11-14T22:13:20Z"
    assert config.diff_ids == tuple(layer.digest for layer in manifest.layers)

    (load,) = fake_daemon.requests_to("POST", "/models/load")
    assert load.headers["content-length"] == str(len(archive))
    assert "transfer-encoding" not in load.headers
    assert load.headers["content-type"] == "application/x-tar"

    # The daemon's own loader accepts the archive and gets the model ID the CLI tagged.
    model_id = load_tar(ModelStore(tmp_path / "store"), io.BytesIO(archive))
    assert model_id == sha256_digest(manifest_bytes)
    (tag,) = recorder.tags
    assert tag.path == f"/models/{model_id}/tag"
    assert tag.query == {"repo": ["docker.io/myorg/tiny"], "tag": ["v1"]}
    assert result.stdout.strip() == f"Packaged myorg/tiny:v1 ({model_id[7:19]})"

    # Same inputs and SOURCE_DATE_EPOCH: the same bytes, so the same model ID, and the same one
    # the daemon's own packaging gives.
    again = cli(*args, env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert again.returncode == 0, again.stderr
    assert recorder.archives[1] == archive
    local = package_gguf(
        ModelStore(tmp_path / "store2"),
        inputs["gguf"],
        licenses=[inputs["license"]],
        chat_template=inputs["template"],
        context_size=2048,
        created=datetime.fromtimestamp(1700000000, UTC),
    )
    assert local.model_id == model_id


def test_package_and_push(cli: CLI, fake_daemon: FakeDaemon, inputs: dict[str, Path]) -> None:
    recorder = LoadRecorder(fake_daemon)
    fake_daemon.on(
        "POST",
        "/models/localhost:5000/org/tiny:v2/push",
        Reply.ndjson(
            [
                {
                    "type": "progress",
                    "total": 10,
                    "mode": "push",
                    "layer": {"id": "sha256:" + "c" * 64, "size": 10, "current": 10},
                },
                {"type": "success", "message": "Model pushed successfully", "mode": "push"},
            ]
        ),
    )
    result = cli("package", "--gguf", str(inputs["gguf"]), "--push", "localhost:5000/org/tiny:v2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("Packaged localhost:5000/org/tiny:v2 (")
    assert result.stdout.splitlines()[-1] == "Model pushed successfully"
    assert [t.query for t in recorder.tags] == [{"repo": ["localhost:5000/org/tiny"], "tag": ["v2"]}]
    assert [r.path for r in fake_daemon.requests][-1] == "/models/localhost:5000/org/tiny:v2/push"


@pytest.mark.parametrize(
    ("args", "status", "fragment"),
    [
        (["--gguf", "/nonexistent/model.gguf", "m"], 4, "does not exist"),
        (["--gguf", "{license}", "m"], 2, "GGUF"),
        (["--gguf", "{gguf}", "Bad Name!"], 2, "invalid model reference"),
        (["--gguf", "{gguf}", "--mmproj", "{license}", "m"], 2, "GGUF"),
        (["--gguf", "{dir}", "m"], 2, "not a regular file"),
        (["--gguf", "{gguf}", "--push", "hf.co/org/m"], 2, "Hugging Face"),
        (["--gguf", "{gguf}", "--context-size", "0", "m"], 2, "more than 0"),
    ],
)
def test_package_refuses_bad_input_before_uploading(
    cli: CLI, fake_daemon: FakeDaemon, inputs: dict[str, Path], args: list[str], status: int, fragment: str
) -> None:
    filled = [a.format(**{k: str(v) for k, v in inputs.items()}) for a in args]
    result = cli("package", *filled)
    assert result.returncode == status, result
    assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr
    assert fake_daemon.requests == []


def test_package_daemon_refuses_archive(cli: CLI, fake_daemon: FakeDaemon, inputs: dict[str, Path]) -> None:
    fake_daemon.on("POST", "/models/load", Reply.text("invalid archive: blob digest mismatch\n", 400))
    result = cli("package", "--gguf", str(inputs["gguf"]), "m")
    assert result.returncode == 1
    assert result.stderr == "modelrunner: error: invalid archive: blob digest mismatch\n"
    fake_daemon.on("POST", "/models/load", Reply.ndjson([{"type": "error", "message": "Error: disk full"}]))
    result = cli("package", "--gguf", str(inputs["gguf"]), "m")
    assert result.returncode == 1 and result.stderr == "modelrunner: error: disk full\n"
    assert not [r for r in fake_daemon.requests if r.path.endswith("/tag")]


def test_a_file_given_twice_is_one_blob(inputs: dict[str, Path]) -> None:
    from modelrunner.cli._package import build_model, export_tar_chunks, export_tar_size

    model = build_model(inputs["gguf"], licenses=[inputs["license"], inputs["license"]])
    archive = b"".join(export_tar_chunks(model))
    assert len(archive) == export_tar_size(model)
    names = [name for name, _ in _members(archive)]
    # A file given twice is one blob in the archive but two layers in the manifest.
    assert len(names) == 2 + 2 + 1 + 1
    assert len(json.loads(model.manifest)["layers"]) == 3


def test_package_on_a_terminal(cli: CLI, fake_daemon: FakeDaemon, inputs: dict[str, Path]) -> None:
    recorder = LoadRecorder(fake_daemon)
    session = cli.spawn_pty("package", "--gguf", str(inputs["gguf"]), "m")
    try:
        session.expect("Packaged m (")
        assert session.wait() == 0
    finally:
        session.close()
    assert len(recorder.archives) == 1 and len(recorder.tags) == 1
