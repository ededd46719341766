"""Client-chosen resource ids and the clock every table uses."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ember.errors import InvalidRequest

_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def check_id(value: str, what: str) -> str:
    """1-63 lowercase letters, digits and hyphens, starting with a letter or digit (else a 400)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        shown = value[:70].encode("ascii", "backslashreplace").decode() if isinstance(value, str) else value
        raise InvalidRequest(f"invalid {what} {shown!r}: use 1-63 lowercase letters, digits and hyphens, "
                             "starting with a letter or digit", param=what)
    return value


def utcnow() -> datetime:
    """Now as a naive UTC datetime, the form stored in every table."""
    return datetime.now(UTC).replace(tzinfo=None)


def to_naive_utc(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo is not None else t


def rfc3339(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def epoch(t: datetime) -> int:
    """A stored (naive UTC) time as Unix seconds."""
    return int(t.replace(tzinfo=UTC).timestamp())
