"""GET /v1/accounts/{account_id}/auditLogs (Gateway_ListAuditLogs): an account's changes, newest first.

Admins only (a user or inference-user key gets 403; another account's id 404, as every Gateway path).
Filters: `startTime` / `endTime` (RFC 3339, inclusive; default the 30 days up to now), `email` (the
acting user's), and `filter` with one `method="..."` term: the exact method, or every method that
begins with it and a space (`method="DELETE"`, `method="cli ember keys"`,
`method="POST /v1/accounts/{account_id}/users"`). Paging: pageSize (default 10, at most 200) and the
nextPageToken, which marks the last entry returned, so new entries never shift a later page.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import datetime, timedelta

from fastapi import APIRouter, Query

from ember.errors import InvalidRequest
from ember.gateway.wire import page_size_of, parse_time
from ember.http.deps import GatewayAuth, StateDep
from ember.store.audit_log import AuditLog, AuditQuery
from ember.store.ids import rfc3339, utcnow
from ember.store.tables import AuditLogEntry

router = APIRouter(tags=["gateway"])

DEFAULT_PAGE_SIZE = 10
"""The Gateway's default for ListAuditLogs (other List calls: 50); the maximum, 200, is shared."""
DEFAULT_WINDOW = timedelta(days=30)
_METHOD_FILTER = re.compile(r'\s*method\s*=\s*"([^"\\]{1,128})"\s*')

# google.rpc.Code names (gatewayCode) for the HTTP statuses a change answers.
_CODES = {200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          408: "DEADLINE_EXCEEDED", 409: "ALREADY_EXISTS", 413: "OUT_OF_RANGE", 422: "INVALID_ARGUMENT",
          429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def status_code_name(status: int) -> str:
    if status in _CODES:
        return _CODES[status]
    return "OK" if 200 <= status < 300 else "UNKNOWN"


def entry_json(e: AuditLogEntry) -> dict:
    """gatewayAuditLogEntry, plus userId, apiKeyPrefix, httpStatus and source (ember's own)."""
    return {"id": e.entry_id, "method": e.method, "principal": e.principal, "payload": dict(e.payload or {}),
            "status": {"code": status_code_name(e.status_code), "message": e.message},
            "timestamp": rfc3339(e.timestamp), "message": e.message, "resource": e.resource,
            "isAdminAction": e.is_admin_action, "userAgent": e.user_agent, "clientIp": e.client_ip,
            "apiKeyId": e.key_id, "apiKeyPrefix": e.key_prefix, "userId": e.user_id, "httpStatus": e.status_code,
            "source": e.source}


def method_of_filter(flt: str | None) -> str | None:
    if not flt or not flt.strip():
        return None
    m = _METHOD_FILTER.fullmatch(flt)
    if m is None:
        raise InvalidRequest('filter: use method="..." (an exact method, or its first words such as "DELETE")',
                             param="filter")
    return m.group(1)


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _token(e: AuditLogEntry, fp: str) -> str:
    raw = f"{e.timestamp.isoformat()}|{e.entry_id}|{fp}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _after(token: str, fp: str) -> tuple[datetime, str]:
    try:
        ts, eid, tok_fp = base64.urlsafe_b64decode(token.encode("ascii") + b"==").decode("ascii").split("|")
        t = datetime.fromisoformat(ts)
    except (ValueError, UnicodeError):
        raise InvalidRequest("invalid pageToken", param="pageToken") from None
    if tok_fp != fp:
        raise InvalidRequest("pageToken does not belong to this query (the other parameters must match the call "
                             "that returned it)", param="pageToken")
    return t, eid


@router.get("/v1/accounts/{account_id}/auditLogs")
def list_audit_logs(account_id: str, state: StateDep, p: GatewayAuth,
                    start_time: str | None = Query(None, alias="startTime", max_length=64),
                    end_time: str | None = Query(None, alias="endTime", max_length=64),
                    email: str | None = Query(None, max_length=320),
                    page_size: int | None = Query(None, alias="pageSize"),
                    page_token: str | None = Query(None, alias="pageToken", max_length=512),
                    filter: str | None = Query(None, max_length=512),
                    order_by: str | None = Query(None, alias="orderBy", max_length=256),
                    read_mask: str | None = Query(None, alias="readMask", max_length=512)) -> dict:
    """orderBy and readMask are accepted and unused, as the spec says: entries come newest first, whole."""
    p.require_admin()
    end = parse_time(end_time, "endTime", required=False) or utcnow()
    start = parse_time(start_time, "startTime", required=False) or end - DEFAULT_WINDOW
    if start > end:
        raise InvalidRequest("startTime is after endTime", param="startTime")
    size = page_size_of(page_size, DEFAULT_PAGE_SIZE)
    q = AuditQuery(account_id, start, end, email or None, method_of_filter(filter))
    fp = _fingerprint(account_id, start_time, end_time, email, filter, size)
    before = _after(page_token, fp) if page_token else None
    rows, total = AuditLog(state.platform.store).list(q, size + 1, before)
    out: dict = {"auditLogs": [entry_json(e) for e in rows[:size]], "totalSize": total}
    if len(rows) > size:
        out["nextPageToken"] = _token(rows[size - 1], fp)
    return out
