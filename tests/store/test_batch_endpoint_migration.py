"""Revision 0004 gives batch jobs an endpoint: an OpenAI batch stored before it was one of completions."""

from __future__ import annotations

from sqlalchemy import text

from ember.config import StoreConfig
from ember.store.batch_jobs import BatchJobs
from ember.store.db import Store, open_store
from tests.store.old_schema import WHEN, store_at_0001_with_acme


def _insert_job(store: Store, job_id: str, api: str) -> None:
    with store.engine.begin() as c:
        c.execute(text(
            "INSERT INTO batch_jobs VALUES ('acme', :id, '', 'ops@acme.test', '', 'JOB_STATE_COMPLETED', 'OK', "
            "'', 'm', 'in', :out, '{}', 'PRECISION_UNSPECIFIED', '', 1, :t, :t, :t, NULL, NULL, :api, '{}', '', "
            "NULL)"), {"id": job_id, "out": f"{job_id}-output", "t": WHEN, "api": api})


def test_jobs_from_before_endpoints_keep_their_meaning(store_config: StoreConfig) -> None:
    store_at_0001_with_acme(store_config)
    old = Store(store_config)
    old.migrate("0003")
    _insert_job(old, "batch-old", "openai")
    _insert_job(old, "bij-old", "fireworks")
    old.close()
    new = open_store(store_config)
    jobs = BatchJobs(new)
    assert jobs.get("acme", "batch-old").endpoint == "/v1/completions"
    assert jobs.get("acme", "bij-old").endpoint == ""  # a Gateway job's rows each name their endpoint
    new.close()
