"""Secrets shared by every process on one database, made once on first use, replaced on rotation."""

from __future__ import annotations

import secrets

from sqlalchemy.dialects import postgresql, sqlite

from ember.store.audit_record import AuditRecord
from ember.store.db import Store
from ember.store.tables import ServerSecret

DOWNLOAD_URL_SECRET = "dataset-download-url"
"""The HMAC key of signed dataset download URLs (ember.gateway.signing)."""


def shared_secret(store: Store, name: str) -> bytes:
    """The secret called `name`; the first process to ask creates it (a race keeps the first one written)."""
    insert = postgresql.insert if store.dialect == "postgresql" else sqlite.insert
    with store.session() as s:
        s.execute(insert(ServerSecret).values(name=name, value=secrets.token_hex(32))
                  .on_conflict_do_nothing(index_elements=["name"]))
    with store.session() as s:
        row = s.get(ServerSecret, name)
        assert row is not None
        return bytes.fromhex(row.value)


def current_secret(store: Store, name: str) -> bytes:
    """The secret called `name` as the store holds it now (a read only, unless it does not exist yet):
    what a process rereads to notice a rotation."""
    with store.session() as s:
        row = s.get(ServerSecret, name)
        if row is not None:
            return bytes.fromhex(row.value)
    return shared_secret(store, name)


def rotate_secret(store: Store, name: str, *, audit: AuditRecord | None = None) -> None:
    """Replace the secret called `name` with a new random one (created if missing): whatever the old one
    signed stops verifying. The one place a rotation happens (`ember secrets rotate-signing-key`)."""
    with store.session(audit) as s:
        row = s.get(ServerSecret, name)
        if row is None:
            s.add(ServerSecret(name=name, value=secrets.token_hex(32)))
        else:
            row.value = secrets.token_hex(32)
