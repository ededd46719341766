"""GET /health and GET /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ember.api.deps import StateDep

router = APIRouter()


@router.get("/health")
async def health(state: StateDep) -> JSONResponse:
    s = state.client.stats()
    ok = state.client.alive
    body = {"status": "ok" if ok else "unavailable", "model": state.model.model_id,
            "running": s.num_running, "waiting": s.num_waiting,
            "kv_blocks_used": s.kv_blocks_used, "kv_blocks_free": s.kv_blocks_free}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request, state: StateDep) -> Response:
    request.app.state.metrics.observe_stats(state.client.stats())
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
