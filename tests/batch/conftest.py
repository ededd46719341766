"""Dataset and batch-job tests share one live server per module (tiny model, SQLite store, account acme)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ember.model.loader import LoadedModel
from tests.batch.helpers import BatchEnv, make_env


@pytest.fixture(scope="module")
def env(tiny: LoadedModel) -> Iterator[BatchEnv]:
    yield from make_env(tiny, max_upload_mb=8, max_inflight_rows=4)
