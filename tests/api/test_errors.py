"""Bad input gets a clear 4xx naming the field, in the shape the openai SDK reads; never a 500 or a hang."""

from __future__ import annotations

import dataclasses

import httpx
import openai
import pytest

from tests.conftest import MODEL_ID, LiveServer, server_config

OK = {"model": MODEL_ID, "prompt": "Hello", "max_tokens": 1}


def post(server, body: object, **kw: object) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions", json=body, timeout=60, **kw)


@pytest.mark.parametrize(("patch", "param"), [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 101}, "top_k"),
    ({"min_p": -1}, "min_p"),
    ({"typical_p": 2}, "typical_p"),
    ({"frequency_penalty": 2.1}, "frequency_penalty"),
    ({"presence_penalty": -3}, "presence_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"n": 0}, "n"),
    ({"n": 129}, "n"),
    ({"n": None}, "n"),
    ({"ignore_eos": None}, "ignore_eos"),
    ({"context_length_exceeded_behavior": None}, "context_length_exceeded_behavior"),
    ({"context_length_exceeded_behavior": "drop"}, "context_length_exceeded_behavior"),
    ({"service_tier": None}, "service_tier"),
    ({"logprobs": 6}, "logprobs"),
    ({"logprobs": -1}, "logprobs"),
    ({"top_logprobs": 6}, "top_logprobs"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 4, "max_completion_tokens": 4}, "max_completion_tokens"),
    ({"reasoning_effort": "low", "thinking": {"type": "disabled"}}, "thinking"),
    ({"thinking": {"type": "enabled", "budget_tokens": 10}}, "thinking.budget_tokens"),
    ({"echo": "yes"}, "echo"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [-5]}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"best_of": 2}, "best_of"),
    ({"suffix": "x"}, "suffix"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
])
def test_schema_violation_is_422_naming_the_field(smol_server, patch: dict, param: str) -> None:
    r = post(smol_server, OK | patch)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"]["param"] == param
    assert body["error"]["type"] == "invalid_request_error"
    assert param.split(".")[-1] in body["error"]["message"]
    assert isinstance(body["detail"], list) and body["detail"]
    assert all({"loc", "msg", "type"} <= set(d) for d in body["detail"])


def test_missing_prompt_and_bad_json(smol_server) -> None:
    r = post(smol_server, {"model": MODEL_ID})
    assert r.status_code == 422 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(smol_server.url + "/v1/completions", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]


def test_accepted_variants(smol_server) -> None:
    for patch in ({"stream_options": {"include_usage": True}}, {"logprobs": True}, {"logprobs": 0},
                  {"reasoning_effort": "none"}, {"reasoning_effort": False}, {"thinking": {"type": "disabled"}},
                  {"service_tier": "priority"}, {"service_tier": "flex"}, {"metadata": {"a": "b"}},
                  {"user": "u1", "prompt_cache_key": "k"}, {"max_completion_tokens": 1},
                  {"stop": "x"}, {"stop": None}, {"temperature": 0}, {"prompt": [1, 2, 3]},
                  {"prompt": [[1, 2], [3]]}, {"prompt": ["a", "b"]},
                  {"seed": 2**64 - 1, "temperature": 1.0}, {"seed": -(2**63), "temperature": 1.0}):
        body = OK | patch
        if "max_completion_tokens" in patch:
            del body["max_tokens"]
        r = post(smol_server, body)
        assert r.status_code == 200, (patch, r.text)


def test_sdk_maps_errors_to_exceptions(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as ei:
        openai_client.completions.create(model=MODEL_ID, prompt="x", temperature=5)
    assert ei.value.param == "temperature" and ei.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as nf:
        openai_client.completions.create(model="accounts/fireworks/models/nope", prompt="x")
    assert nf.value.code == "model_not_found" and nf.value.param == "model"
    with pytest.raises(openai.BadRequestError) as br:
        openai_client.completions.create(model=MODEL_ID, prompt=[10**7])
    assert br.value.param == "prompt"


def test_semantic_errors_are_400(smol_server) -> None:
    r = post(smol_server, OK | {"images": ["aGVsbG8="]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "images"
    r = post(smol_server, OK | {"reasoning_effort": "high"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning_effort"
    r = post(smol_server, OK | {"logit_bias": {"999999999": 3}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"


@pytest.fixture(scope="module")
def short_server(smol_served):
    """The real model with a 64-token context window, so context limits are cheap to reach."""
    cfg = server_config()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, max_model_len=64))
    with LiveServer(cfg, smol_served) as s:
        yield s


def test_context_length_error_and_truncate(short_server) -> None:
    smol_server = short_server
    limit = smol_server.engine.max_model_len
    assert limit == 64
    long_prompt = [42] * (limit - 4)
    r = post(smol_server, {"model": MODEL_ID, "prompt": long_prompt, "max_tokens": 100,
                           "context_length_exceeded_behavior": "error"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    r = post(smol_server, {"model": MODEL_ID, "prompt": long_prompt, "max_tokens": 100, "temperature": 0,
                           "ignore_eos": True})
    assert r.status_code == 200
    body = r.json()
    assert body["usage"]["completion_tokens"] == 4
    assert body["choices"][0]["finish_reason"] == "length"
    r = post(smol_server, {"model": MODEL_ID, "prompt": [42] * (limit + 1), "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_unknown_route_and_method(smol_server) -> None:
    r = httpx.get(smol_server.url + "/v1/nothing", timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(smol_server.url + "/v1/completions", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
