"""Immutable values that cross the engine's edge: what to generate, and what came out of one step."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field


class FinishReason(enum.StrEnum):
    STOP = "stop"
    """EOS or a stop string."""
    LENGTH = "length"
    """max_tokens reached, or the context window is full."""


@dataclass(frozen=True)
class SamplingParams:
    """Everything the engine needs to choose tokens for one sequence; validated by the API layer."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    """0 = off."""
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    mirostat_target: float | None = None
    """Mirostat 2.0 target surprise (tau, in bits); None = off."""
    mirostat_lr: float = 0.1
    """Mirostat learning rate (eta)."""
    logprobs: int | None = None
    """Top alternatives per generated token; None = no logprobs; 0 = only the chosen token's."""
    prompt_logprobs: int | None = None
    """Like logprobs, for prompt tokens (echo); None = not computed."""
    speculation: tuple[int, ...] | None = None
    """Predicted output tokens to draft from (speculative decoding); never changes the output."""
    grammar: str | None = None
    """A validated llguidance grammar the output must follow (see engine/grammar.py); None = free text."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    cache_salt: str | None = None
    """Isolation key (`prompt_cache_isolation_key`): within one tenant, cached prefixes are shared only
    between requests with the same salt."""
    arrival_time: float = 0.0
    background: bool = False
    """A batch-job row: scheduled only into room interactive requests leave, and preempted first."""
    cache_tenant: str | None = None
    """The account the request runs for: cached prefixes are never shared across tenants, whatever the
    salt. None: no account (an open server, the CLI), whose requests share by salt alone."""

    @property
    def cache_scope(self) -> str | None:
        """The prefix-cache namespace: requests share cached blocks iff their scopes are equal.

        Without a tenant it is the salt itself; with one, a JSON pair, which no tenant-less scope can equal
        (the "t" / "s" tags differ) and which no (tenant, salt) choice can forge for another tenant."""
        salt = self.cache_salt or None
        if self.cache_tenant is None:
            return None if salt is None else "s" + salt
        return "t" + json.dumps([self.cache_tenant, salt])


@dataclass(frozen=True)
class TokenLogprob:
    """One position's logprob record: the chosen token and the top alternatives."""

    token_id: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()
    sampling_logprob: float | None = None


@dataclass(frozen=True)
class RequestOutput:
    """What one engine step produced for one request: deltas, plus totals once finished."""

    request_id: str
    new_token_ids: tuple[int, ...]
    new_text: str
    finish_reason: FinishReason | None = None
    new_logprobs: tuple[TokenLogprob, ...] = ()
    """One record per id in new_token_ids when logprobs were asked for."""
    new_text_offsets: tuple[int, ...] = ()
    """Character offset of each new token's text within the completion text."""
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None
    """Sent once, on the first output, when prompt logprobs were asked for (first entry's logprob is None)."""
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    first_token_time: float | None = None
    """Engine-clock (time.monotonic) time the first output token was produced."""
    arrival_time: float = 0.0
    num_draft_tokens: int = 0
    """Draft tokens proposed for this request so far (speculative decoding)."""
    num_accepted_draft_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
