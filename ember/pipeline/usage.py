"""What a request used, counted from the engine's outputs as they arrive: the one source of the usage that
responses report, rate limits settle against and metering records."""

from __future__ import annotations

from dataclasses import dataclass

from ember.engine.request import RequestOutput
from ember.pipeline.plan import Plan


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


class Tally:
    """Each choice's latest totals; the request's usage over them."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        choices = len(plan.requests)
        self._cached = [0] * choices
        self._output = [0] * choices
        self._running = choices

    def add(self, choice: int, out: RequestOutput) -> None:
        self._cached[choice] = out.num_cached_tokens
        self._output[choice] = out.num_output_tokens
        if out.finished:
            self._running -= 1

    @property
    def finished(self) -> bool:
        """Every choice has finished."""
        return self._running == 0

    def usage(self) -> Usage:
        # Choices of one prompt share its cached prefix: count it once, from the prompt's first choice.
        n = self.plan.n
        cached = sum(self._cached[i * n] for i in range(len(self.plan.prompts)))
        return Usage(self.plan.prompt_tokens, cached, sum(self._output))
