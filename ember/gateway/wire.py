"""Gateway wire conventions: resource JSON (camelCase, int64 as strings), list paging, filter, orderBy."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from ember.errors import InvalidRequest
from ember.store.ids import rfc3339, to_naive_utc
from ember.store.quotas import QuotaValue
from ember.store.tables import Account, ApiKey, User

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
_OK = {"code": "OK", "message": ""}
_FILTER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"([^"\\]*)"\s*')
_ORDER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)(?:\s+(asc|desc))?\s*")


def account_json(a: Account) -> dict:
    return {"name": f"accounts/{a.account_id}", "displayName": a.display_name, "createTime": rfc3339(a.created),
            "accountType": "ACCOUNT_TYPE_UNSPECIFIED", "email": a.email, "state": "READY", "status": _OK,
            "suspendState": "UNSUSPENDED", "updateTime": rfc3339(a.updated)}


def user_state(u: User) -> str:
    """The spec's READY for an active user; DISABLED (ember's addition to the enum) for a disabled one."""
    return "READY" if u.state == "ACTIVE" else u.state


def user_json(u: User) -> dict:
    return {"name": f"accounts/{u.account_id}/users/{u.user_id}", "displayName": u.display_name,
            "serviceAccount": u.service_account, "createTime": rfc3339(u.created), "role": u.role,
            "email": u.email, "state": user_state(u), "status": _OK, "updateTime": rfc3339(u.updated)}


def key_json(k: ApiKey, email: str, plaintext: str | None = None) -> dict:
    out = {"keyId": k.key_id, "displayName": k.display_name, "createTime": rfc3339(k.created), "secure": True,
           "email": email, "prefix": k.prefix, "annotations": dict(k.annotations or {})}
    if plaintext is not None:
        out["key"] = plaintext
    if k.expire_time is not None:
        out["expireTime"] = rfc3339(k.expire_time)
    if k.last_used is not None:
        out["lastUsed"] = rfc3339(k.last_used)
    return out


def quota_json(account_id: str, q: QuotaValue, usage: float) -> dict:
    out: dict = {"name": f"accounts/{account_id}/quotas/{q.quota_id}", "usage": usage,
                 "updateTime": rfc3339(q.updated)}
    if q.effective is not None:
        out["value"] = str(q.effective)
    if q.max_value is not None:
        out["maxValue"] = str(q.max_value)
    return out


def parse_time(value: str | None, param: str, required: bool = True) -> datetime | None:
    """An RFC 3339 timestamp (a bare date is midnight UTC); naive UTC out."""
    if value is None or value == "":
        if required:
            raise InvalidRequest(f"{param} is required (RFC 3339, e.g. 2026-12-01T00:00:00Z)", param=param)
        return None
    try:
        t = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{param} is not an RFC 3339 timestamp", param=param) from None
    return to_naive_utc(t)


def page_size_of(page_size: int | None, default: int = DEFAULT_PAGE_SIZE) -> int:
    """A List call's page size: `default` when unset or 0, at most MAX_PAGE_SIZE (larger is coerced)."""
    if page_size is None or page_size == 0:
        return default
    if page_size < 0:
        raise InvalidRequest("pageSize must not be negative", param="pageSize")
    return min(page_size, MAX_PAGE_SIZE)


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def paginate(items: Sequence[T], page_size: int | None, page_token: str | None, *query: object
             ) -> tuple[Sequence[T], str | None]:
    """One page of `items` and the token of the next (None on the last page).

    A token names an offset and the query it belongs to: reused with other parameters it is refused.
    """
    size = page_size_of(page_size)
    start = 0
    fp = _fingerprint(*query)
    if page_token:
        try:
            raw = base64.urlsafe_b64decode(page_token.encode("ascii") + b"==").decode("ascii")
            off, tok_fp = raw.split(":", 1)
            start = int(off)
        except (ValueError, UnicodeError):
            raise InvalidRequest("invalid pageToken", param="pageToken") from None
        if tok_fp != fp or start < 0:
            raise InvalidRequest("pageToken does not belong to this query (the other parameters must match "
                                 "the call that returned it)", param="pageToken")
    page = items[start:start + size]
    nxt = None
    if start + size < len(items):
        nxt = base64.urlsafe_b64encode(f"{start + size}:{fp}".encode()).decode().rstrip("=")
    return page, nxt


def apply_filter(items: list[dict], flt: str | None, fields: tuple[str, ...]) -> list[dict]:
    """The subset of AIP-160 filters the Gateway's lists take: one `field="value"` equality on a top-level
    field."""
    if not flt or not flt.strip():
        return items
    m = _FILTER.fullmatch(flt)
    if m is None or m.group(1) not in fields:
        raise InvalidRequest(f'unsupported filter; use field="value" with one of: {", ".join(fields)}',
                             param="filter")
    name, value = m.groups()
    return [i for i in items if str(i.get(name, "")) == value]


def apply_order(items: list[dict], order_by: str | None, fields: tuple[str, ...]) -> list[dict]:
    if not order_by or not order_by.strip():
        return items
    keys: list[tuple[str, bool]] = []
    for part in order_by.split(","):
        m = _ORDER.fullmatch(part)
        if m is None or m.group(1) not in fields:
            raise InvalidRequest(f"unsupported orderBy; fields: {', '.join(fields)} (each optionally desc)",
                                 param="orderBy")
        keys.append((m.group(1), m.group(2) == "desc"))
    for name, desc in reversed(keys):
        items = sorted(items, key=lambda i, n=name: str(i.get(n, "")), reverse=desc)
    return items


def list_response(kind: str, items: list[dict], page_size: int | None, page_token: str | None,
                  flt: str | None, order_by: str | None, fields: tuple[str, ...],
                  project: Callable[[dict], dict] = lambda d: d) -> dict:
    items = apply_order(apply_filter(items, flt, fields), order_by, fields)
    page, nxt = paginate(items, page_size, page_token, kind, flt, order_by, page_size_of(page_size))
    out: dict = {kind: [project(i) for i in page], "totalSize": len(items)}
    if nxt:
        out["nextPageToken"] = nxt
    return out
