"""Usage metering: counted in memory on the hot path, flushed to the store every second.

`record()` is a dict update under a lock (no database work per request). The platform's flush thread
(api/platform.py) writes the accumulated counters as additive upserts, so several processes sharing one
database each add their own share. A process killed with -9 loses at most what it counted since its last flush (one interval).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from ember.store.db import Store
from ember.store.ids import utcnow
from ember.store.tables import UsageHour

log = logging.getLogger("ember.usage")

TEXT_COMPLETION = "TEXT_COMPLETION"
BATCH = "BATCH"


@dataclass(frozen=True)
class UsageKey:
    account_id: str
    key_id: str
    model: str
    usage_type: str
    hour: datetime


COUNTERS = ("requests", "prompt_tokens", "cached_prompt_tokens", "completion_tokens")


class UsageMeter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[UsageKey, list[int]] = defaultdict(lambda: [0, 0, 0, 0])

    def record(self, account_id: str, key_id: str, model: str, prompt_tokens: int, cached_prompt_tokens: int,
               completion_tokens: int, usage_type: str = TEXT_COMPLETION, requests: int = 1) -> None:
        hour = utcnow().replace(minute=0, second=0, microsecond=0)
        k = UsageKey(account_id, key_id, model, usage_type, hour)
        with self._lock:
            c = self._pending[k]
            c[0] += requests
            c[1] += prompt_tokens
            c[2] += cached_prompt_tokens
            c[3] += completion_tokens

    def flush(self) -> None:
        """Write what was counted so far; on failure it is kept for the next try."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, defaultdict(lambda: [0, 0, 0, 0])
            if not batch:
                return
            try:
                self._write(batch)
            except Exception:
                log.exception("usage flush failed; will retry")
                with self._lock:
                    for k, c in batch.items():
                        p = self._pending[k]
                        for i in range(4):
                            p[i] += c[i]
                raise

    def _write(self, batch: dict[UsageKey, list[int]]) -> None:
        insert = postgresql.insert if self.store.dialect == "postgresql" else sqlite.insert
        rows = [dict(account_id=k.account_id, key_id=k.key_id, model=k.model, usage_type=k.usage_type,
                     hour=k.hour, **dict(zip(COUNTERS, c, strict=True))) for k, c in batch.items()]
        stmt = insert(UsageHour)
        stmt = stmt.on_conflict_do_update(
            index_elements=["account_id", "key_id", "model", "usage_type", "hour"],
            set_={c: getattr(UsageHour, c) + getattr(stmt.excluded, c) for c in COUNTERS},
        )
        with self.store.session() as s:
            s.execute(stmt, rows)


@dataclass(frozen=True)
class DailyUsage:
    day_start: datetime
    """Local midnight, as an aware datetime in the requested zone."""
    usage_type: str
    group: tuple[tuple[str, str], ...]
    requests: int
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int


def daily_usage(store: Store, account_id: str, start: datetime, end: datetime, tz: ZoneInfo,
                group_by: str | None, filters: dict[str, list[str]]) -> list[DailyUsage]:
    """Usage of one account in [start, end) summed per local day of `tz`, usage type and group.

    Stored at UTC-hour resolution: a zone whose offset is not whole hours splits days at the hour.
    `filters` maps model_name / api_key_id to allowed values (values OR'ed, keys AND'ed).
    """
    s_utc, e_utc = (t.astimezone(ZoneInfo("UTC")).replace(tzinfo=None) for t in (start, end))
    q = select(UsageHour).where(UsageHour.account_id == account_id,
                                UsageHour.hour >= s_utc.replace(minute=0, second=0, microsecond=0),
                                UsageHour.hour < e_utc)
    if filters.get("model_name"):
        q = q.where(UsageHour.model.in_(filters["model_name"]))
    if filters.get("api_key_id"):
        q = q.where(UsageHour.key_id.in_(filters["api_key_id"]))
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    with store.session() as s:
        for row in s.scalars(q):
            local = row.hour.replace(tzinfo=ZoneInfo("UTC")).astimezone(tz)
            day = local.replace(hour=0, minute=0, second=0, microsecond=0)
            group: tuple[tuple[str, str], ...] = ()
            if group_by == "model_name":
                group = (("model_name", row.model),)
            elif group_by == "api_key_id":
                group = (("api_key_id", row.key_id),)
            c = sums[(day, row.usage_type, group)]
            c[0] += row.requests
            c[1] += row.prompt_tokens
            c[2] += row.cached_prompt_tokens
            c[3] += row.completion_tokens
    return [DailyUsage(day, ut, g, *c) for (day, ut, g), c in sorted(sums.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2]))]


@dataclass(frozen=True)
class UsageTotal:
    key_id: str
    model: str
    usage_type: str
    requests: int
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int


def usage_totals(store: Store, account_id: str, start: datetime, end: datetime) -> list[UsageTotal]:
    """Usage of one account in [start, end) (aware datetimes) per API key x model x usage type."""
    s_utc, e_utc = (t.astimezone(ZoneInfo("UTC")).replace(tzinfo=None) for t in (start, end))
    sums: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    with store.session() as s:
        for r in s.scalars(select(UsageHour).where(UsageHour.account_id == account_id, UsageHour.hour >= s_utc,
                                                   UsageHour.hour < e_utc)):
            c = sums[(r.key_id, r.model, r.usage_type)]
            c[0] += r.requests
            c[1] += r.prompt_tokens
            c[2] += r.cached_prompt_tokens
            c[3] += r.completion_tokens
    return [UsageTotal(k, m, t, *c) for (k, m, t), c in sorted(sums.items())]


def next_day(day: datetime) -> datetime:
    """Local midnight after `day` (a DST day is 23 or 25 hours long)."""
    return (day.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=day.tzinfo)
