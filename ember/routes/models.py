"""GET /v1/models and /v1/models/{id}, in OpenAI's list shape with what Fireworks' listing tells a client."""

from __future__ import annotations

from fastapi import APIRouter

from ember.http.deps import InferenceAuth, ServedModel, StateDep, resolve_served

router = APIRouter()


def _card(m: ServedModel) -> dict:
    return {
        "id": m.model_id, "object": "model", "created": m.created, "owned_by": "ember",
        # The window a prompt plus its completion must fit in, so a client can budget before sending.
        "context_length": m.max_model_len,
        "supports_chat": m.chat_template is not None,
        # ember parses no tool calls and reads text only, whatever the template could render.
        "supports_tools": False,
        "supports_image_input": False,
    }


@router.get("/v1/models")
async def list_models(state: StateDep, _: InferenceAuth) -> dict:
    return {"object": "list", "data": [_card(state.model)]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, state: StateDep, _: InferenceAuth) -> dict:
    return _card(resolve_served(state, model_id))
