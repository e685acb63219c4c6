"""GGUF metadata: what packaging writes into the model config and what memory estimates need.

The header is read in one pass over a read-only memory map, with bounds checks before every read:
each count and length is compared with the bytes that remain, arrays are capped, nesting is
capped, and keys and tensor names must be unique UTF-8. A truncated or hostile file fails fast with
:class:`InvalidGGUF` naming the offset and the rule; it never loops for ever, and nothing is
allocated by a count taken from the file.

The ``gguf`` package supplies the format's tables (value types, tensor types and their block sizes,
llama.cpp file types). Its ``GGUFReader`` is not used to read: it builds a NumPy object per array
item (6.7 s and hundreds of MB for a 150k-token vocabulary, against 0.14 s here) and trusts the
lengths in the file (a huge array length makes it loop). The tests check this reader against
``GGUFReader`` on generated files.

The config strings follow DMR's extraction (gguf-parser-go): ``parameters`` like ``"361.82M"``,
``size`` (tensor bytes) like ``"256.35MiB"``, every header key/value as a string (integers in
decimal, floats with six decimals, arrays joined with ``", "``, arrays over 50 items left out).
``quantization`` is llama.cpp's file type name (``Q4_K_M``), guessed from the tensor types when the
file does not say.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import re
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from modelrunner.distribution.errors import InvalidGGUF

__all__ = [
    "GGUFInfo",
    "discover_shards",
    "format_bytes",
    "format_parameters",
    "read_gguf",
    "read_gguf_shards",
]

_MAGIC: Final = b"GGUF"
_SUPPORTED_VERSIONS: Final = (2, 3)
_DEFAULT_ALIGNMENT: Final = 32
_MAX_DIMS: Final = 4  # GGML_MAX_DIMS
# Real vocabularies have up to ~260k tokens and ~500k merges; a far larger array is hostile and
# would cost GGUFReader ~100 bytes of Python objects per element.
_MAX_ARRAY_ELEMENTS: Final = 1 << 22
_MAX_ARRAY_DEPTH: Final = 2
_MAX_KEY_BYTES: Final = 1 << 16
_MAX_TENSOR_NAME_BYTES: Final = 1 << 16
# DMR leaves arrays longer than this out of the config's gguf map.
_CONFIG_ARRAY_LIMIT: Final = 50
_INT32_MAX: Final = 2**31 - 1

# GGUF value types (gguf.GGUFValueType) that need special handling.
_UINT32: Final = 4
_STRING: Final = 8
_ARRAY: Final = 9

_SHARD_RE: Final = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


class _Invalid(Exception):
    """Raised inside the scanner; turned into InvalidGGUF with the file name."""


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    """What one GGUF file (or a set of shards, summed) says about the model it holds."""

    path: str
    version: int
    architecture: str
    name: str
    file_type: int | None
    quantization: str
    tensor_count: int
    parameter_count: int
    tensor_bytes: int
    metadata: Mapping[str, str] = field(repr=False)
    """DMR's ``config.gguf`` map: every key/value of the (first) file as a string."""
    context_length: int | None = None
    block_count: int | None = None
    embedding_length: int | None = None
    feed_forward_length: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    vocab_size: int | None = None
    sliding_window: int | None = None
    chat_template: str | None = field(default=None, repr=False)
    shard_count: int = 1

    @property
    def parameters_label(self) -> str:
        """``parameters`` for the model config, e.g. ``"361.82M"``."""
        return format_parameters(self.parameter_count)

    @property
    def size_label(self) -> str:
        """``size`` for the model config (tensor bytes), e.g. ``"256.35MiB"``."""
        return format_bytes(self.tensor_bytes)

    @property
    def context_size(self) -> int | None:
        """The model's trained context length if it fits DMR's int32 ``context_size``."""
        if self.context_length is not None and 0 < self.context_length <= _INT32_MAX:
            return self.context_length
        return None


def _format_scaled(value: float, units: Sequence[tuple[float, str]], suffix: str) -> str:
    base, unit = 1.0, ""
    for candidate_base, candidate_unit in units:
        if value >= candidate_base:
            base, unit = candidate_base, candidate_unit
            break
    text = f"{value / base:.2f}"
    if text.endswith(".00"):
        text = text[:-3]
    # gguf-parser-go writes "361.82 M"; DMR removes the space before the unit.
    return f"{text}{unit}{suffix}"


_NUMBER_UNITS: Final = ((1e15, "Q"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))
# gguf-parser-go mixes binary and decimal units, largest first; kept as is for identical strings.
_BYTE_UNITS: Final = (
    (2.0**50, "Pi"), (1e15, "P"), (2.0**40, "Ti"), (1e12, "T"), (2.0**30, "Gi"), (1e9, "G"),
    (2.0**20, "Mi"), (1e6, "M"), (2.0**10, "Ki"), (1e3, "K"),
)


