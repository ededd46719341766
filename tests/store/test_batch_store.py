"""Batch-job rows in the store (SQLite file and PostgreSQL): each custom_id lands once, progress is counted
from what is committed, state moves are compare-and-set, and a 0001 database upgrades to hold them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from ember.config import StoreConfig
from ember.store import batch_jobs as st
from ember.store.accounts import Accounts
from ember.store.batch_jobs import BatchJobs
from ember.store.datasets import Datasets
from ember.store.db import Store, open_store
from ember.store.ids import utcnow
from ember.store.tables import BatchJob
from tests.store.old_schema import store_at_0001_with_acme


def make_job(store: Store, job_id: str = "j1", continued_from: str = "") -> BatchJobs:
    try:
        Accounts(store).create("acme", "ops@acme.test")
    except Exception:  # noqa: BLE001 - made by an earlier call
        pass
    now = utcnow()
    jobs = BatchJobs(store)
    jobs.create(BatchJob(account_id="acme", job_id=job_id, state=st.RUNNING, model="m", input_dataset_id="in",
                         output_dataset_id=f"{job_id}-out", params={}, continued_from=continued_from,
                         created=now, updated=now, expire_time=now + timedelta(hours=1), display_name="",
                         created_by="", key_id="k", status_code="OK", status_message="",
                         precision="PRECISION_UNSPECIFIED", total_rows=3, api="fireworks", meta={}, owner=""), None)
    return jobs


def test_each_custom_id_lands_once_even_when_written_concurrently(store: Store) -> None:
    jobs = make_job(store)

    def write(i: int) -> bool:
        return jobs.record("acme", "j1", f"row-{i % 5}", i % 2 == 0, f"line {i}", 10, 2, 3)

    with ThreadPoolExecutor(8) as pool:
        inserted = list(pool.map(write, range(40)))
    assert sum(inserted) == 5
    p = jobs.progress("acme", "j1")
    assert p.processed == 5 and (p.prompt_tokens, p.cached_tokens, p.completion_tokens) == (50, 10, 15)
    assert jobs.done_ids("acme", "j1") == {f"row-{i}" for i in range(5)}
    ok_lines = list(jobs.lines("acme", "j1", True))
    assert len(ok_lines) == p.succeeded and len(ok_lines) + len(list(jobs.lines("acme", "j1", False))) == 5


def test_transitions_are_compare_and_set(store: Store) -> None:
    jobs = make_job(store)
    assert jobs.transition("acme", "j1", st.CANCELLING, st.ACTIVE, "CANCELLED", "by user")
    assert not jobs.transition("acme", "j1", st.WRITING, (st.RUNNING,))  # the runner lost the race
    assert jobs.transition("acme", "j1", st.CANCELLED, (st.CANCELLING,), "CANCELLED", "by user")
    j = jobs.get("acme", "j1")
    assert j.state == st.CANCELLED and j.end_time is not None and j.status_message == "by user"
    assert jobs.active() == []


def test_chain_successes_are_inherited(store: Store) -> None:
    jobs = make_job(store, "parent")
    jobs.record("acme", "parent", "a", True, "x")
    jobs.record("acme", "parent", "b", False, "x")
    make_job(store, "child", continued_from="parent")
    jobs.record("acme", "child", "b", True, "x")
    make_job(store, "grandchild", continued_from="child")
    assert jobs.succeeded_in_chain("acme", "grandchild") == {"a", "b"}
    assert jobs.succeeded_in_chain("acme", "child") == {"a"}


def test_a_0001_database_upgrades_to_hold_datasets_and_jobs(store_config: StoreConfig) -> None:
    store_at_0001_with_acme(store_config)
    new = open_store(store_config)
    try:
        assert new.revision() == Store.head_revision()
        Datasets(new).create("acme", "ds")
        assert Datasets(new).get("acme", "ds").state == "UPLOADING"
    finally:
        new.close()


def test_one_runner_drives_a_job_until_its_lease_runs_out(store: Store) -> None:
    jobs = make_job(store)
    assert jobs.claim("acme", "j1", "server-a", 30)
    assert jobs.claim("acme", "j1", "server-a", 30)  # its own: renewed
    assert not jobs.claim("acme", "j1", "server-b", 30)  # another live runner holds it
    jobs.release("server-a")
    assert jobs.claim("acme", "j1", "server-b", -1)  # released: anyone may take it (here, a lapsed lease)
    assert jobs.claim("acme", "j1", "server-a", 30)  # server-b's lease ran out (it died): taken over
    jobs.renew("server-a", 30)
    assert not jobs.claim("acme", "j1", "server-b", 30)
    assert jobs.transition("acme", "j1", st.COMPLETED, st.ACTIVE)
    assert not jobs.claim("acme", "j1", "server-b", 30)  # finished jobs are nobody's to drive
