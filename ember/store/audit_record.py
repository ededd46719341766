"""One audit entry in the making: who changes what from where (`AuditRecord`), and the redaction that keeps
every entry free of secrets (names that sound secret dropped, key-shaped text masked, sizes capped).

How records are written and read: `ember.store.audit_log`.
"""

from __future__ import annotations

import getpass
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ember.store.ids import utcnow
from ember.store.tables import ApiKey, AuditLogEntry

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
