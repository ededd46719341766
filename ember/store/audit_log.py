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

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select

from ember.store.audit_record import AuditRecord
from ember.store.tables import AuditLogEntry

if TYPE_CHECKING:
    from ember.store.db import Store


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
