"""Every CompletionRequest parameter through HTTP on the real model, with the official SDKs as clients."""

from __future__ import annotations

import concurrent.futures as cf
import json
from collections import defaultdict

import httpx
import openai
import pytest

from tests.conftest import MODEL_ID

PROMPT = "The capital of France is"
STORY = "Once upon a time"


def post(server, **body: object) -> dict:
    r = httpx.post(server.url + "/v1/completions", json={"model": MODEL_ID} | body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def stream(server, **body: object) -> list[dict]:
    out = []
    with httpx.stream("POST", server.url + "/v1/completions", json={"model": MODEL_ID, "stream": True} | body,
                      timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


def tokenizer(server):
    return server.app.state.ember.model.tokenizer


# -- prompts, n, choice order ----------------------------------------------------------------------

def test_prompt_forms_and_choice_order(smol_server) -> None:
    tok = tokenizer(smol_server)
    ids = tok.encode(PROMPT)
    as_text = post(smol_server, prompt=PROMPT, max_tokens=6, temperature=0)
    as_ids = post(smol_server, prompt=ids, max_tokens=6, temperature=0)
    assert as_ids["choices"][0]["text"] == as_text["choices"][0]["text"]
    many = post(smol_server, prompt=[PROMPT, STORY], n=2, max_tokens=6, temperature=0)
    assert [c["index"] for c in many["choices"]] == [0, 1, 2, 3]
    texts = [c["text"] for c in many["choices"]]
    assert texts[0] == texts[1] == as_text["choices"][0]["text"]  # prompt 0's choices come first
    assert texts[2] == texts[3] != texts[0]
    assert many["usage"]["prompt_tokens"] == len(ids) + len(tok.encode(STORY))
    id_lists = post(smol_server, prompt=[ids, tok.encode(STORY)], max_tokens=6, temperature=0)
    assert [c["text"] for c in id_lists["choices"]] == [texts[0], texts[2]]


def test_too_many_choices_is_400(smol_server) -> None:
    r = httpx.post(smol_server.url + "/v1/completions", timeout=30,
                   json={"model": MODEL_ID, "prompt": ["a", "b"], "n": 100, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"


def test_n_samples_differ_and_repeat_with_seed(openai_client: openai.OpenAI) -> None:
    kw = dict(model=MODEL_ID, prompt=STORY, max_tokens=12, n=3, temperature=1.0, seed=1234)
    a = [c.text for c in openai_client.completions.create(**kw).choices]
    b = [c.text for c in openai_client.completions.create(**kw).choices]
    assert a == b
    assert len(set(a)) > 1


# -- lengths and stopping ---------------------------------------------------------------------------

def test_default_max_tokens_is_16_and_alias(smol_server) -> None:
    r = post(smol_server, prompt=STORY, temperature=0, ignore_eos=True)
    assert r["usage"]["completion_tokens"] == 16 and r["choices"][0]["finish_reason"] == "length"
    r = post(smol_server, prompt=STORY, temperature=0, ignore_eos=True, max_completion_tokens=5)
    assert r["usage"]["completion_tokens"] == 5


SHORT_ANSWER = "Reply with one word: yes or no."
"""The served model ends its answer to this after 9 tokens at temperature 0 (a prompt's greedy length moves
with the kernels' rounding: "Say OK." stopped early on torch's int4 path and runs on with ember's own)."""


def test_ignore_eos_runs_to_max_tokens(smol_server) -> None:
    base = post(smol_server, prompt=SHORT_ANSWER, max_tokens=64, temperature=0)
    assert base["choices"][0]["finish_reason"] == "stop"  # this prompt ends well before 64 tokens
    r = post(smol_server, prompt=SHORT_ANSWER, max_tokens=64, temperature=0, ignore_eos=True)
    assert r["usage"]["completion_tokens"] == 64 and r["choices"][0]["finish_reason"] == "length"


def test_stop_across_token_boundaries_stream_and_not(smol_server) -> None:
    full = post(smol_server, prompt=STORY, max_tokens=40, temperature=0, ignore_eos=True)["choices"][0]["text"]
    stop = full[10:17]  # seven characters from the middle, whatever tokens they straddle
    want = full[: full.index(stop)]
    r = post(smol_server, prompt=STORY, max_tokens=40, temperature=0, ignore_eos=True, stop=[stop, "zzzz"])
    assert r["choices"][0]["text"] == want and r["choices"][0]["finish_reason"] == "stop"
    chunks = stream(smol_server, prompt=STORY, max_tokens=40, temperature=0, ignore_eos=True, stop=stop)
    assert "".join(c["choices"][0]["text"] for c in chunks) == want
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# -- sampling parameters ----------------------------------------------------------------------------

def test_filters_that_reduce_to_greedy(smol_server) -> None:
    greedy = post(smol_server, prompt=STORY, max_tokens=12, temperature=0)["choices"][0]["text"]
    for kw in ({"top_k": 1}, {"top_p": 0.0}, {"min_p": 1.0}):
        r = post(smol_server, prompt=STORY, max_tokens=12, temperature=1.5, seed=7, **kw)
        assert r["choices"][0]["text"] == greedy, kw


@pytest.mark.parametrize("kw", [{"top_k": 40}, {"top_p": 0.9}, {"min_p": 0.05}, {"typical_p": 0.8},
                                {"mirostat_target": 3.0, "mirostat_lr": 0.2}, {"temperature": 0.7}])
def test_sampling_is_seeded_and_batch_invariant(smol_server, kw: dict) -> None:
    body = {"prompt": STORY, "max_tokens": 16, "seed": 99, "temperature": 1.0} | kw
    alone = post(smol_server, **body)["choices"][0]["text"]
    # The same request again, now sharing the batch with other work.
    with httpx.Client(timeout=120) as c:
        others = [c.build_request("POST", smol_server.url + "/v1/completions",
                                  json={"model": MODEL_ID, "prompt": f"Noise {i}", "max_tokens": 16})
                  for i in range(3)]
        with cf.ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(c.send, r) for r in others]
            again = post(smol_server, **body)["choices"][0]["text"]
            for f in futs:
                assert f.result().status_code == 200
    assert again == alone


def test_penalties_change_a_repetitive_greedy_output(smol_server) -> None:
    prompt = "cat dog cat dog cat dog cat dog"
    base = post(smol_server, prompt=prompt, max_tokens=12, temperature=0, ignore_eos=True)["choices"][0]
    assert base["text"].count("dog") >= 8  # greedy decoding loops on " dog"
    for kw in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repetition_penalty": 2.0}):
        r = post(smol_server, prompt=prompt, max_tokens=12, temperature=0, ignore_eos=True, **kw)["choices"][0]
        assert r["text"] != base["text"], kw
        assert r["text"].count("dog") < base["text"].count("dog"), kw


def test_logit_bias_forces_and_bans(smol_server) -> None:
    tok = tokenizer(smol_server)
    forced = tok.encode(" banana")[0]
    r = post(smol_server, prompt=PROMPT, max_tokens=3, temperature=0, logit_bias={str(forced): 100},
             return_token_ids=True)
    assert r["choices"][0]["token_ids"] == [forced] * 3
    greedy = post(smol_server, prompt=PROMPT, max_tokens=1, temperature=0, return_token_ids=True)
    first = greedy["choices"][0]["token_ids"][0]
    banned = post(smol_server, prompt=PROMPT, max_tokens=1, temperature=0, logit_bias={str(first): -100},
                  return_token_ids=True)
    assert banned["choices"][0]["token_ids"][0] != first


# -- logprobs and echo ------------------------------------------------------------------------------

def test_legacy_logprobs_shape(smol_server) -> None:
    r = post(smol_server, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    lp = r["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset", "token_ids"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    assert "".join(lp["tokens"]) == r["choices"][0]["text"]
    for top, chosen_lp, t in zip(lp["top_logprobs"], lp["token_logprobs"], lp["tokens"], strict=True):
        assert 3 <= len(top) <= 4 and t in top and top[t] == chosen_lp
        assert chosen_lp == max(top.values())  # greedy picks the most likely
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    zero = post(smol_server, prompt=PROMPT, max_tokens=2, temperature=0, logprobs=0)["choices"][0]["logprobs"]
    assert all(len(t) == 1 for t in zero["top_logprobs"])


def test_new_logprobs_shape(openai_client: openai.OpenAI) -> None:
    r = openai_client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=4, temperature=0,
                                         logprobs=True, extra_body={"top_logprobs": 2})
    content = r.choices[0].logprobs.model_extra["content"]
    assert len(content) == 4
    for c in content:
        assert {"token", "logprob", "sampling_logprob", "bytes", "token_id", "text_offset",
                "top_logprobs"} <= set(c)
        assert len(c["top_logprobs"]) == 2 and c["top_logprobs"][0]["token_id"] == c["token_id"]
        assert bytes(c["bytes"]).decode("utf-8", "replace")
    assert "".join(c["token"] for c in content) == r.choices[0].text


def test_echo_with_max_tokens_zero_is_the_scoring_path(smol_server) -> None:
    tok = tokenizer(smol_server)
    ids = tok.encode(PROMPT)
    r = post(smol_server, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1, temperature=0)
    c = r["choices"][0]
    assert c["text"] == PROMPT and c["finish_reason"] == "length"
    lp = c["logprobs"]
    assert lp["token_ids"] == ids and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(isinstance(x, float) and x <= 0 for x in lp["token_logprobs"][1:])
    assert r["usage"]["completion_tokens"] == 0
    last = post(smol_server, prompt=PROMPT, max_tokens=0, echo_last=2, logprobs=0)["choices"][0]
    assert last["logprobs"]["token_ids"] == ids[-2:]
    assert last["logprobs"]["token_logprobs"] == lp["token_logprobs"][-2:]
    assert last["text"] == tok.decode(ids[-2:])


def test_echo_then_generation(smol_server) -> None:
    r = post(smol_server, prompt=PROMPT, max_tokens=4, echo=True, logprobs=1, temperature=0)
    c = r["choices"][0]
    gen = post(smol_server, prompt=PROMPT, max_tokens=4, temperature=0)["choices"][0]["text"]
    assert c["text"] == PROMPT + gen
    n_prompt = r["usage"]["prompt_tokens"]
    assert len(c["logprobs"]["tokens"]) == n_prompt + 4
    offs = c["logprobs"]["text_offset"]
    assert offs[n_prompt] == len(PROMPT)  # generated offsets continue after the echoed prompt


# -- token ids, raw output, perf metrics, headers ---------------------------------------------------

def test_return_token_ids(smol_server) -> None:
    ids = tokenizer(smol_server).encode(PROMPT)
    r = post(smol_server, prompt=PROMPT, max_tokens=6, temperature=0, return_token_ids=True)
    c = r["choices"][0]
    assert c["prompt_token_ids"] == ids and len(c["token_ids"]) == r["usage"]["completion_tokens"]
    chunks = stream(smol_server, prompt=PROMPT, max_tokens=6, temperature=0, return_token_ids=True)
    with_prompt = [ch for ch in chunks if "prompt_token_ids" in ch["choices"][0]]
    assert len(with_prompt) == 1 and with_prompt[0] is chunks[0]
    assert [t for ch in chunks for t in ch["choices"][0]["token_ids"]] == c["token_ids"]


def test_raw_output(smol_server) -> None:
    r = post(smol_server, prompt=PROMPT, max_tokens=4, temperature=0, raw_output=True, logprobs=1)
    raw = r["choices"][0]["raw_output"]
    assert raw["prompt_fragments"] == [PROMPT]
    assert raw["prompt_token_ids"] == tokenizer(smol_server).encode(PROMPT)
    assert raw["completion"] == r["choices"][0]["text"]
    assert len(raw["completion_token_ids"]) == 4
    assert len(raw["completion_logprobs"]["content"]) == 4


def test_perf_metrics_and_headers(smol_server) -> None:
    resp = httpx.post(smol_server.url + "/v1/completions", timeout=60,
                      json={"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 4, "perf_metrics_in_response": True})
    body = resp.json()
    keys = {"prompt-tokens", "cached-prompt-tokens", "server-time-to-first-token", "server-processing-time"}
    assert keys <= set(body["perf_metrics"])
    assert body["perf_metrics"]["prompt-tokens"] == body["usage"]["prompt_tokens"]
    for k in keys:
        assert f"fireworks-{k}" in resp.headers
    assert int(resp.headers["fireworks-prompt-tokens"]) == body["usage"]["prompt_tokens"]
    assert resp.headers["x-request-id"] == body["id"]
    plain = post(smol_server, prompt=PROMPT, max_tokens=2)
    assert "perf_metrics" not in plain
    chunks = stream(smol_server, prompt=PROMPT, max_tokens=4, perf_metrics_in_response=True)
    assert [("perf_metrics" in c) for c in chunks] == [False] * (len(chunks) - 1) + [True]


# -- streaming shapes -------------------------------------------------------------------------------

def test_stream_interleaves_choices_with_one_usage(smol_server) -> None:
    chunks = stream(smol_server, prompt=[PROMPT, STORY], n=2, max_tokens=8, temperature=0,
                    stream_options={"include_usage": True})
    per: dict[int, list[dict]] = defaultdict(list)
    for ch in chunks:
        assert len(ch["choices"]) == 1 and ch["object"] == "text_completion"
        per[ch["choices"][0]["index"]].append(ch["choices"][0])
    assert sorted(per) == [0, 1, 2, 3]
    for cs in per.values():
        assert cs[-1]["finish_reason"] in ("stop", "length")
        assert all(c["finish_reason"] is None for c in cs[:-1])
    usage = [ch["usage"] for ch in chunks if ch.get("usage")]
    assert len(usage) == 1 and chunks[-1].get("usage") == usage[0]
    assert "".join(c["text"] for c in per[0]) == "".join(c["text"] for c in per[1])


# -- caching, accepted-only fields ------------------------------------------------------------------

def test_prompt_cache_isolation(smol_server) -> None:
    long = "You are a careful assistant. " * 12 + "Question: what is two plus two?"
    a = post(smol_server, prompt=long, max_tokens=1, prompt_cache_isolation_key="tenant-a")
    again = post(smol_server, prompt=long, max_tokens=1, prompt_cache_isolation_key="tenant-a")
    other = post(smol_server, prompt=long, max_tokens=1, prompt_cache_isolation_key="tenant-b")
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= 64
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert a["usage"]["prompt_tokens"] == other["usage"]["prompt_tokens"]


def test_accepted_fields_do_not_change_output(smol_server) -> None:
    base = post(smol_server, prompt=PROMPT, max_tokens=6, temperature=0)["choices"][0]["text"]
    for kw in ({"user": "u"}, {"metadata": {"run": "1"}}, {"service_tier": "priority"},
               {"prompt_cache_key": "s1"}, {"speculation": " Paris"}, {"prediction": " Paris"},
               {"prediction": {"type": "content", "content": " Paris"}}, {"reasoning_effort": "none"}):
        assert post(smol_server, prompt=PROMPT, max_tokens=6, temperature=0, **kw)["choices"][0]["text"] == base


# -- the fireworks-ai SDK ---------------------------------------------------------------------------

def test_fireworks_sdk(smol_server) -> None:
    import fireworks  # a dev dependency: a missing SDK fails, never skips
    fw = fireworks.Fireworks(api_key="unused", base_url=smol_server.url, max_retries=0)
    r = fw.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=1,
                              return_token_ids=True, perf_metrics_in_response=True)
    assert "Paris" in r.choices[0].text
    assert r.usage.prompt_tokens == 5
    text = "".join(ch.choices[0].text for ch in fw.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=8, temperature=0, stream=True))
    assert text == r.choices[0].text
    with pytest.raises(fireworks.APIStatusError) as ei:
        fw.completions.create(model=MODEL_ID, prompt=PROMPT, temperature=9)
    assert ei.value.status_code == 422


def test_stream_logprobs_match_non_stream(smol_server) -> None:
    """Chunked logprobs concatenate to the non-stream object, echo offsets included."""
    body = dict(prompt=PROMPT, max_tokens=6, temperature=0, echo=True, logprobs=1)
    full = post(smol_server, **body)["choices"][0]["logprobs"]
    chunks = stream(smol_server, **body)
    got: dict[str, list] = defaultdict(list)
    for ch in chunks:
        lp = ch["choices"][0]["logprobs"]
        if lp:
            for k, v in lp.items():
                got[k].extend(v)
    assert dict(got) == full
