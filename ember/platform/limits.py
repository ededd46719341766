"""Rate limits: token buckets per account x model, one per quota, refilled continuously.

A request reserves what it may use (1 request, its prompt tokens, max_tokens x n generated tokens)
from every bucket at once or from none; what it did not use is refunded when it finishes. A bucket
holds at most one minute of its quota, so the burst is one minute's worth.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from ember.errors import RateLimited
from ember.store.quotas import CACHE_ADJUSTED_PROMPT, GENERATED, PROMPT, QUOTA_IDS, REQUESTS, Quotas

UNSET_LIMIT_PER_S = "1000000"


@dataclass
class Bucket:
    per_minute: int
    tokens: float
    at: float

    def refill(self, now: float) -> None:
        self.tokens = min(float(self.per_minute), self.tokens + (now - self.at) * self.per_minute / 60.0)
        self.at = now

    def wait_for(self, amount: float) -> float:
        return (amount - self.tokens) * 60.0 / self.per_minute if self.per_minute else math.inf


@dataclass
class Reservation:
    limiter: RateLimiter | None
    account_id: str
    model: str
    amounts: dict[str, int] = field(default_factory=dict)
    settled: bool = False

    def settle(self, prompt_tokens: int, cached_prompt_tokens: int, completion_tokens: int) -> None:
        """Refund what the request reserved but did not use (idempotent)."""
        if self.settled:
            return
        self.settled = True
        if self.limiter is None:
            return
        used = {REQUESTS: 1, PROMPT: prompt_tokens, CACHE_ADJUSTED_PROMPT: prompt_tokens - cached_prompt_tokens,
                GENERATED: completion_tokens}
        self.limiter.refund(self.account_id, self.model,
                            {q: max(0, a - used[q]) for q, a in self.amounts.items()})


class Buckets:
    """Every (account, model, quota) bucket, behind one lock. One process holds them; in a cluster a Ray
    actor does (ember.cluster.limits), so that a limit holds across replicas, not per replica."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str, str], Bucket] = {}

    def take(self, account_id: str, model: str, limits: dict[str, int], amounts: dict[str, int]) -> float:
        """Take `amounts` from every bucket at once, or from none: 0.0 when taken, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            buckets = {q: self._bucket(account_id, model, q, limits[q], now) for q in amounts}
            waits = [b.wait_for(amounts[q]) for q, b in buckets.items() if b.tokens < amounts[q]]
            if waits:
                return max(waits)
            for q, b in buckets.items():
                b.tokens -= amounts[q]
        return 0.0

    def refund(self, account_id: str, model: str, amounts: dict[str, int]) -> None:
        with self._lock:
            for q, a in amounts.items():
                b = self._buckets.get((account_id, model, q))
                if b is not None and a:
                    b.tokens = min(float(b.per_minute), b.tokens + a)

    def remaining(self, account_id: str, model: str, quota: str) -> int | None:
        with self._lock:
            b = self._buckets.get((account_id, model, quota))
            if b is None:
                return None
            b.refill(time.monotonic())
            return int(b.tokens)

    def _bucket(self, account_id: str, model: str, q: str, per_minute: int, now: float) -> Bucket:
        b = self._buckets.get((account_id, model, q))
        if b is None:
            b = self._buckets[(account_id, model, q)] = Bucket(per_minute, float(per_minute), now)
        elif b.per_minute != per_minute:  # a changed quota applies from the next request,
            b.refill(now)                 # keeping what was used in the current minute
            used = b.per_minute - b.tokens
            b.per_minute = per_minute
            b.tokens = max(0.0, per_minute - used)
        b.refill(now)
        return b


class RateLimiter:
    def __init__(self, quotas: Quotas, buckets: Buckets | None = None) -> None:
        self.quotas = quotas
        self._lock = threading.Lock()
        self._limits: dict[str, dict[str, int]] = {}
        self._stale = True
        self.buckets = buckets if buckets is not None else Buckets()

    def limits(self, account_id: str) -> dict[str, int]:
        """The account's enforced per-minute limits; a quota not set is absent (unlimited).

        Read from memory: the platform's flusher thread refreshes them every second (quotas changed by
        another process), and a change made here reloads them before the next request."""
        if self._stale:
            self.refresh()
        return self._limits.get(account_id, {})

    def refresh(self) -> None:
        fresh = {a: {q: v.effective for q, v in qs.items() if v.effective is not None}
                 for a, qs in self.quotas.all_accounts().items()}
        with self._lock:
            self._limits, self._stale = fresh, False

    def invalidate(self) -> None:
        """A quota changed here: the next request reads it."""
        self._stale = True

    def reserve(self, account_id: str, model: str, prompt_tokens: int, generated_tokens: int) -> Reservation:
        """Reserve for an interactive request: 429 (with retry-after) when a bucket is short."""
        got = self.try_reserve(account_id, model, prompt_tokens, generated_tokens)
        if isinstance(got, Reservation):
            return got
        raise _limited(model, got)

    def try_reserve(self, account_id: str, model: str, prompt_tokens: int,
                    generated_tokens: int) -> Reservation | float:
        """The reservation, or the seconds until the buckets could give it (a batch row waits that long
        and asks again, where an interactive request gets a 429). Raises RateLimited only for what no
        bucket can ever give: more than a whole minute's quota."""
        limits = self.limits(account_id)
        if not limits:
            return Reservation(None, account_id, model)
        want = {REQUESTS: 1, PROMPT: prompt_tokens, CACHE_ADJUSTED_PROMPT: prompt_tokens,
                GENERATED: generated_tokens}
        amounts = {q: want[q] for q in limits}
        wait = self._take(account_id, model, limits, amounts)
        return wait if wait > 0 else Reservation(self, account_id, model, amounts)

    def reserve_request(self, account_id: str, model: str) -> Reservation:
        """The request-rate quota alone, before any work on the request: its token quotas need the prompt's
        token count (`reserve_tokens`, once tokenized), but a request the rate refuses is never tokenized."""
        limits = self.limits(account_id)
        if not limits:
            return Reservation(None, account_id, model)
        amounts = {REQUESTS: 1} if REQUESTS in limits else {}
        if amounts and (wait := self._take(account_id, model, limits, amounts)) > 0:
            raise _limited(model, wait)
        return Reservation(self, account_id, model, amounts)

    def reserve_tokens(self, reservation: Reservation, prompt_tokens: int, generated_tokens: int) -> None:
        """Add the token quotas to a request's reservation (all of them or none; RateLimited when short)."""
        if reservation.limiter is None:
            return
        limits = self.limits(reservation.account_id)
        want = {PROMPT: prompt_tokens, CACHE_ADJUSTED_PROMPT: prompt_tokens, GENERATED: generated_tokens}
        amounts = {q: want[q] for q in limits if q in want}
        if amounts:
            if (wait := self._take(reservation.account_id, reservation.model, limits, amounts)) > 0:
                raise _limited(reservation.model, wait)
            reservation.amounts.update(amounts)

    def _take(self, account_id: str, model: str, limits: dict[str, int], amounts: dict[str, int]) -> float:
        """Take `amounts` from the buckets (0.0), or the seconds until they could be (nothing taken)."""
        for q, amount in amounts.items():
            if amount > limits[q]:
                raise RateLimited(f"this request needs {amount} of quota {q}, more than its whole per-minute "
                                  f"limit of {limits[q]}: it can never be admitted; lower max_tokens or n, "
                                  "or raise the quota")
        return self.buckets.take(account_id, model, limits, amounts)

    def refund(self, account_id: str, model: str, amounts: dict[str, int]) -> None:
        self.buckets.refund(account_id, model, amounts)

    def remaining_requests(self, account_id: str, model: str) -> int | None:
        return self.buckets.remaining(account_id, model, REQUESTS)

    def headers(self, account_id: str, model: str) -> dict[str, str]:
        """The effective limits (per second, as Fireworks reports them) for every inference response."""
        limits = self.limits(account_id)

        def per_s(q: str) -> str:
            return _decimal(limits[q] / 60.0) if q in limits else UNSET_LIMIT_PER_S

        h = {"x-ratelimit-limit-tokens-prompt": per_s(PROMPT),
             "x-ratelimit-limit-tokens-cache-adjusted-prompt": per_s(CACHE_ADJUSTED_PROMPT),
             "x-ratelimit-limit-tokens-generated": per_s(GENERATED)}
        if REQUESTS in limits:
            h["x-ratelimit-limit-requests"] = str(limits[REQUESTS])
            rem = self.remaining_requests(account_id, model)
            h["x-ratelimit-remaining-requests"] = str(limits[REQUESTS] if rem is None else max(0, rem))
        return h

    def effective(self, account_id: str) -> dict[str, float | None]:
        limits = self.limits(account_id)
        return {q: (limits[q] / 60.0 if q in limits else None) for q in QUOTA_IDS}


def _limited(model: str, wait: float) -> RateLimited:
    retry = min(60, max(1, math.ceil(wait)))
    return RateLimited(f"rate limit exceeded for model {model}; retry in {retry} s", retry_after=retry)


def _decimal(x: float) -> str:
    return f"{x:.6f}".rstrip("0").rstrip(".") or "0"
