"""GET /v1/accounts/{id}/billingUsage: metered usage per day, grouped by model or API key."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Query, Request

from ember.errors import InvalidRequest
from ember.gateway.wire import parse_time
from ember.http.deps import GatewayAuth, StateDep
from ember.store.ids import rfc3339
from ember.store.usage import daily_usage, next_day

router = APIRouter(tags=["gateway"])

GROUPS = ("model_name", "api_key_id")
MAX_WINDOW = timedelta(days=31)
_AIP_FILTER = re.compile(r'\s*(model_name|api_key_id)\s*=\s*"([^"\\]*)"\s*')
_USAGE_TYPES = ("USAGE_TYPE_UNSPECIFIED", "SERVERLESS", "DEDICATED_DEPLOYMENT")


def _filters(request: Request) -> dict[str, list[str]]:
    """`filter[model_name]=a&filter[model_name]=b&filter[api_key_id]=k` (values OR'ed, keys AND'ed), or
    the AIP form `filter=model_name="a"`."""
    out: dict[str, list[str]] = {}
    for k, v in request.query_params.multi_items():
        if k.startswith("filter[") and k.endswith("]"):
            name = k[7:-1]
            if name not in GROUPS:
                raise InvalidRequest(f"cannot filter on {name[:40]!r}; use {' or '.join(GROUPS)}", param="filter")
            out.setdefault(name, []).append(v)
        elif k == "filter" and v.strip():
            m = _AIP_FILTER.fullmatch(v)
            if m is None:
                raise InvalidRequest('unsupported filter; use filter[model_name]=… or model_name="…"',
                                     param="filter")
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


@router.get("/v1/accounts/{account_id}/billingUsage")
async def billing_usage(account_id: str, request: Request, state: StateDep, p: GatewayAuth,
                        start_time: str | None = Query(None, alias="startTime", max_length=64),
                        end_time: str | None = Query(None, alias="endTime", max_length=64),
                        usage_type: str | None = Query(None, alias="usageType", max_length=64),
                        timezone: str | None = Query(None, max_length=64),
                        group_by: Annotated[list[str] | None, Query(alias="groupBy")] = None) -> dict:
    start = parse_time(start_time, "startTime")
    end = parse_time(end_time, "endTime")
    assert start is not None and end is not None
    if end <= start:
        raise InvalidRequest("endTime must be after startTime", param="endTime")
    if end - start > MAX_WINDOW:
        raise InvalidRequest("the window from startTime to endTime is at most 31 days", param="endTime")
    if usage_type is not None and usage_type not in _USAGE_TYPES:
        raise InvalidRequest(f"usageType must be one of {', '.join(_USAGE_TYPES)}", param="usageType")
    try:
        tz = ZoneInfo(timezone) if timezone else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest("timezone must be an IANA zone name such as Europe/Paris", param="timezone") from None
    groups = [g for g in group_by or [] if g]
    if len(groups) > 1 or any(g not in GROUPS for g in groups):
        raise InvalidRequest(f"groupBy takes at most one of {', '.join(GROUPS)}", param="groupBy")
    filters = _filters(request)
    if usage_type == "DEDICATED_DEPLOYMENT":
        return {"serverlessCosts": [], "dedicatedCosts": []}
    platform = state.platform
    await asyncio.to_thread(platform.meter.flush)  # read-your-writes: what has returned is counted
    rows = await asyncio.to_thread(daily_usage, platform.store, account_id, start.replace(tzinfo=UTC),
                                   end.replace(tzinfo=UTC), tz, groups[0] if groups else None, filters)
    costs = []
    for r in rows:
        group = dict(r.group)
        item: dict = {"promptTokens": str(r.prompt_tokens), "completionTokens": str(r.completion_tokens),
                      "startTime": rfc3339(r.day_start.astimezone(UTC).replace(tzinfo=None)),
                      "endTime": rfc3339(next_day(r.day_start).astimezone(UTC).replace(tzinfo=None)),
                      "usageType": r.usage_type, "group": group}
        if "model_name" in group:
            item["modelName"] = group["model_name"]
        if "api_key_id" in group:
            item["apiKeyId"] = group["api_key_id"]
        costs.append(item)
    return {"serverlessCosts": costs, "dedicatedCosts": []}
