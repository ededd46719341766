"""Refusing a long prompt that would wait behind too much long-prompt prefill.

Long prompts (longer than one step's budget) are prefilled oldest first and, while other work shares the
step, at a capped share of it (see the scheduler), so a long prompt arriving behind others waits for all of
them: on a CPU that is minutes, past any client's patience and with its connection held all the while.
The engine refuses it up front instead, with 503 and a retry-after of when the backlog should have cleared.
The check runs on the engine thread as the request is added, so two long prompts arriving together both
see each other (a snapshot read by the API could be one step old).
"""

from __future__ import annotations

import math

from ember.errors import Overloaded


def refuse_long_prompt(prompt_lengths: list[int], long_threshold: int, backlog_tokens: int,
                       tokens_per_s: float, bound_s: float) -> Overloaded | None:
    """The error to answer a submission of prompts of these lengths with, or None to take it.

    Only its long prompts (more than `long_threshold` tokens, as the scheduler counts them) wait behind the
    backlog; the others pass it. `backlog_tokens`: what the long prompts already admitted have still to
    compute; `tokens_per_s`: the measured prefill rate (0: not measured yet, take it). A submission with no
    long prompt, or with nothing ahead of it, is always taken.
    """
    prompt_tokens = sum(n for n in prompt_lengths if n > long_threshold)
    if prompt_tokens == 0 or backlog_tokens <= 0 or tokens_per_s <= 0:
        return None
    eta = (backlog_tokens + prompt_tokens) / tokens_per_s
    if eta <= bound_s:
        return None
    return Overloaded(f"the server is busy with {backlog_tokens} tokens of long prompts; this one would wait "
                      f"about {eta:.0f} s for its prefill (bound {bound_s:.0f} s); retry later",
                      retry_after=min(60, max(1, math.ceil(backlog_tokens / tokens_per_s))))
