"""The audit log: one entry per change made through the Gateway or the operator CLI, and its queries.

How a mutating path records itself (one small call each):

- A Gateway or Batch-API route takes a `change: GatewayChange` (or `OpenAIChange`) parameter
  (`ember.http.audit`). That dependency builds an `AuditRecord` (who, from where, which route) and
  writes it ALONE when the route fails or answers without having committed it (a refusal, a 4xx, a
  no-op), with the status the client got.
- The route passes `audit=change` to the store mutator that makes the change, and the mutator opens its
  transaction with `self.store.session(audit)`: the entry is added last inside that transaction, so it
  commits with the change or not at all, and the record is then marked committed (the dependency writes
  nothing more for a success). A new mutator needs only `audit: AuditRecord | None = None` and
  `self.store.session(audit)`; a route that writes in its own session does the same. A compare-and-set
  that may change nothing (`BatchJobs.transition`) adds the entry itself (`audit.add_to(s)`) only when a
  row moved, and sets `audit.committed` after its commit.
- An operator command builds `AuditRecord.operator(account, "cli ember ...", resource)`, passes it the
  same way, and on failure calls `AuditLog(store).write(record, status, message)`
  (`ember.cli.admin.audit_failure` does that for an exception). A change that belongs to no account (the
  server's URL-signing secret) is recorded under SERVER_SCOPE, which no account id can equal; operators
  read it with `ember audit --account _server`.

Why the record rides into the mutator's own session instead of a separate write after it: a crash or a
failed commit can then never leave a change without its entry, or an entry for a change that did not
happen; and no mutator needs to know about HTTP.

Invariant: an entry never holds a secret. Keys appear as their id and the 8-character prefix the key
table already shows; payloads are small dicts passed through `redact` (names that sound secret are
dropped, key-shaped strings masked, strings and sizes capped); no route puts a signed URL, a key or a
file's content into one.
"""

from __future__ import annotations

import getpass
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from ember.store.ids import utcnow
from ember.store.tables import ApiKey, AuditLogEntry

if TYPE_CHECKING:
    from ember.store.db import Store

SERVER_SCOPE = "_server"
"""The account id of server-wide changes: "_" is not allowed in account ids, so it names no account."""
MAX_PAYLOAD_BYTES = 2048
"""A payload whose JSON passes this is replaced by the list of its top-level names."""
_MAX_STR = 200
_MAX_ITEMS = 24
_MAX_DEPTH = 4
_SECRET_NAME = re.compile(r"(?i)secret|signature|passw|authoriz|cookie|token$|url$|^key$|^apikey$")
_KEY_SHAPED = re.compile(r"fw_[A-Za-z0-9_\-]{8,}")


