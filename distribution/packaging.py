"""Packaging GGUF files into DMR-format model artifacts, and repackaging with a new context size.

The artifact is what ``docker model package --gguf`` builds (dmr.md 2.7): one
``application/vnd.docker.ai.gguf.v3`` layer per shard, then licence layers, the chat template and
the multimodal projector, in that order, and a v0.1 config (dmr.md 2.3) read from the first shard.

Same input, same digest: the config has no wall-clock time unless the caller passes ``created``
(for example from ``SOURCE_DATE_EPOCH``), the ``gguf`` map is key-sorted as Go's encoder writes it,
and layer annotations carry only the file name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelrunner.distribution.errors import InvalidArgument, InvalidManifest
from modelrunner.distribution.ggufinfo import GGUFInfo, discover_shards, read_gguf, read_gguf_shards
from modelrunner.distribution.oci import (
    ANNOTATION_FILEPATH,
    MEDIA_TYPE_CHAT_TEMPLATE,
    MEDIA_TYPE_CONFIG_CNCF,
    MEDIA_TYPE_CONFIG_V01,
    MEDIA_TYPE_GGUF,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MMPROJ,
    Descriptor,
    Manifest,
    dump_json,
)
from modelrunner.distribution.store import ModelStore

__all__ = ["PackageResult", "build_gguf_config", "package_gguf", "repackage"]

_INT32_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class PackageResult:
    model_id: str
    tags: tuple[str, ...]
    info: GGUFInfo


def build_gguf_config(
    info: GGUFInfo,
    diff_ids: Sequence[str],
    *,
    context_size: int | None = None,
    created: datetime | None = None,
) -> bytes:
    """The v0.1 config blob for a GGUF model, byte for byte deterministic.

    ``context_size`` overrides the model's trained context length (DMR writes that one when no
    override is given).
    """
    config: dict[str, Any] = {"format": "gguf"}
    for key, value in (
        ("quantization", info.quantization),
        ("parameters", info.parameters_label),
        ("architecture", info.architecture),
        ("size", info.size_label),
    ):
        if value:
            config[key] = value
    config["gguf"] = dict(sorted(info.metadata.items()))
    effective = context_size if context_size is not None else info.context_size
    if effective is not None:
        config["context_size"] = effective
    descriptor: dict[str, Any] = {}
    if created is not None:
        descriptor["created"] = _rfc3339(created)
    document: dict[str, Any] = {
        "config": config,
        "descriptor": descriptor,
        "rootfs": {"type": "rootfs", "diff_ids": list(diff_ids)},
    }
    return dump_json(document)


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_context_size(context_size: int | None) -> None:
    if context_size is None:
        return
    valid = isinstance(context_size, int) and not isinstance(context_size, bool)
    if not valid or not 0 < context_size <= _INT32_MAX:
        raise InvalidArgument(f"context size must be an integer from 1 to {_INT32_MAX}, not {context_size!r}")


def gguf_artifact_files(
    shards: Sequence[str | os.PathLike[str]],
    *,
    licenses: Iterable[str | os.PathLike[str]] = (),
    chat_template: str | os.PathLike[str] | None = None,
    mmproj: str | os.PathLike[str] | None = None,
) -> list[tuple[Path, str]]:
    """The files of a DMR v0.1 GGUF artifact in layer order, each with its layer media type.

    The order is part of the manifest, so of the model ID: every packager (the store's own and the
    CLI's client-side one) takes it from here.
    """
    files = [(Path(shard), MEDIA_TYPE_GGUF) for shard in shards]
    files += [(Path(path), MEDIA_TYPE_LICENSE) for path in licenses]
    if chat_template is not None:
        files.append((Path(chat_template), MEDIA_TYPE_CHAT_TEMPLATE))
    if mmproj is not None:
        files.append((Path(mmproj), MEDIA_TYPE_MMPROJ))
    return files


def package_gguf(
    store: ModelStore,
    gguf: str | os.PathLike[str],
    *,
    licenses: Iterable[str | os.PathLike[str]] = (),
    chat_template: str | os.PathLike[str] | None = None,
    mmproj: str | os.PathLike[str] | None = None,
    context_size: int | None = None,
    created: datetime | None = None,
    tags: Iterable[str] = (),
) -> PackageResult:
    """Package a GGUF file (or the shards it belongs to) into the store; blocks.

    Raises:
        InvalidGGUF: the weights or the projector are not valid GGUF, or a shard is missing.
        InvalidArgument: ``context_size`` is out of range, or the chat template is not UTF-8.
        InvalidReference: a tag is malformed.
        OSError: an input file cannot be read.
    """
    _check_context_size(context_size)
    shards = discover_shards(gguf)
    info = read_gguf_shards(shards)
    if mmproj is not None:
        read_gguf(mmproj)  # a projector is a GGUF file too; refuse anything else early
    if chat_template is not None:
        try:
            Path(chat_template).read_bytes().decode()
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"chat template {chat_template} is not UTF-8 text") from exc

    layers: list[Descriptor] = []

    for path, media_type in gguf_artifact_files(
        shards, licenses=licenses, chat_template=chat_template, mmproj=mmproj
    ):
        imported = store.import_file(path)
        annotations = {ANNOTATION_FILEPATH: path.name}
        layers.append(Descriptor(media_type, imported.digest, imported.size, annotations))
    config_bytes = build_gguf_config(info, [layer.digest for layer in layers],
                                     context_size=context_size, created=created)
    config_digest = store.write_blob(config_bytes)
    manifest = Manifest(Descriptor(MEDIA_TYPE_CONFIG_V01, config_digest, len(config_bytes)), tuple(layers))
    tag_list = tuple(tags)
    model_id = store.commit(manifest.to_bytes(), tag_list)
    return PackageResult(model_id, tuple(store.get(model_id).tags), info)


def repackage(store: ModelStore, source: str, target: str, *, context_size: int) -> str:
    """A copy of model ``source`` with a new ``context_size``, tagged ``target``; returns the new
    model ID. Only the config blob and manifest are new: the layers are shared, nothing is copied
    (DMR's ``POST /models/{ref}/repackage``).

    Raises:
        ModelNotFound, AmbiguousReference: ``source`` as :meth:`ModelStore.resolve`.
        InvalidManifest: the model's config is not in DMR's Docker format.
        InvalidArgument: ``context_size`` is out of range.
        InvalidReference: ``target`` is malformed.
    """
    _check_context_size(context_size)
    model = store.get(source)
    if model.config_media_type == MEDIA_TYPE_CONFIG_CNCF:
        raise InvalidArgument("a CNCF ModelPack config has no context size; repackage a Docker-format model")
    document = json.loads(store.read_blob(model.manifest.config.digest, 16 * 1024 * 1024))
    if not isinstance(document, dict) or not isinstance(document.get("config", {}), dict):
        raise InvalidManifest(f"model {model.id}: config is not a JSON object")
    document.setdefault("config", {})["context_size"] = context_size
    config_bytes = dump_json(document)
    config_digest = store.write_blob(config_bytes)
    manifest = Manifest(
        Descriptor(model.manifest.config.media_type, config_digest, len(config_bytes)),
        model.manifest.layers,
        model.manifest.media_type,
        model.manifest.artifact_type,
        model.manifest.annotations,
    )
    return store.commit(manifest.to_bytes(), [target])

