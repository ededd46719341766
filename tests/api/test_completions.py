"""The real model through a real uvicorn server on 127.0.0.1, with the official openai SDK as client."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import MODEL_ID

PROMPT = "The capital of France is"


def test_non_stream(openai_client: openai.OpenAI) -> None:
    r = openai_client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=16, temperature=0)
    assert r.object == "text_completion" and r.id and r.created > 0
    assert r.model == MODEL_ID
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0 and c.finish_reason in ("stop", "length")
    assert "Paris" in c.text
    assert r.usage is not None
    assert r.usage.prompt_tokens == 5
    assert 0 < r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_short_name_answers_too(openai_client: openai.OpenAI) -> None:
    r = openai_client.completions.create(model="smollm2-135m-instruct", prompt=PROMPT, max_tokens=4,
                                         temperature=0)
    assert r.model == MODEL_ID


def test_stream_concatenates_to_non_stream(openai_client: openai.OpenAI) -> None:
    full = openai_client.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=64,
                                            temperature=0)
    chunks = list(openai_client.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=64,
                                                   temperature=0, stream=True))
    assert len(chunks) > 3
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and chunks[-1].usage is not None
    assert usage[0].completion_tokens == full.usage.completion_tokens


def test_stream_wire_format_ends_with_done(smol_server) -> None:
    body = {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 8, "stream": True, "temperature": 0}
    with httpx.stream("POST", smol_server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    assert all(ln.startswith("data: ") for ln in lines)


def test_models_list(openai_client: openai.OpenAI) -> None:
    models = openai_client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert models.data[0].object == "model"


def test_health_and_metrics(smol_server) -> None:
    assert httpx.get(smol_server.url + "/health").json()["status"] == "ok"
    text = httpx.get(smol_server.url + "/metrics").text
    for name in ("ember_requests_running", "ember_kv_blocks_free", "ember_prefix_cache_hit_rate",
                 "ember_generated_tokens_total", "ember_time_to_first_token_seconds_bucket"):
        assert name in text


def test_bad_body_is_422_with_error_object(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as ei:
        openai_client.completions.create(model=MODEL_ID, prompt=PROMPT, temperature=5)
    assert ei.value.status_code == 422
    body = ei.value.response.json()
    assert body["detail"][0]["loc"][-1] == "temperature"
    assert body["error"]["param"] == "temperature"


def test_unknown_model_is_404(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        openai_client.completions.create(model="accounts/fireworks/models/nope", prompt=PROMPT)


def test_concurrent_requests(openai_client: openai.OpenAI) -> None:
    from concurrent.futures import ThreadPoolExecutor

    prompts = [f"Count from {i}:" for i in range(6)]
    solo = [openai_client.completions.create(model=MODEL_ID, prompt=p, max_tokens=12, temperature=0)
            .choices[0].text for p in prompts]
    with ThreadPoolExecutor(6) as ex:
        together = list(ex.map(lambda p: openai_client.completions.create(
            model=MODEL_ID, prompt=p, max_tokens=12, temperature=0).choices[0].text, prompts))
    assert together == solo
