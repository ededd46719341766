"""A database a newer ember migrated past this ember's newest revision is refused with a clear message, on
SQLite and PostgreSQL, and left as it was; `ember serve` stops at start-up naming the cause."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import text

from ember.config import StoreConfig
from ember.errors import FailedPrecondition
from ember.store.db import Store, open_store


def _mark_newer(store_config: StoreConfig) -> None:
    s = open_store(store_config)
    with s.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    s.close()


def test_a_newer_schema_is_refused_and_left_alone(store_config: StoreConfig) -> None:
    _mark_newer(store_config)
    with pytest.raises(FailedPrecondition) as e:
        open_store(store_config)
    assert "newer ember" in e.value.message
    assert repr(Store.head_revision()) in e.value.message
    s = Store(store_config)  # the refused open changed nothing
    with s.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "9999_from_the_future"
    s.engine.dispose()


def test_ember_serve_stops_naming_a_newer_schema(tmp_path) -> None:  # noqa: ANN001
    cfg = StoreConfig(data_dir=str(tmp_path))
    _mark_newer(cfg)
    out = subprocess.run([sys.executable, "-m", "ember", "serve", "--data-dir", str(tmp_path), "--port", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0, out.stderr[-2000:]
    assert "was written by a newer ember" in out.stderr and "upgrade ember" in out.stderr
    assert "Can't locate revision" not in out.stderr  # alembic's own words no longer stand alone
