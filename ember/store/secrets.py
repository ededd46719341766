"""Secrets shared by every process on one database, made once on first use."""

from __future__ import annotations

import secrets

from sqlalchemy.dialects import postgresql, sqlite

from ember.store.db import Store
from ember.store.tables import ServerSecret


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
