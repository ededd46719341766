"""The platform store on SQLite and PostgreSQL: accounts, users, keys, quotas, usage, migrations."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import inspect, text

from ember.config import StoreConfig
from ember.errors import AlreadyExists, InvalidRequest, ResourceNotFound
from ember.store.accounts import Accounts, Users
from ember.store.api_keys import ApiKeys, digest
from ember.store.db import Store, open_store
from ember.store.quotas import GENERATED, REQUESTS, Quotas
from ember.store.tables import ApiKey
from ember.store.usage import BATCH, UsageMeter, daily_usage, usage_totals
from tests.store.old_schema import store_at_0001_with_acme


def test_account_gets_admin_and_key_stored_as_digest(store: Store) -> None:
    new = Accounts(store).create("acme", "ops@acme.test")
    assert new.key.key.startswith("fw_") and len(new.key.key) >= 35
    assert new.admin.role == "admin"
    with store.session() as s:
        row = s.get(ApiKey, new.key.row.key_id)
        assert row is not None
        # the plaintext is nowhere in the row, only its digest and 8-character prefix
        assert new.key.key not in repr([getattr(row, c.key) for c in inspect(ApiKey).columns])
        assert row.digest == digest(new.key.key) and row.prefix == new.key.key[:8]
    owner = ApiKeys(store).verify(new.key.key)
    assert owner is not None and (owner.account_id, owner.user_id, owner.role) == ("acme", "admin", "admin")
    with pytest.raises(AlreadyExists):
        Accounts(store).create("acme", "other@acme.test")


@pytest.mark.parametrize("bad", ["", "-a", "A", "a_b", "a" * 64, "../etc", "a'b", "a\x00b", "café", "a b"])
def test_hostile_ids_refused(store: Store, bad: str) -> None:
    with pytest.raises(InvalidRequest):
        Accounts(store).create(bad, "x@y.z")
    assert Accounts(store).count() == 0


def test_keys_verify_delete_and_unknown(store: Store) -> None:
    Accounts(store).create("acme", "ops@acme.test")
    Users(store).create("acme", "bob", "user", "bob@acme.test")
    keys = ApiKeys(store)
    k = keys.create("acme", "bob", "ci", annotations={"team": "ml"})
    assert keys.verify(k.key).user_id == "bob"
    assert keys.verify(k.key[:-1] + ("A" if k.key[-1] != "A" else "B")) is None
    assert keys.verify("not-a-key") is None and keys.verify("fw_" + "x" * 40) is None
    assert [r.key_id for r in keys.list("acme", "bob")] == [k.row.key_id]
    with pytest.raises(ResourceNotFound):
        keys.delete("other", None, k.row.key_id)  # another account's id is not found
    keys.delete("acme", "bob", k.row.key_id)
    assert keys.verify(k.key) is None and keys.list("acme", "bob") == []
    with pytest.raises(ResourceNotFound):
        keys.delete("acme", "bob", k.row.key_id)


def test_quota_cap_and_value(store: Store) -> None:
    Accounts(store).create("acme", "ops@acme.test")
    q = Quotas(store)
    with pytest.raises(ResourceNotFound):
        q.set_value("acme", REQUESTS, 10, allow_missing=False)
    assert q.set_value("acme", REQUESTS, 10, allow_missing=True).effective == 10
    assert q.set_cap("acme", REQUESTS, 5).effective == 5  # the cap pulls the value down
    with pytest.raises(InvalidRequest):
        q.set_value("acme", REQUESTS, 6, allow_missing=False)
    assert q.set_cap("acme", GENERATED, 1000).effective == 1000  # a cap alone is enforced
    assert {v.quota_id for v in q.list("acme")} == {REQUESTS, GENERATED}
    with pytest.raises(ResourceNotFound):
        q.get("acme", "monthly-spend-usd")


def test_usage_meter_adds_across_flushes_and_processes(store: Store, store_config: StoreConfig) -> None:
    a, b = UsageMeter(store), UsageMeter(open_store(store_config))  # two processes' meters, one database
    for m in (a, b):
        m.record("acme", "k1", "model-x", 10, 4, 3)
        m.record("acme", "k1", "model-x", 5, 0, 2)
        m.record("acme", "k2", "model-x", 1, 0, 1, usage_type=BATCH)
        m.flush()
    a.record("acme", "k1", "model-y", 7, 0, 7)
    a.flush()
    a.flush()  # nothing pending: no double count
    now = datetime.now(UTC)
    totals = usage_totals(store, "acme", now - timedelta(days=1), now + timedelta(hours=1))
    got = {(t.key_id, t.model, t.usage_type): (t.requests, t.prompt_tokens, t.cached_prompt_tokens,
                                                t.completion_tokens) for t in totals}
    assert got == {("k1", "model-x", "TEXT_COMPLETION"): (4, 30, 8, 10),
                   ("k2", "model-x", "BATCH"): (2, 2, 0, 2),
                   ("k1", "model-y", "TEXT_COMPLETION"): (1, 7, 0, 7)}
    days = daily_usage(store, "acme", now - timedelta(days=1), now + timedelta(hours=1), ZoneInfo("UTC"),
                       "model_name", {"model_name": ["model-x"]})
    assert sum(d.prompt_tokens for d in days) == 32 and {d.group for d in days} == {(("model_name", "model-x"),)}


def test_meter_concurrent_records_are_all_counted(store: Store) -> None:
    m = UsageMeter(store)
    stop = threading.Event()

    def flusher() -> None:
        while not stop.is_set():
            m.flush()

    t = threading.Thread(target=flusher)
    t.start()
    workers = [threading.Thread(target=lambda: [m.record("acme", "k", "m", 1, 0, 2) for _ in range(500)])
               for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    t.join()
    m.flush()
    now = datetime.now(UTC)
    (total,) = usage_totals(store, "acme", now - timedelta(days=1), now + timedelta(hours=1))
    assert (total.requests, total.prompt_tokens, total.completion_tokens) == (2000, 2000, 4000)


def test_migrations_are_idempotent_and_versioned(store: Store, store_config: StoreConfig) -> None:
    assert store.revision() == Store.head_revision() != "0001"
    again = open_store(store_config)  # a second start on the same database changes nothing
    assert again.revision() == Store.head_revision()
    with again.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM accounts")).scalar() == 0
    again.close()


def test_older_database_upgrades_in_place(store_config: StoreConfig) -> None:
    """A store made by an older ember (its first revision) keeps its data when a newer one opens it."""
    store_at_0001_with_acme(store_config)
    new = open_store(store_config)
    assert new.revision() == Store.head_revision()
    assert [a.account_id for a in Accounts(new).list()] == ["acme"]
    with new.engine.connect() as c:  # a user from before user states is active
        assert c.execute(text("SELECT state FROM users WHERE user_id = 'admin'")).scalar() == "ACTIVE"
    new.close()
