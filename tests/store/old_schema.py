"""Rows written the way an older ember wrote them: raw SQL against that revision's own schema (today's ORM
names columns an old database does not have yet)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text

from ember.config import StoreConfig
from ember.store.db import Store

WHEN = datetime(2026, 1, 1)


def store_at_0001_with_acme(config: StoreConfig) -> None:
    """A database at revision 0001 holding account `acme` and its admin user, closed again."""
    old = Store(config)
    old.migrate("0001")
    with old.engine.begin() as c:
        c.execute(text("INSERT INTO accounts VALUES ('acme', 'ops@acme.test', '', :t, :t)"), {"t": WHEN})
        c.execute(text("INSERT INTO users VALUES ('acme', 'admin', 'ops@acme.test', 'admin', '', false, :t, :t)"),
                  {"t": WHEN})
    old.close()
