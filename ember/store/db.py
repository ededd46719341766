"""The store's database: an SQLAlchemy engine over a SQLite file (WAL) or PostgreSQL, migrated at open."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.util.exc import CommandError
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from ember.config import StoreConfig
from ember.errors import FailedPrecondition
from ember.store.private_files import private_dir, secure_sqlite

if TYPE_CHECKING:
    from ember.store.audit_record import AuditRecord

MIGRATIONS = Path(__file__).with_name("migrations")
_PG_MIGRATION_LOCK = 0x656D626572  # "ember": one process migrates at a time on a shared PostgreSQL


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DB-API connection
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer and a kill -9 mid-write leaves the last committed state.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Store:
    """One database, shared by every part of ember that persists something (and by `ember accounts`)."""

    def __init__(self, config: StoreConfig) -> None:
        url = config.database_url()
        if url.startswith("sqlite"):
            # The database holds the URL-signing secret and key digests: the owner's alone (0600).
            db_file = url.split("///", 1)[1]
            if db_file and db_file != ":memory:":
                db_path = Path(db_file)
                if not db_path.parent.exists():
                    private_dir(db_path.parent)
                secure_sqlite(db_path)
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self, target: str = "head") -> None:
        """Bring the schema to the newest revision; a database from an older ember upgrades in place."""
        logging.getLogger("alembic").setLevel(logging.WARNING)
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            try:
                command.upgrade(cfg, target)
            except CommandError as e:
                if "Can't locate revision" not in str(e):
                    raise
                # The schema names a revision this ember does not ship: a newer ember wrote it. Nothing is
                # changed (the transaction rolls back); an older ember cannot read a newer schema.
                raise FailedPrecondition(
                    f"the database {self.engine.url.render_as_string(hide_password=True)} was written by a "
                    f"newer ember (its schema is past revision {self.head_revision()!r}, the newest this "
                    "ember knows): upgrade ember, or give this one its own --data-dir / --db") from None

    @staticmethod
    def head_revision() -> str:
        """The newest migration this ember ships."""
        from alembic.script import ScriptDirectory

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(cfg).get_current_head()
        assert head is not None
        return head

    def revision(self) -> str | None:
        with self.engine.connect() as conn:
            try:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except Exception:  # noqa: BLE001 - no table yet: an empty database
                return None

    @contextmanager
    def session(self, audit: AuditRecord | None = None) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back if it raises. With `audit`, the
        change's audit entry is added last, inside it: it commits with the change or not at all."""
        with self._sessions.begin() as s:
            yield s
            if audit is not None:
                audit.add_to(s)
        if audit is not None:
            audit.committed = True

    def close(self) -> None:
        self.engine.dispose()


def open_store(config: StoreConfig) -> Store:
    store = Store(config)
    store.migrate()
    return store

