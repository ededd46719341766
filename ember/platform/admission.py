"""Admitting one inference request: load shedding and its rate-limit reservation, released when it ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ember.engine.engine import EngineStats
from ember.errors import Overloaded
from ember.platform.limits import Reservation
from ember.platform.services import Platform


class Account(Protocol):
    @property
    def account_id(self) -> str: ...


@dataclass
class Admission:
    platform: Platform
    model: str
    reservation: Reservation
    sequences: int
    done: bool = False

    def release(self, prompt_tokens: int, cached_prompt_tokens: int, completion_tokens: int) -> None:
        """Leave the queue and refund what the reservation holds beyond what the request used.

        Idempotent: the first call counts."""
        if self.done:
            return
        self.done = True
        self.platform.inflight -= self.sequences
        self.reservation.settle(prompt_tokens, cached_prompt_tokens, completion_tokens)

    def reserve_tokens(self, prompt_tokens: int, generated_tokens: int) -> None:
        """The token quotas, once the prompt is tokenized: RateLimited (429) when a bucket is short."""
        self.platform.limiter.reserve_tokens(self.reservation, prompt_tokens, generated_tokens)


def admit_request(platform: Platform, who: Account, model: str, sequences: int, priority: bool,
                  stats: EngineStats) -> Admission:
    """Admit a request before any work on it (tokenizing, compiling a grammar): the queue bound and the
    request rate. Its token quotas follow once it is tokenized (`Admission.reserve_tokens`)."""
    shed(platform, sequences, priority, stats)
    reservation = platform.limiter.reserve_request(who.account_id, model)
    # Counted from here: requests still being tokenized are queued work too, so a burst of them is shed.
    platform.inflight += sequences
    return Admission(platform, model, reservation, sequences)


def shed(platform: Platform, sequences: int, priority: bool, stats: EngineStats) -> None:
    """Raise Overloaded (503) for a request of `sequences` engine sequences that the queue has no room for.

    The waiting queue is what the API has admitted and the engine is not yet running; past
    `max_queued_requests` new work is shed, whatever the caller's quota; `service_tier: "priority"`
    requests get twice that room, so they are admitted first when the server is busy. (A long prompt
    behind too much long-prompt prefill is refused by the engine itself: see ember.engine.backlog.)
    """
    bound = platform.config.max_queued_requests * (2 if priority else 1)
    # The engine's snapshot lags a burst (nothing runs yet when ten requests arrive at once), so what
    # is admitted counts as running up to the batch size the scheduler will take.
    waiting = max(0, platform.inflight - max(stats.num_running, platform.max_running))
    if waiting + sequences > bound and waiting > 0:
        raise Overloaded(f"the server is overloaded ({waiting} sequences waiting); retry shortly",
                         retry_after=min(30, 1 + waiting // 32))
