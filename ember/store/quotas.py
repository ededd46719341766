"""Per-account, per-minute quotas: the operator's cap (`max_value`) and the enforced `value`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from ember.errors import InvalidRequest, ResourceNotFound
from ember.store.db import Store
from ember.store.ids import utcnow
from ember.store.tables import Account, Quota

if TYPE_CHECKING:
    from ember.store.audit_record import AuditRecord

REQUESTS = "requests-per-minute"
PROMPT = "prompt-tokens-per-minute"
CACHE_ADJUSTED_PROMPT = "cache-adjusted-prompt-tokens-per-minute"
GENERATED = "generated-tokens-per-minute"
QUOTA_IDS = (REQUESTS, PROMPT, CACHE_ADJUSTED_PROMPT, GENERATED)


def check_quota_id(quota_id: str) -> str:
    if quota_id not in QUOTA_IDS:
        raise ResourceNotFound(f"quota {quota_id[:63]!r} not found; quotas are {', '.join(QUOTA_IDS)}")
    return quota_id


@dataclass(frozen=True)
class QuotaValue:
    quota_id: str
    value: int | None
    max_value: int | None
    updated: datetime

    @property
    def effective(self) -> int | None:
        """What is enforced: the value, held under the cap; None = unlimited."""
        if self.value is None:
            return self.max_value
        if self.max_value is None:
            return self.value
        return min(self.value, self.max_value)


def _value(q: Quota) -> QuotaValue:
    return QuotaValue(q.quota_id, q.value, q.max_value, q.updated)


class Quotas:
    def __init__(self, store: Store) -> None:
        self.store = store

    def list(self, account_id: str) -> list[QuotaValue]:
        with self.store.session() as s:
            rows = s.scalars(select(Quota).where(Quota.account_id == account_id).order_by(Quota.quota_id))
            return [_value(q) for q in rows]

    def all_accounts(self) -> dict[str, dict[str, QuotaValue]]:
        """Every quota of every account (what the rate limiter caches)."""
        out: dict[str, dict[str, QuotaValue]] = {}
        with self.store.session() as s:
            for q in s.scalars(select(Quota)):
                out.setdefault(q.account_id, {})[q.quota_id] = _value(q)
        return out

    def get(self, account_id: str, quota_id: str) -> QuotaValue:
        check_quota_id(quota_id)
        with self.store.session() as s:
            q = s.get(Quota, (account_id, quota_id))
        if q is None:
            raise ResourceNotFound(f"quota {quota_id!r} is not set for this account (unlimited)")
        return _value(q)

    def set_value(self, account_id: str, quota_id: str, value: int, allow_missing: bool, *,
                  audit: AuditRecord | None = None) -> QuotaValue:
        """An account admin's PATCH: any value up to the operator's cap."""
        check_quota_id(quota_id)
        if value < 0:
            raise InvalidRequest("quota value must not be negative", param="value")
        with self.store.session(audit) as s:
            q = s.get(Quota, (account_id, quota_id))
            if q is None and not allow_missing:
                raise ResourceNotFound(f"quota {quota_id!r} is not set; PATCH with allowMissing=true creates it")
            if q is not None and q.max_value is not None and value > q.max_value:
                raise InvalidRequest(f"value {value} is above this quota's maxValue {q.max_value}",
                                     param="value")
            if q is None:
                q = Quota(account_id=account_id, quota_id=quota_id, value=value, max_value=None, updated=utcnow())
                s.add(q)
            else:
                q.value, q.updated = value, utcnow()
        return _value(q)

    def set_cap(self, account_id: str, quota_id: str, max_value: int | None, value: int | None = None, *,
                audit: AuditRecord | None = None) -> QuotaValue:
        """The operator's `ember accounts set-quota`: the cap, and optionally the value under it."""
        check_quota_id(quota_id)
        for name, v in (("max_value", max_value), ("value", value)):
            if v is not None and v < 0:
                raise InvalidRequest(f"{name} must not be negative", param=name)
        with self.store.session(audit) as s:
            if s.get(Account, account_id) is None:
                raise ResourceNotFound(f"account {account_id!r} not found")
            q = s.get(Quota, (account_id, quota_id))
            if q is None:
                q = Quota(account_id=account_id, quota_id=quota_id, value=None, max_value=None, updated=utcnow())
                s.add(q)
            q.max_value = max_value
            if value is not None:
                q.value = value
            if q.value is not None and q.max_value is not None and q.value > q.max_value:
                q.value = q.max_value
            q.updated = utcnow()
        return _value(q)
