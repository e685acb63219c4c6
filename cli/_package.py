"""``modelrunner package``: build a DMR v0.1 model artifact from local files and hand it to the daemon.

Like DMR's CLI, the artifact is built client-side (the files are on the user's machine, the daemon
may run as another user) and streamed to ``POST /models/load`` as DMR's export tar: one
``blobs/sha256/<hex>`` entry per layer and for the config, then ``manifest.json`` holding the raw
manifest (reference dmr.md 2.7, 2.9). The CLI then tags the loaded model, and with ``--push``
asks the daemon to push it, so registry credentials stay with the daemon.

Files are read twice, once to hash and once to send, and never held in memory: GGUF weights are
gigabytes. The tar headers come from :mod:`tarfile`; the body is streamed with an exact
``Content-Length``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from modelrunner.cli._client import LONG_TIMEOUT, model_path
from modelrunner.cli._commands import push_model
from modelrunner.cli._context import Context
from modelrunner.cli._errors import DaemonError, ExitStatus, NotFound, UsageError
from modelrunner.cli._progress import parse_progress_line
from modelrunner.distribution.errors import InvalidGGUF, InvalidReference
from modelrunner.distribution.ggufinfo import discover_shards, read_gguf, read_gguf_shards
from modelrunner.distribution.oci import (
    ANNOTATION_FILEPATH,
    MEDIA_TYPE_CONFIG_V01,
    Descriptor,
    Manifest,
    sha256_digest,
)
from modelrunner.distribution.packaging import build_gguf_config, gguf_artifact_files
from modelrunner.distribution.reference import parse_reference
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = ["PackagedModel", "build_model", "cmd_package", "export_tar_chunks", "export_tar_size"]

CHUNK: Final = 1 << 20
_BLOCK: Final = tarfile.BLOCKSIZE
# Fixed metadata in the tar: the daemon verifies content by digest, and a stable archive is
# easier to compare across runs.
_TAR_MTIME: Final = 0


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """A built artifact: the raw manifest and config bytes, and the file behind each layer digest."""

    manifest: bytes
    config: bytes
    files: Mapping[str, Path]  # layer digest -> file
    layers: tuple[Descriptor, ...] = ()

    @property
    def model_id(self) -> str:
        """DMR's model ID: the sha256 of the raw manifest."""
        return sha256_digest(self.manifest)


def hash_file(path: Path, on_bytes: Callable[[int], None] = lambda n: None) -> tuple[str, int]:
    """``(sha256 digest, size)`` of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            on_bytes(len(chunk))
    return "sha256:" + digest.hexdigest(), size


def _check_file(path_text: str, what: str) -> Path:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise NotFound(f"{what} {path_text!r} does not exist")
    if not path.is_file():
        raise UsageError(f"{what} {path_text!r} is not a regular file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{what} {path_text!r} is not readable")
    return path.resolve()


def build_model(
    gguf: Path,
    *,
    licenses: Sequence[Path] = (),
    chat_template: Path | None = None,
    mmproj: Path | None = None,
    context_size: int | None = None,
    created: datetime | None = None,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> PackagedModel:
    """Build a DMR v0.1 artifact: GGUF shard layers, then licenses, chat template, mmproj.

    The config comes from distribution's ``build_gguf_config``, so a model packaged here has the
    digest the daemon's own packaging would give it.

    Raises:
        InvalidGGUF: the weights (or the mmproj) are not a readable GGUF file, or a shard is missing.
        UsageError: the chat template is not UTF-8 text.
    """
    shards = discover_shards(gguf)
    info = read_gguf_shards(shards)
    if mmproj is not None:
        read_gguf(mmproj)  # refuse a projector that is not GGUF before hashing gigabytes
    if chat_template is not None:
        try:
            chat_template.read_bytes().decode()
        except UnicodeDecodeError:
            raise UsageError(f"the chat template {chat_template} is not UTF-8 text") from None

    layers: list[Descriptor] = []
    files: dict[str, Path] = {}

    for path, media_type in gguf_artifact_files(
        shards, licenses=licenses, chat_template=chat_template, mmproj=mmproj
    ):
        digest, size = hash_file(path, on_bytes)
        layers.append(Descriptor(media_type, digest, size, {ANNOTATION_FILEPATH: path.name}))
        files[digest] = path
    config = build_gguf_config(
        info, [layer.digest for layer in layers], context_size=context_size, created=created
    )
    manifest = Manifest(Descriptor(MEDIA_TYPE_CONFIG_V01, sha256_digest(config), len(config)), tuple(layers))
    return PackagedModel(manifest.to_bytes(), config, files, tuple(layers))


def _tar_header(name: str, size: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = _TAR_MTIME
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


def _blob_members(model: PackagedModel) -> list[tuple[str, int]]:
    members: list[tuple[str, int]] = []
    seen: set[str] = set()
    for layer in model.layers:
        if layer.digest not in seen:  # the same content twice (one license given twice)
            seen.add(layer.digest)
            members.append((layer.digest, layer.size))
    members.append((sha256_digest(model.config), len(model.config)))
    return members


def export_tar_size(model: PackagedModel) -> int:
    """The exact byte length of ``export_tar_chunks(model)`` (sent as Content-Length)."""
    total = len(_tar_header("blobs/", 0, directory=True)) + len(
        _tar_header("blobs/sha256/", 0, directory=True)
    )
    for digest, size in _blob_members(model):
        total += (
            len(_tar_header(f"blobs/sha256/{digest.partition(':')[2]}", size)) + size + len(_padding(size))
        )
    total += len(_tar_header("manifest.json", len(model.manifest))) + len(model.manifest)
    total += len(_padding(len(model.manifest))) + 2 * _BLOCK
    return total


def export_tar_chunks(
    model: PackagedModel, on_bytes: Callable[[int], None] = lambda n: None
) -> Iterator[bytes]:
    """DMR's export tar of ``model``, streamed from the layer files.

    Raises:
        UsageError: a layer file shrank since it was hashed (the upload would be corrupt; a file
            whose content changed at the same size is caught by the daemon's digest check).
    """
    paths = model.files
    yield _tar_header("blobs/", 0, directory=True)
    yield _tar_header("blobs/sha256/", 0, directory=True)
    for digest, size in _blob_members(model):
        yield _tar_header(f"blobs/sha256/{digest.partition(':')[2]}", size)
        path = paths.get(digest)
        if path is None:  # the config blob
            yield model.config
        else:
            sent = 0
            with path.open("rb") as f:
                while sent < size and (chunk := f.read(min(CHUNK, size - sent))):
                    sent += len(chunk)
                    on_bytes(len(chunk))
                    yield chunk
            if sent != size:
                raise UsageError(f"{path} changed while it was being packaged; run the command again")
        yield _padding(size)
    yield _tar_header("manifest.json", len(model.manifest))
    yield model.manifest
    yield _padding(len(model.manifest))
    yield b"\0" * (2 * _BLOCK)


@contextlib.contextmanager
def _byte_progress(ctx: Context) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Per-phase byte bars (hashing, sending) on a terminal; nothing otherwise."""
    if not ctx.err.is_terminal:
        yield lambda description, total: lambda n: None
        return
    progress = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=ctx.err,
        transient=True,
    )

    def phase(description: str, total: int) -> Callable[[int], None]:
        task = progress.add_task(description, total=total)
        return lambda n: progress.advance(task, n)

    with progress:
        yield phase


