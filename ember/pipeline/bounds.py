"""The cheap refusals, told from sizes alone before any tokenizing: every adapter runs them pre-admission."""

from __future__ import annotations

from ember.errors import ContextLengthExceeded, InvalidRequest
from ember.tokenizer import Tokenizer

MAX_CHOICES = 128
"""Choices (prompts x n) one request may ask for: the spec's bound on n, applied to the product."""


def text_limit(tok: Tokenizer, max_tokens: int) -> int:
    """The most characters a text of at most `max_tokens` tokens can have: past it, it is surely longer."""
    return max_tokens * tok.max_token_chars


def check_text_fits(chars: int, tok: Tokenizer, max_model_len: int, param: str, what: str = "prompt") -> None:
    """ContextLengthExceeded for a text that cannot fit the context window, told from its length alone:
    before it is tokenized, which for a 50 MB prompt took 50 s and 6.5 GB to reach the same answer."""
    if chars > text_limit(tok, max_model_len):
        raise ContextLengthExceeded(
            f"the {what} has {chars} characters, more than any text that fits the context window of "
            f"{max_model_len} tokens (at most {tok.max_token_chars} characters a token)", param=param)


def check_choices(prompts: int, n: int) -> None:
    if prompts * n > MAX_CHOICES:
        raise InvalidRequest(
            f"{prompts} prompts x n={n} asks for {prompts * n} choices; at most {MAX_CHOICES} "
            "per request", param="n", code="too_many_choices")
