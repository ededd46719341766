"""GET /v1/models and /v1/models/{id}, in OpenAI's list shape with what Fireworks' listing tells a client."""

from __future__ import annotations

from fastapi import APIRouter

from ember.http.deps import AppState, InferenceAuth, ServedModel, StateDep, resolve_served

router = APIRouter()


def _card(state: AppState, m: ServedModel) -> dict:
    return {
        "id": m.model_id, "object": "model", "created": m.created, "owned_by": "ember",
        # The window a prompt plus its completion must fit in, so a client can budget before sending.
        "context_length": m.max_model_len,
        # The network the engine runs (`general.architecture` of a GGUF): "llama", "gemma3".
        "architecture": state.client.engine.runner.model.args.arch,
        "supports_chat": m.chat_template is not None,
        # Every chat model takes tools: through its template when that renders them, otherwise through
        # ember's generic tool prompt, with the calls grammar-constrained either way.
        "supports_tools": m.chat_template is not None,
        "supports_image_input": False,
    }


@router.get("/v1/models")
async def list_models(state: StateDep, _: InferenceAuth) -> dict:
    return {"object": "list", "data": [_card(state, state.model)]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, state: StateDep, _: InferenceAuth) -> dict:
    return _card(state, resolve_served(state, model_id))
