"""GET /v1/models and /v1/models/{id}, in OpenAI's list shape."""

from __future__ import annotations

from fastapi import APIRouter

from ember.api.deps import InferenceAuth, StateDep, resolve_served

router = APIRouter()


def _card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "ember"}


@router.get("/v1/models")
async def list_models(state: StateDep, _: InferenceAuth) -> dict:
    m = state.model
    return {"object": "list", "data": [_card(m.model_id, m.created)]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, state: StateDep, _: InferenceAuth) -> dict:
    m = resolve_served(state, model_id)
    return _card(m.model_id, m.created)
