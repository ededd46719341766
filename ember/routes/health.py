"""GET /health and GET /metrics (Prometheus text format).

/health is honest: 200 only while the engine loop is alive, has stepped recently whenever work is pending,
and the server is not draining for shutdown. A wedged loop (work pending, no step for the stall timeout)
and a dead one both answer 503, so that a liveness probe restarts the process instead of routing requests
into it to hang.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ember.http.deps import AppState, StateDep

router = APIRouter()


def health_status(state: AppState) -> tuple[str, float]:
    """("ok" | "dead" | "stalled" | "draining", seconds the loop has gone without stepping on pending work)."""
    stalled = state.client.stalled_for()
    if not state.client.alive:
        return "dead", stalled
    if stalled > state.stall_timeout_s:
        return "stalled", stalled
    if state.draining:
        return "draining", stalled
    return "ok", stalled


@router.get("/health")
async def health(state: StateDep) -> JSONResponse:
    s = state.client.stats()
    status, stalled = health_status(state)
    body = {"status": status, "model": state.model.model_id,
            "running": s.num_running, "waiting": s.num_waiting,
            "kv_blocks_used": s.kv_blocks_used, "kv_blocks_free": s.kv_blocks_free,
            "stalled_seconds": round(stalled, 3)}
    if status == "dead" and state.client.died_of is not None:
        body["error"] = f"the engine loop died: {type(state.client.died_of).__name__}"
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


@router.get("/metrics")
async def metrics(request: Request, state: StateDep) -> Response:
    request.app.state.metrics.observe_stats(state.client.stats())
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
