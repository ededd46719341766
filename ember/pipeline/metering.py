"""The one place a request's usage is metered: one settle call per request, whatever its endpoint."""

from __future__ import annotations

from ember.pipeline.events import Result
from ember.store.usage import UsageMeter


def settle(meter: UsageMeter, result: Result) -> None:
    """Record a served request's usage (who, usage, kind); one that never ran counts nothing."""
    if not result.served:
        return
    u = result.usage
    meter.record(result.caller.account_id, result.caller.key_id, result.model, u.prompt_tokens,
                 u.cached_tokens, u.completion_tokens, usage_type=str(result.kind))
