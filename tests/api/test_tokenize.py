"""POST /tokenize and /detokenize (vLLM's shapes) and the /v1/models card, on the real model."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import MODEL_ID

ASK = [{"role": "user", "content": "What is the capital of France?"}]


def post(server, path: str, **body: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def test_tokenize_prompt_round_trips(smol_server) -> None:
    tok = smol_server.app.state.ember.model.tokenizer
    text = "Hello, wörld! 12345"
    r = post(smol_server, "/tokenize", model=MODEL_ID, prompt=text, return_token_strs=True).json()
    assert r["tokens"] == tok.encode(text) and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == smol_server.engine.max_model_len
    assert "".join(r["token_strs"]) == text
    assert post(smol_server, "/detokenize", model=MODEL_ID, tokens=r["tokens"]).json() == {"prompt": text}
    assert "token_strs" not in post(smol_server, "/tokenize", prompt=text).json()  # model is optional


def test_tokenize_messages_counts_what_chat_prompts(smol_server) -> None:
    r = post(smol_server, "/tokenize", model=MODEL_ID, messages=ASK).json()
    chat = post(smol_server, "/v1/chat/completions", model=MODEL_ID, messages=ASK, max_tokens=1,
                return_token_ids=True).json()
    assert r["tokens"] == chat["prompt_token_ids"] and r["count"] == chat["usage"]["prompt_tokens"]
    bare = post(smol_server, "/tokenize", messages=ASK, add_generation_prompt=False).json()
    assert r["tokens"][:bare["count"]] == bare["tokens"] and bare["count"] < r["count"]


def test_tokenize_errors_name_the_field(smol_server) -> None:
    r = post(smol_server, "/detokenize", tokens=[10**9])
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
    r = post(smol_server, "/detokenize", tokens=[-1])
    assert r.status_code == 422 and r.json()["error"]["param"] == "tokens"
    r = post(smol_server, "/tokenize", model="nope", prompt="x")
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    r = post(smol_server, "/tokenize", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}])
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.content"


def test_models_card_tells_the_context_window(openai_client, smol_server) -> None:
    card = openai_client.models.retrieve(MODEL_ID)
    assert card.model_extra["context_length"] == smol_server.engine.max_model_len > 0
    listed = httpx.get(smol_server.url + "/v1/models", timeout=10).json()["data"][0]
    assert listed["id"] == MODEL_ID
    assert listed["supports_chat"] is True
    # Every chat model takes tools (the generic tool prompt where the template has none); text only.
    assert listed["supports_tools"] is True and listed["supports_image_input"] is False
    assert listed["architecture"] == "llama"
    assert card.model_extra["supports_tools"] is True


def test_openapi_documents_both_endpoints_and_their_chunks(smol_server) -> None:
    doc = httpx.get(smol_server.url + "/openapi.json", timeout=10).json()
    schemas = doc["components"]["schemas"]
    for name in ("CompletionResponse", "CompletionChunk", "ChatCompletionResponse", "ChatCompletionChunk",
                 "ChatCompletionRequest", "DeltaMessage", "ChatStreamChoice"):
        assert name in schemas, name
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert chat["application/json"]["schema"]["$ref"].endswith("/ChatCompletionResponse")
    assert chat["text/event-stream"]["schema"]["$ref"].endswith("/ChatCompletionChunk")
    cmpl = doc["paths"]["/v1/completions"]["post"]["responses"]["200"]["content"]
    assert cmpl["text/event-stream"]["schema"]["$ref"].endswith("/CompletionChunk")
    assert "/tokenize" in doc["paths"] and "/detokenize" in doc["paths"]
    assert httpx.get(smol_server.url + "/docs", timeout=10).status_code == 200