def format_parameters(count: int) -> str:
    """``361821120`` → ``"361.82M"``; ``8030261248`` → ``"8.03B"`` (DMR's config string)."""
    if count == 0:
        return "0"
    return _format_scaled(float(count), _NUMBER_UNITS, "")


def format_bytes(count: int) -> str:
    """``268800000`` → ``"256.35MiB"`` (DMR's config ``size`` string)."""
    if count == 0:
        return "0B"
    return _format_scaled(float(count), _BYTE_UNITS, "B")


# --- the bounded reader ----------------------------------------------------------------------------

# GGUF value types (gguf.GGUFValueType) -> struct format of the scalar.
_SCALAR_FORMATS: Final = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q",
                          11: "q", 12: "d"}
_FLOAT_TYPES: Final = (6, 12)
_BOOL: Final = 7
# Numeric arrays up to this length are kept (per-layer head counts); longer ones are only counted.
_KEEP_NUMERIC_ITEMS: Final = 4096


@dataclass(frozen=True, slots=True)
class _Array:
    item_type: int
    length: int
    items: tuple[Any, ...] | None  # None when the array was only counted


@dataclass(slots=True)
class _Header:
    version: int
    tensor_count: int
    values: dict[str, Any]
    types: dict[str, int]
    tensor_bytes: int
    parameter_count: int
    tensor_types: Counter[int]
    block_tensor_types: Counter[int]


class _Cursor:
    __slots__ = ("buf", "end", "order", "pos")

    def __init__(self, buf: mmap.mmap | bytes, order: str) -> None:
        self.buf = buf
        self.end = len(buf)
        self.order = order
        self.pos = 0

    def need(self, count: int, what: str) -> None:
        if count < 0 or count > self.end - self.pos:
            raise _Invalid(
                f"truncated at offset {self.pos}: {what} needs {count} bytes, {self.end - self.pos} remain"
            )

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def text(self, what: str, limit: int | None = None) -> str:
        start = self.pos
        length = self.unpack("Q", f"{what} length")
        if limit is not None and length > limit:
            raise _Invalid(f"{what} at offset {start} is {length} bytes, more than {limit}")
        self.need(length, what)
        raw = bytes(self.buf[self.pos:self.pos + length])
        self.pos += length
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise _Invalid(f"{what} at offset {start} is not UTF-8") from exc

    def skip_text(self, what: str) -> None:
        length = self.unpack("Q", f"{what} length")
        self.need(length, what)
        self.pos += length


def _read_value(cur: _Cursor, value_type: int, key: str, depth: int = 0) -> Any:
    fmt = _SCALAR_FORMATS.get(value_type)
    if fmt is not None:
        return cur.unpack(fmt, f"value of {key!r}")
    if value_type == _STRING:
        return cur.text(f"string value of {key!r}")
    if value_type != _ARRAY:
        raise _Invalid(f"key {key!r} has unknown value type {value_type}")
    if depth >= _MAX_ARRAY_DEPTH:
        raise _Invalid(f"arrays nested deeper than {_MAX_ARRAY_DEPTH} in {key!r}")
    item_type = cur.unpack("I", f"array item type of {key!r}")
    length = cur.unpack("Q", f"array length of {key!r}")
    if length > _MAX_ARRAY_ELEMENTS:
        raise _Invalid(f"array {key!r} has {length} items, more than {_MAX_ARRAY_ELEMENTS}")
    item_fmt = _SCALAR_FORMATS.get(item_type)
    if item_fmt is not None:
        size = struct.calcsize(item_fmt) * length
        cur.need(size, f"array {key!r}")
        items = None
        if length <= _KEEP_NUMERIC_ITEMS:
            items = struct.unpack_from(f"{cur.order}{length}{item_fmt}", cur.buf, cur.pos)
        cur.pos += size
        return _Array(item_type, length, items)
    if item_type == _STRING:
        # Each item takes at least 8 bytes, so this loop is bounded by the file size.
        cur.need(length * 8, f"array {key!r}")
        if length <= _CONFIG_ARRAY_LIMIT:
            return _Array(item_type, length, tuple(cur.text(f"item of {key!r}") for _ in range(length)))
        for _ in range(length):
            cur.skip_text(f"item of {key!r}")
        return _Array(item_type, length, None)
    if item_type == _ARRAY:
        cur.need(length * 12, f"array {key!r}")
        for _ in range(length):
            _read_value(cur, _ARRAY, key, depth + 1)
        return _Array(item_type, length, None)
    raise _Invalid(f"array {key!r} has unknown item type {item_type}")


