"""Quotas (GET / PATCH under /v1/accounts/{id}/quotas) and GET serverlessRateLimits."""

from __future__ import annotations

from fastapi import APIRouter, Query

from ember.errors import InvalidRequest, PermissionDenied
from ember.gateway.protocol import QuotaBody
from ember.gateway.wire import list_response, quota_json
from ember.http.audit import GatewayChange
from ember.http.deps import GatewayAuth, StateDep
from ember.store.quotas import CACHE_ADJUSTED_PROMPT, GENERATED, PROMPT, check_quota_id

router = APIRouter(tags=["gateway"])

_METRICS = ((PROMPT, "TOKENS_PROMPT"), (CACHE_ADJUSTED_PROMPT, "TOKENS_CACHE_ADJUSTED_PROMPT"),
            (GENERATED, "TOKENS_GENERATED"))
UNSET_PER_S = 1_000_000.0


def _int64(v: int | str | None, param: str) -> int | None:
    if v is None:
        return None
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{param} must be an integer (an int64 string)", param=param) from None
    if not 0 <= n < 2**63:
        raise InvalidRequest(f"{param} must be in 0..2^63-1", param=param)
    return n


@router.get("/v1/accounts/{account_id}/quotas")
async def list_quotas(account_id: str, state: StateDep, p: GatewayAuth,
                      page_size: int | None = Query(None, alias="pageSize"),
                      page_token: str | None = Query(None, alias="pageToken", max_length=512),
                      filter: str | None = Query(None, max_length=512),
                      order_by: str | None = Query(None, alias="orderBy", max_length=256)) -> dict:
    items = [quota_json(account_id, q, 0.0) for q in state.platform.quotas.list(account_id)]
    return list_response("quotas", items, page_size, page_token, filter, order_by, ("name", "value", "maxValue"))


@router.get("/v1/accounts/{account_id}/quotas/{quota_id}")
async def get_quota(account_id: str, quota_id: str, state: StateDep, p: GatewayAuth) -> dict:
    return quota_json(account_id, state.platform.quotas.get(account_id, check_quota_id(quota_id)), 0.0)


@router.patch("/v1/accounts/{account_id}/quotas/{quota_id}")
async def update_quota(account_id: str, quota_id: str, body: QuotaBody, state: StateDep, p: GatewayAuth,
                       change: GatewayChange, allow_missing: bool = Query(False, alias="allowMissing")) -> dict:
    change.note(value=body.value, maxValue=body.maxValue)
    p.require_admin()
    check_quota_id(quota_id)
    value = _int64(body.value, "value")
    if value is None:
        raise InvalidRequest("value is required", param="value")
    max_value = _int64(body.maxValue, "maxValue")
    quotas = state.platform.quotas
    if max_value is not None:
        current = quotas.list(account_id)
        cap = next((q.max_value for q in current if q.quota_id == quota_id), None)
        if max_value != cap:
            raise PermissionDenied("maxValue is set by the server's operator (ember accounts set-quota)")
    q = quotas.set_value(account_id, quota_id, value, allow_missing, audit=change)
    state.platform.limiter.invalidate()
    return quota_json(account_id, q, 0.0)


@router.get("/v1/accounts/{account_id}/serverlessRateLimits")
async def serverless_rate_limits(account_id: str, state: StateDep, p: GatewayAuth,
                                 deployment: str | None = Query(None, max_length=255)) -> dict:
    model = state.model.model_id
    if deployment and not state.model.answers_to(deployment):
        return {"rateLimits": [], "series": []}
    eff = state.platform.limiter.effective(account_id)
    limits = [{"deployment": model, "metric": metric,
               "effectiveLimit": eff[q] if eff[q] is not None else UNSET_PER_S} for q, metric in _METRICS]
    return {"rateLimits": limits, "series": []}