def redact(value: object, depth: int = 0) -> object:
    """A JSON-able copy of `value` with secret-named fields dropped, key-shaped text masked, sizes capped."""
    if isinstance(value, dict):
        if depth >= _MAX_DEPTH:
            return "…"
        out: dict[str, object] = {}
        for k, v in list(value.items())[:_MAX_ITEMS]:
            name = str(k)[:64]
            out[name] = "[redacted]" if _SECRET_NAME.search(name) else redact(v, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        if depth >= _MAX_DEPTH:
            return "…"
        return [redact(v, depth + 1) for v in list(value)[:_MAX_ITEMS]]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return masked(str(value)[:_MAX_STR * 2])[:_MAX_STR]


def masked(text: str) -> str:
    """`text` with anything shaped like an API key masked (an id or message may echo what a client sent)."""
    return _KEY_SHAPED.sub("fw_[redacted]", text)


def capped(payload: dict) -> dict:
    """`payload` redacted, and no larger than MAX_PAYLOAD_BYTES as JSON."""
    out = redact(payload)
    assert isinstance(out, dict)
    if len(json.dumps(out, default=str)) > MAX_PAYLOAD_BYTES:
        return {"truncated": True, "fields": [k[:40] for k in list(out)[:16]]}
    return out


def new_entry_id() -> str:
    """Time-ordered (nanosecond hex, then random): ties in timestamp still sort in writing order."""
    return f"{time.time_ns():016x}{secrets.token_hex(6)}"


@dataclass
class AuditRecord:
    """Who is changing what, from where: filled in before the change, written with its outcome."""

    account_id: str
    method: str
    """"HTTP-METHOD /route/template" for the API, "cli ember ..." for an operator command."""
    resource: str
    principal: str
    """The acting user's email, or "operator" for the CLI."""
    user_id: str = ""
    key_id: str = ""
    client_ip: str = ""
    user_agent: str = ""
    source: str = "api"
    is_admin_action: bool = False
    payload: dict = field(default_factory=dict)
    received: datetime = field(default_factory=utcnow)
    """When the request arrived (the entry's timestamp, as the Gateway's is), not when it was written."""
    committed: bool = False
    """Set once an entry for this record has been committed (with the change, or alone)."""

    @classmethod
    def operator(cls, account_id: str, command: str, resource: str, **payload: object) -> AuditRecord:
        """A record for an operator command run on this machine (`ember accounts|keys|jobs ...`)."""
        try:
            who = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (a container's uid)
            who = ""
        rec = cls(account_id=account_id, method=f"cli ember {command}", resource=resource, principal="operator",
                  client_ip="local", user_agent="ember-cli", source="cli", is_admin_action=True)
        rec.note(osUser=who, **payload)
        return rec

    def note(self, **fields: object) -> None:
        """Add the fields that are set to the payload (redacted and capped when the entry is built)."""
        self.payload.update({k: v for k, v in fields.items() if v is not None})

    def entry(self, s: Session, status: int, message: str) -> AuditLogEntry:
        prefix = ""
        if self.key_id:
            prefix = s.scalar(select(ApiKey.prefix).where(ApiKey.key_id == self.key_id)) or ""
        return AuditLogEntry(
            entry_id=new_entry_id(), account_id=self.account_id[:63], timestamp=self.received,
            method=self.method[:128], resource=masked(self.resource[:1024])[:512], principal=self.principal[:320],
            user_id=(self.user_id or "")[:63], key_id=self.key_id[:40], key_prefix=prefix[:8],
            status_code=int(status), message=masked(message[:4000])[:2000], payload=capped(self.payload),
            user_agent=masked(self.user_agent[:1024])[:512], client_ip=self.client_ip[:64], source=self.source[:16],
            is_admin_action=self.is_admin_action)

    def add_to(self, s: Session, status: int = 200, message: str = "") -> None:
        """Add the entry to the change's own transaction (it commits with the change, or not at all)."""
        s.add(self.entry(s, status, message))


@dataclass(frozen=True)
class AuditQuery:
    account_id: str
    start: datetime
    end: datetime
    """Inclusive bounds, naive UTC."""
    email: str | None = None
    method: str | None = None
    """Exactly this method, or every method that begins with it and a space ("DELETE", "cli ember keys")."""


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def write(self, record: AuditRecord, status: int, message: str = "") -> None:
        """An entry on its own: for a refused or failed change, which has no transaction to join."""
        with self.store.session() as s:
            record.add_to(s, status, message)
        record.committed = True

    def _where(self, q: AuditQuery) -> list:
        conds = [AuditLogEntry.account_id == q.account_id, AuditLogEntry.timestamp >= q.start,
                 AuditLogEntry.timestamp <= q.end]
        if q.email:
            conds.append(AuditLogEntry.principal == q.email)
        if q.method:
            conds.append(or_(AuditLogEntry.method == q.method,
                             AuditLogEntry.method.like(_like_escape(q.method) + " %", escape="\\")))
        return conds

    def list(self, q: AuditQuery, limit: int, before: tuple[datetime, str] | None = None
             ) -> tuple[list[AuditLogEntry], int]:
        """Newest first: up to `limit` entries older than `before` (a page's last (timestamp, id)), and how
        many match the query in all."""
        conds = self._where(q)
        page = list(conds)
        if before is not None:
            t, eid = before
            page.append(or_(AuditLogEntry.timestamp < t,
                            (AuditLogEntry.timestamp == t) & (AuditLogEntry.entry_id < eid)))
        with self.store.session() as s:
            total = int(s.scalar(select(func.count()).select_from(AuditLogEntry).where(*conds)) or 0)
            rows = list(s.scalars(select(AuditLogEntry).where(*page)
                                  .order_by(AuditLogEntry.timestamp.desc(), AuditLogEntry.entry_id.desc())
                                  .limit(limit)))
        return rows, total