def _created_time(ctx: Context) -> datetime:
    """Now, or ``SOURCE_DATE_EPOCH`` for reproducible builds (same inputs, same model ID)."""
    epoch = ctx.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not epoch:
        return datetime.now(UTC)
    try:
        return datetime.fromtimestamp(int(epoch), UTC)
    except (ValueError, OverflowError, OSError):
        raise UsageError(f"SOURCE_DATE_EPOCH={epoch!r} is not a Unix time in seconds") from None


def cmd_package(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    try:
        reference = parse_reference(args.model)
    except InvalidReference as exc:
        raise UsageError(str(exc)) from exc
    if args.push and reference.is_huggingface:
        raise UsageError("--push to Hugging Face is not supported; push to an OCI registry")
    gguf = _check_file(args.gguf, "--gguf file")
    licenses = [_check_file(p, "--license file") for p in args.license]
    template = _check_file(args.chat_template, "--chat-template file") if args.chat_template else None
    mmproj = _check_file(args.mmproj, "--mmproj file") if args.mmproj else None
    try:
        shards = discover_shards(gguf)
    except InvalidGGUF as exc:
        raise UsageError(str(exc)) from exc
    input_bytes = sum(p.stat().st_size for p in (*shards, *licenses, *(x for x in (template, mmproj) if x)))
    created = _created_time(ctx)

    with _byte_progress(ctx) as phase:
        try:
            model = build_model(
                gguf,
                licenses=licenses,
                chat_template=template,
                mmproj=mmproj,
                context_size=args.context_size,
                created=created,
                on_bytes=phase("hashing", input_bytes),
            )
        except InvalidGGUF as exc:
            raise UsageError(str(exc)) from exc
        size = export_tar_size(model)
        layer_bytes = sum(size for digest, size in _blob_members(model) if digest in model.files)
        with ctx.client().stream(
            "POST",
            "/models/load",
            content=export_tar_chunks(model, phase("loading into the daemon", layer_bytes)),
            headers={
                "Content-Type": "application/x-tar",
                "Content-Length": str(size),
                "Accept": "application/json",
            },
            timeout=LONG_TIMEOUT,
        ) as response:
            escaped = str(response.headers.get("content-type", "")).startswith("text/")
            _check_load_stream(response.iter_lines(), escaped)

    repo = reference.name
    tag = reference.tag or "latest"
    ctx.client().request("POST", model_path(model.model_id, "tag"), params={"repo": repo, "tag": tag})
    ctx.print(f"Packaged {args.model} ({model.model_id[len('sha256:') :][:12]})")
    if args.push:
        push_model(ctx, args.model)
    return ExitStatus.SUCCESS


def _check_load_stream(lines: Iterator[str], escaped: bool) -> None:
    """Read ``/models/load``'s answer (progress lines, or nothing); raise on an error line."""
    for line in lines:
        event = parse_progress_line(line, html_escaped=escaped)
        if event is not None and event.kind == "error":
            raise DaemonError(event.message.removeprefix("Error: ").strip() or "loading the model failed")
