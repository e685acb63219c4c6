"""Small conversions between protobuf values and Python values (pure)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from google.protobuf import any_pb2, timestamp_pb2
from modelrunner.shim.errors import InvalidArgument

# containerd's identifiers (namespaces, container/lease IDs, topic components): alphanumerics
# separated by single '.', '_' or '-', at most 76 characters (pkg/identifiers).
_IDENTIFIER = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
IDENTIFIER_MAX = 76


def validate_identifier(kind: str, value: str) -> str:
    """Return ``value`` if containerd accepts it as an identifier.

    Raises:
        InvalidArgument: with the rule it breaks.
    """
    if not value:
        raise InvalidArgument(f"checking {kind}", f"{kind} must not be empty")
    if len(value) > IDENTIFIER_MAX:
        raise InvalidArgument(
            f"checking {kind}", f"{kind} {value!r} is longer than {IDENTIFIER_MAX} characters"
        )
    if not _IDENTIFIER.match(value):
        raise InvalidArgument(
            f"checking {kind}",
            f"{kind} {value!r} must be letters and digits separated by single '.', '_' or '-'",
        )
    return value


def to_datetime(ts: timestamp_pb2.Timestamp | None) -> dt.datetime | None:
    """A Timestamp as an aware UTC datetime; None when unset or Go's zero time (negative seconds)."""
    if ts is None or ts.seconds < 0 or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return dt.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=dt.UTC)


def make_any(type_url: str, value: bytes) -> any_pb2.Any:
    """An Any with a bare type URL: containerd's typeurl registry does not use the googleapis prefix."""
    return any_pb2.Any(type_url=type_url, value=value)


def pack_message(message: Any) -> any_pb2.Any:
    """An Any holding a protobuf message under its full name, the way containerd packs its own."""
    return make_any(message.DESCRIPTOR.full_name, message.SerializeToString())
