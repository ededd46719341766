"""What a running request yields: one event per engine output, then one result with its usage."""

from __future__ import annotations

from dataclasses import dataclass

from ember.engine.request import RequestOutput
from ember.pipeline.request import Caller, UsageKind
from ember.pipeline.usage import Usage


@dataclass(frozen=True)
class ChoiceOutput:
    """Choice `index` moved: `output` holds its new tokens and text, and its totals so far."""

    index: int
    output: RequestOutput


@dataclass(frozen=True)
class Result:
    """How a request ended: what it used, for whom, metered as `kind`."""

    caller: Caller
    model: str
    usage: Usage
    kind: UsageKind
    finished: bool
    """Every choice finished (rather than an error, a deadline or the client's leaving cutting it short)."""

    @property
    def served(self) -> bool:
        """A request counts once it completed or produced tokens (an aborted stream too)."""
        return self.finished or self.usage.completion_tokens > 0
