"""The audit record of one mutating request, as a route dependency (see ember.store.audit_log).

A mutating route declares `change: GatewayChange` (Gateway paths) or `change: OpenAIChange` (/v1/files,
/v1/batches) and passes `audit=change` to the store mutator that makes its change. The dependency runs
around the route body (scope "function"), so it sees how the request ended, a body that failed schema
validation included:

- the mutator committed the entry with the change: nothing more is written;
- the route raised (a refusal, a 4xx, a crash): an entry with that status is written on its own;
- the route answered without committing one (a no-op): an entry with 200 is written on its own.

Requests refused before the caller is known as a member of the account (no key, a bad key, another
account's id) write nothing: anyone could otherwise fill any account's log, and the 404 must not reveal
that the account exists. A member refused by role before the route runs (an inference-user key on a
Gateway path) is written by `write_refusal`, from the authentication dependency.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ember.errors import EmberError
from ember.http.deps import gateway_principal, inference_principal
from ember.http.errors import is_gateway, status_of
from ember.platform.auth import Principal
from ember.store.audit_log import AuditLog, AuditRecord

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


def _audited(request: Request, rec: AuditRecord | None) -> Iterator[AuditRecord | None]:
    try:
        yield rec
    except GeneratorExit:  # the generator collected unfinished: no outcome is known
        raise
    except BaseException as e:
        if rec is not None:
            status, message = outcome_of(request, e)
            if rec.committed:  # the change committed, then the request still failed
                message = "after the change was committed: " + message
            _write_alone(request, rec, status, message)
        raise
    if rec is not None and not rec.committed:
        _write_alone(request, rec, 200, "no change")


def _write_alone(request: Request, rec: AuditRecord, status: int, message: str) -> None:
    try:
        AuditLog(request.app.state.ember.platform.store).write(rec, status, message)
    except Exception:  # noqa: BLE001 - the client's answer stands; the operator sees the lost entry here
        log.exception("could not write the audit entry of %s %s (%d)", rec.method, rec.resource, status)


def write_refusal(request: Request, p: Principal, account_id: str, status: int, message: str) -> None:
    """The entry of a change refused before its route ran (no route dependency saw it)."""
    _write_alone(request, record_of(request, p, account_id), status, message)


def gateway_change(request: Request, account_id: str,
                   p: Annotated[Principal, Depends(gateway_principal)]) -> Iterator[AuditRecord]:
    rec = record_of(request, p, account_id)
    yield from _audited(request, rec)


def openai_change(request: Request, p: Annotated[Principal, Depends(inference_principal)]
                  ) -> Iterator[AuditRecord | None]:
    """None where the caller has no account (open mode, a static key): the route refuses those anyway."""
    rec = record_of(request, p, p.account_id) if p.user_id is not None else None
    if rec is not None:
        rec.resource = f"accounts/{p.account_id}/{rec.resource}"
    yield from _audited(request, rec)


GatewayChange = Annotated[AuditRecord, Depends(gateway_change, scope="function")]
OpenAIChange = Annotated[AuditRecord | None, Depends(openai_change, scope="function")]
