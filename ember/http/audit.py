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

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request

from ember.http.audit_records import outcome_of, record_of, write_alone
from ember.http.deps import gateway_principal, inference_principal
from ember.platform.auth import Principal
from ember.store.audit_record import AuditRecord


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
            write_alone(request, rec, status, message)
        raise
    if rec is not None and not rec.committed:
        write_alone(request, rec, 200, "no change")


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