def _read_header(buf: mmap.mmap | bytes) -> _Header:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    if len(buf) < 24:
        raise _Invalid(f"the file is {len(buf)} bytes, shorter than a GGUF header (24)")
    if bytes(buf[:4]) != _MAGIC:
        raise _Invalid(f"bad magic {bytes(buf[:4])!r}, expected b'GGUF'")
    (version_le,) = struct.unpack_from("<I", buf, 4)
    # A file written on a big-endian host reads as a version with zero low bits here.
    order = ">" if version_le & 0xFFFF == 0 and version_le != 0 else "<"
    cur = _Cursor(buf, order)
    cur.pos = 4
    version = cur.unpack("I", "version")
    if version not in _SUPPORTED_VERSIONS:
        raise _Invalid(f"GGUF version {version} is not supported (only 2 and 3)")
    tensor_count = cur.unpack("Q", "tensor count")
    kv_count = cur.unpack("Q", "key/value count")
    # Cheapest possible entries: a key/value takes >= 13 bytes, a tensor info >= 24.
    if kv_count * 13 + tensor_count * 24 > cur.end - cur.pos:
        raise _Invalid(f"header claims {kv_count} keys and {tensor_count} tensors, more than the file holds")
    values: dict[str, Any] = {}
    types: dict[str, int] = {}
    for _ in range(kv_count):
        key_offset = cur.pos
        key = cur.text("key", _MAX_KEY_BYTES)
        if key in values:
            raise _Invalid(f"duplicate key {key!r} at offset {key_offset}")
        value_type = cur.unpack("I", f"type of {key!r}")
        values[key] = _read_value(cur, value_type, key)
        types[key] = value_type
    alignment = _DEFAULT_ALIGNMENT
    if "general.alignment" in values:
        alignment = values["general.alignment"]
        if types["general.alignment"] != _UINT32 or alignment == 0 or alignment & (alignment - 1):
            raise _Invalid(f"general.alignment must be a uint32 power of two, not {alignment!r}")
    names: set[str] = set()
    extents: list[tuple[str, int, int]] = []  # name, offset, bytes
    tensor_types: Counter[int] = Counter()
    block_tensor_types: Counter[int] = Counter()
    parameter_count = 0
    tensor_bytes = 0
    for _ in range(tensor_count):
        info_offset = cur.pos
        name = cur.text("tensor name", _MAX_TENSOR_NAME_BYTES)
        if name in names:
            raise _Invalid(f"duplicate tensor {name!r} at offset {info_offset}")
        names.add(name)
        n_dims = cur.unpack("I", f"dimension count of tensor {name!r}")
        if n_dims > _MAX_DIMS:
            raise _Invalid(f"tensor {name!r} has {n_dims} dimensions, more than {_MAX_DIMS}")
        elements = 1
        for _ in range(n_dims):
            elements *= cur.unpack("Q", f"shape of tensor {name!r}")
        if elements >= 2**63:
            raise _Invalid(f"tensor {name!r} claims an impossible number of elements")
        raw_type = cur.unpack("I", f"type of tensor {name!r}")
        try:
            block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(raw_type)]
        except (ValueError, KeyError) as exc:
            raise _Invalid(f"tensor {name!r} has unknown type {raw_type}") from exc
        if elements % block_size:
            raise _Invalid(f"tensor {name!r}: {elements} elements is not a multiple of its block size")
        offset = cur.unpack("Q", f"data offset of tensor {name!r}")
        if offset % alignment:
            raise _Invalid(f"tensor {name!r} data offset {offset} is not aligned to {alignment}")
        nbytes = elements // block_size * type_size
        extents.append((name, offset, nbytes))
        parameter_count += elements
        tensor_bytes += nbytes
        tensor_types[raw_type] += 1
        if name.startswith("blk."):
            block_tensor_types[raw_type] += 1
    data_offset = -(-cur.pos // alignment) * alignment
    for name, offset, nbytes in extents:
        if data_offset + offset + nbytes > cur.end:
            raise _Invalid(
                f"tensor {name!r} data ends at byte {data_offset + offset + nbytes}, past the end of the "
                f"file ({cur.end} bytes): the file is truncated"
            )
    return _Header(version, tensor_count, values, types, tensor_bytes, parameter_count, tensor_types,
                   block_tensor_types)


def _scalar_text(value: Any, value_type: int) -> str:
    if value_type == _BOOL:
        return "true" if value else "false"
    if value_type in _FLOAT_TYPES:
        return f"{value:f}"
    return str(value)


def _config_text(value: Any, value_type: int) -> str | None:
    """DMR's string form of one key/value, or None when DMR leaves the key out."""
    if isinstance(value, _Array):
        if value.length > _CONFIG_ARRAY_LIMIT:
            return None
        if value.items is None:  # nested arrays: DMR writes nothing for their items
            return ""
        return ", ".join(_scalar_text(item, value.item_type) for item in value.items)
    return _scalar_text(value, value_type)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, _Array) and value.items and value.item_type not in (_BOOL, _STRING, *_FLOAT_TYPES):
        # Some architectures give a per-layer list (e.g. head counts); the estimate wants the max.
        return max(int(v) for v in value.items)
    return None


