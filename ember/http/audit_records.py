"""Building and writing one request's audit record: who (the principal), what (the route and resource),
from where, and how it ended. The route dependencies that carry a record through a change are in
`ember.http.audit`; the authentication dependency writes a member's refusal by role here.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ember.errors import EmberError
from ember.http.errors import is_gateway, status_of
from ember.platform.auth import Principal
from ember.store.audit_log import AuditLog
from ember.store.audit_record import AuditRecord

log = logging.getLogger("ember.audit")


def outcome_of(request: Request, exc: BaseException) -> tuple[int, str]:
    """The status a client got for `exc` and a short message (never the request's own input)."""
    if isinstance(exc, EmberError):
        return status_of(exc)[0], exc.message
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, str(exc.detail)[:500]
    if isinstance(exc, RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(x) for x in list(first.get("loc", ()))[:6])
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        return (400 if is_gateway(request) else 422), f"invalid request: {where}: {first.get('msg', '')}"[:300] + more
    if isinstance(exc, asyncio.CancelledError):
        return 499, "the client went away before the change finished"
    return 500, f"internal error ({type(exc).__name__})"


def default_resource(request: Request) -> str:
    """`/v1/accounts/a/users/u/apiKeys:delete` -> `accounts/a/users/u/apiKeys`: routes that create or
    delete something by an id in the body name it themselves."""
    path = request.url.path.removeprefix("/v1/")
    last = path.rsplit("/", 1)
    if ":" in last[-1]:
        path = path[: len(path) - len(last[-1])] + last[-1].split(":", 1)[0]
    return path[:512]


def record_of(request: Request, p: Principal, account_id: str) -> AuditRecord:
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    rec = AuditRecord(account_id=account_id, method=f"{request.method} {template}",
                      resource=default_resource(request), principal=p.email, user_id=p.user_id or "",
                      key_id=p.key_id, client_ip=request.client.host if request.client else "",
                      user_agent=request.headers.get("user-agent", ""), source="api")
    if request.query_params:
        rec.note(**{k: v for k, v in list(request.query_params.items())[:8]})
    return rec


def write_alone(request: Request, rec: AuditRecord, status: int, message: str) -> None:
    try:
        AuditLog(request.app.state.ember.platform.store).write(rec, status, message)
    except Exception:  # noqa: BLE001 - the client's answer stands; the operator sees the lost entry here
        log.exception("could not write the audit entry of %s %s (%d)", rec.method, rec.resource, status)


def write_refusal(request: Request, p: Principal, account_id: str, status: int, message: str) -> None:
    """The entry of a change refused before its route ran (no route dependency saw it)."""
    write_alone(request, record_of(request, p, account_id), status, message)
