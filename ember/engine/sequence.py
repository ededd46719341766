"""Sequence: the one mutable record of a completion inside the engine.

Two parts of its state have owners of their own: the KV blocks it holds are kept by the KVManager (the
only writer of num_computed_tokens too), and its drafts by its Speculation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from ember.engine.detokenizer import DetokenizerState
from ember.engine.request import EngineRequest, SamplingParams, TokenLogprob
from ember.engine.speculative import Speculation


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


@dataclass(eq=False)
class Sequence:
    request: EngineRequest
    detok: DetokenizerState = field(init=False)
    """Built from the request alone: the tokenizer is needed only to advance it (Detokenizer.append)."""
    token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    """Tokens whose K/V are in the cache. The scheduler hands out tokens until this catches up; only the
    KVManager, which owns the blocks they live in, changes it."""
    num_prefix_hit_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    generator: torch.Generator | None = None
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs_sent: bool = False
    first_token_time: float | None = None
    num_preemptions: int = 0
    arrival_time: float = 0.0
    spec: Speculation | None = None
    """Drafts and their statistics; None for a sequence that decodes one token at a time."""
    matcher: Any = None
    """The llguidance matcher of a constrained sequence (advanced by every token it emits)."""
    mirostat_mu: float | None = None
    """Mirostat's running surprise bound; starts at twice the target."""

    def __post_init__(self) -> None:
        self.detok = DetokenizerState.for_prompt(self.request.prompt_token_ids, self.request.params.stop)
        if not self.token_ids:
            self.token_ids = list(self.request.prompt_token_ids)
        if self.mirostat_mu is None and self.request.params.mirostat_target is not None:
            self.mirostat_mu = 2.0 * self.request.params.mirostat_target

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def draft(self) -> list[int]:
        """The draft under verification (read-only here: Speculation decides it); [] when none."""
        return self.spec.draft if self.spec is not None else []

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens + len(self.draft) - self.num_computed_tokens

    @property
    def input_token_ids(self) -> list[int]:
        """What the model reads: the sequence, then the draft under verification."""
        return self.token_ids + self.draft if self.draft else self.token_ids

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.params.prompt_logprobs is not None