def _quantization_name(file_type: int | None, header: _Header) -> str:
    from gguf.constants import GGMLQuantizationType, LlamaFileType

    if file_type is not None:
        try:
            name = LlamaFileType(file_type).name
        except ValueError:
            name = ""
        if name and name != "GUESSED":
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # No (known) file type: name the most common type of the block tensors, skipping F32 (norms)
    # unless everything is F32, as gguf-parser-go does.
    counts = header.block_tensor_types or header.tensor_types
    ranked = [t for t, _ in counts.most_common()]
    if not ranked:
        return ""
    chosen = ranked[0]
    if chosen == GGMLQuantizationType.F32 and len(ranked) > 1:
        chosen = ranked[1]
    return GGMLQuantizationType(chosen).name


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read the metadata of one GGUF file; blocks (call it from a thread in async code).

    Raises:
        InvalidGGUF: the file cannot be read, is not GGUF v2/v3, or is truncated or malformed; the
            message gives the offset and the rule that failed.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise InvalidGGUF(str(path), "the file is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                header = _read_header(buf)
    except _Invalid as exc:
        raise InvalidGGUF(str(path), str(exc)) from None
    except OSError as exc:
        raise InvalidGGUF(str(path), f"cannot read: {exc.strerror or exc}") from exc
    return _info_from(path, header)


def _info_from(path: Path, header: _Header) -> GGUFInfo:
    values = header.values
    architecture = values.get("general.architecture")
    architecture = architecture if isinstance(architecture, str) else ""
    name = values.get("general.name")
    file_type = _as_int(values.get("general.file_type"))

    def arch_int(suffix: str) -> int | None:
        return _as_int(values.get(f"{architecture}.{suffix}")) if architecture else None

    metadata = {}
    for key, value in values.items():
        text = _config_text(value, header.types[key])
        if text is not None:
            metadata[key] = text
    tokens = values.get("tokenizer.ggml.tokens")
    vocab_size = arch_int("vocab_size")
    if vocab_size is None and isinstance(tokens, _Array):
        vocab_size = tokens.length
    template = values.get("tokenizer.chat_template")
    return GGUFInfo(
        path=str(path),
        version=header.version,
        architecture=architecture,
        name=name if isinstance(name, str) else "",
        file_type=file_type,
        quantization=_quantization_name(file_type, header),
        tensor_count=header.tensor_count,
        parameter_count=header.parameter_count,
        tensor_bytes=header.tensor_bytes,
        metadata=metadata,
        context_length=arch_int("context_length"),
        block_count=arch_int("block_count"),
        embedding_length=arch_int("embedding_length"),
        feed_forward_length=arch_int("feed_forward_length"),
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv"),
        key_length=arch_int("attention.key_length"),
        value_length=arch_int("attention.value_length"),
        vocab_size=vocab_size,
        sliding_window=arch_int("attention.sliding_window"),
        chat_template=template if isinstance(template, str) else None,
    )


def discover_shards(path: str | os.PathLike[str]) -> list[Path]:
    """All shards of a split GGUF (``<name>-0000i-of-0000N.gguf``) in order, given any one of them;
    ``[path]`` for a single file.

    Raises:
        InvalidGGUF: a shard of the set is missing, or the name says "of 00000".
    """
    path = Path(path)
    match = _SHARD_RE.match(path.name)
    if match is None:
        return [path]
    count = int(match["count"])
    if count == 0 or int(match["index"]) == 0 or int(match["index"]) > count:
        raise InvalidGGUF(str(path), "shard numbers run from 00001 to the shard count")
    shards = [path.with_name(f"{match['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise InvalidGGUF(str(path), f"missing shard(s): {', '.join(missing)}")
    return shards


def read_gguf_shards(paths: Sequence[str | os.PathLike[str]]) -> GGUFInfo:
    """Metadata of a split model: keys from the first shard, tensors summed over all of them.

    Raises:
        InvalidGGUF: any shard is invalid.
    """
    if not paths:
        raise ValueError("read_gguf_shards needs at least one path")
    infos = [read_gguf(p) for p in paths]
    first = infos[0]
    if len(infos) == 1:
        return first
    return dataclasses.replace(
        first,
        tensor_count=sum(i.tensor_count for i in infos),
        parameter_count=sum(i.parameter_count for i in infos),
        tensor_bytes=sum(i.tensor_bytes for i in infos),
        shard_count=len(infos),
    )
