"""Every store test runs twice: on a SQLite file and on a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ember.config import StoreConfig
from ember.store.db import Store, open_store
from tests.postgres import PostgresServer


@pytest.fixture(params=["sqlite", "postgresql"])
def store_config(request: pytest.FixtureRequest, tmp_path) -> StoreConfig:  # noqa: ANN001
    if request.param == "sqlite":
        return StoreConfig(data_dir=str(tmp_path))
    pg: PostgresServer = request.getfixturevalue("postgres")
    return StoreConfig(url=pg.create_database())


@pytest.fixture
def store(store_config: StoreConfig) -> Iterator[Store]:
    s = open_store(store_config)
    yield s
    s.close()
