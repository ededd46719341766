"""The audit log in the store (SQLite and PostgreSQL): an entry commits with its change or not at all,
and the queries filter, page and order as the API and `ember audit` need."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ember.errors import AlreadyExists, ResourceNotFound
from ember.store.accounts import Accounts, Users
from ember.store.api_keys import ApiKeys
from ember.store.audit_log import AuditLog, AuditQuery
from ember.store.audit_record import MAX_PAYLOAD_BYTES, AuditRecord, capped, redact
from ember.store.db import Store
from ember.store.ids import utcnow
from ember.store.quotas import REQUESTS, Quotas
from ember.store.tables import AuditLogEntry


def _record(account: str = "acme", method: str = "POST /v1/accounts/{account_id}/users", email: str = "a@acme.test",
            key_id: str = "") -> AuditRecord:
    return AuditRecord(account_id=account, method=method, resource=f"accounts/{account}/users", principal=email,
                       user_id="admin", key_id=key_id, client_ip="127.0.0.1", user_agent="pytest")


def _entries(store: Store) -> list[AuditLogEntry]:
    with store.session() as s:
        return list(s.scalars(select(AuditLogEntry).order_by(AuditLogEntry.entry_id)))


def test_entry_commits_with_the_change_and_names_the_key_by_prefix(store: Store) -> None:
    new = Accounts(store).create("acme", "ops@acme.test")
    rec = _record(key_id=new.key.row.key_id)
    Users(store).create("acme", "bob", "user", "bob@acme.test", audit=rec)
    assert rec.committed
    [e] = _entries(store)
    assert (e.account_id, e.status_code, e.principal, e.key_id, e.key_prefix) == (
        "acme", 200, "a@acme.test", new.key.row.key_id, new.key.key[:8])
    assert new.key.key not in repr([getattr(e, c.key) for c in AuditLogEntry.__table__.columns])
    # A new key's entry names the key by id and prefix; the plaintext is nowhere.
    rec = _record(method="POST apiKeys")
    k = ApiKeys(store).create("acme", "bob", audit=rec)
    e = _entries(store)[-1]
    assert e.resource == f"accounts/acme/users/bob/apiKeys/{k.row.key_id}"
    assert e.payload["prefix"] == k.key[:8] and k.key not in repr(e.payload)


def test_failed_change_rolls_back_its_entry(store: Store) -> None:
    Accounts(store).create("acme", "ops@acme.test")
    Users(store).create("acme", "bob", "user")
    rec = _record()
    with pytest.raises(AlreadyExists):
        Users(store).create("acme", "bob", "user", audit=rec)  # the insert fails at commit
    rec2 = _record()
    with pytest.raises(ResourceNotFound):
        Quotas(store).set_cap("nobody", REQUESTS, 5, audit=rec2)  # raised inside the transaction
    assert not rec.committed and not rec2.committed and _entries(store) == []
    # The failure is then written on its own, with its status.
    AuditLog(store).write(rec, 409, "user 'bob' already exists")
    [e] = _entries(store)
    assert (e.status_code, e.message) == (409, "user 'bob' already exists") and rec.committed


def test_list_filters_pages_newest_first(store: Store) -> None:
    log = AuditLog(store)
    for i in range(7):
        log.write(_record(method="DELETE /v1/x" if i % 2 else "POST /v1/x", email=f"u{i % 3}@acme.test"), 200)
    log.write(_record(account="globex"), 200)
    now = utcnow()
    q = AuditQuery("acme", now - timedelta(days=30), now + timedelta(seconds=1))
    rows, total = log.list(q, 3)
    assert total == 7 and len(rows) == 3
    seen = [e.entry_id for e in rows]
    while len(rows) == 3:
        rows, _ = log.list(q, 3, (rows[-1].timestamp, rows[-1].entry_id))
        seen += [e.entry_id for e in rows]
    assert len(seen) == 7 and seen == sorted(seen, reverse=True)  # newest first, each once
    assert log.list(AuditQuery("acme", q.start, q.end, method="DELETE"), 50)[1] == 3
    assert log.list(AuditQuery("acme", q.start, q.end, method="DELETE /v1/x"), 50)[1] == 3
    assert log.list(AuditQuery("acme", q.start, q.end, method="DEL"), 50)[1] == 0  # whole words only
    assert log.list(AuditQuery("acme", q.start, q.end, method="%"), 50)[1] == 0  # no LIKE wildcards
    assert log.list(AuditQuery("acme", q.start, q.end, email="u1@acme.test"), 50)[1] == 2
    assert log.list(AuditQuery("acme", now + timedelta(seconds=2), now + timedelta(days=1)), 50)[1] == 0
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditLogEntry)) == 8


def test_payload_redacted_and_capped() -> None:
    key = "fw_" + "A1b2" * 10
    out = redact({"apiKey": key, "key": "x", "signature": "s", "pageToken": "t", "downloadUrl": "u",
                  "note": f"see {key}", "displayName": "ok", "nested": {"clientSecret": "x"}})
    assert out == {"apiKey": "[redacted]", "key": "[redacted]", "signature": "[redacted]",
                   "pageToken": "[redacted]", "downloadUrl": "[redacted]", "note": "see fw_[redacted]",
                   "displayName": "ok", "nested": {"clientSecret": "[redacted]"}}
    rec = _record()
    rec.note(**{f"f{i}": "x" * 500 for i in range(40)})
    assert len(json.dumps(capped(rec.payload))) <= MAX_PAYLOAD_BYTES


def test_a_job_transition_has_an_entry_only_when_the_job_moved(store: Store) -> None:
    from ember.store import batch_jobs as st
    from tests.store.test_batch_store import make_job

    jobs = make_job(store)
    moved = _record(method="DELETE job")
    assert jobs.transition("acme", "j1", st.CANCELLING, st.ACTIVE, "CANCELLED", "by user", audit=moved)
    stayed = _record(method="DELETE job")
    assert not jobs.transition("acme", "j1", st.CANCELLING, (st.RUNNING,), audit=stayed)
    assert moved.committed and not stayed.committed  # the caller writes the refusal (or no-op) itself
    assert [e.method for e in _entries(store)] == ["DELETE job"]
