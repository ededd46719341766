"""End to end: a real `ember serve --model <Gemma 3 GGUF>` process on 127.0.0.1, answering the official
`openai` SDK. It serves the exact fp32 weights (`--quantization none`), so its greedy answers must be
transformers' own, token for token: completions, and chat through the Gemma turn format ember supplies
(the GGUF carries no chat template)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.harness import start_serve

MODEL_ID = "accounts/fireworks/models/gemma-3-270m-q4_k_m"


START_TIMEOUT = 600
"""Loading the 262144-row vocabulary takes ~30 s on an idle 2-core host and several times that on a busy one."""


@pytest.fixture(scope="module")
def server_url(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gemma-serve")
    s = start_serve("--data-dir", str(tmp / "data"), "--kv-cache-mb", "128", "--model", str(gemma_path),
                    "--quantization", "none", log_path=tmp / "server.log", timeout=START_TIMEOUT, interval=0.5)
    try:
        yield s.url
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(server_url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def hf_greedy(hf_model: Any, ids: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out[0, len(ids):].tolist()


def test_models_lists_gemma(client: Any) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL_ID]


def test_completion_is_transformers_greedy(client: Any, gemma_hf_model: Any, gemma_hf_tokenizer: Any) -> None:
    prompt = "The capital of France is"
    ids = gemma_hf_tokenizer.encode(prompt)
    expect = gemma_hf_tokenizer.decode(hf_greedy(gemma_hf_model, ids, 12))
    r = client.completions.create(model="gemma-3-270m-q4_k_m", prompt=prompt, max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == expect
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 12


def test_chat_uses_gemma_turns_and_matches_transformers(client: Any, gemma_hf_model: Any,
                                                        gemma_hf_tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "Answer in one short sentence."},
                {"role": "user", "content": "What is the capital of France?"}]
    rendered = ("<bos><start_of_turn>user\nAnswer in one short sentence.\n\nWhat is the capital of France?"
                "<end_of_turn>\n<start_of_turn>model\n")
    ids = gemma_hf_tokenizer.encode(rendered, add_special_tokens=False)
    out = hf_greedy(gemma_hf_model, ids, 32)
    end = out.index(106) if 106 in out else len(out)  # <end_of_turn> ends the answer and is not part of it
    expect = gemma_hf_tokenizer.decode(out[:end])

    r = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=32, temperature=0)
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == expect
    assert r.choices[0].finish_reason == ("stop" if end < len(out) else "length")
    assert "<end_of_turn>" not in expect and expect.strip()

    stream = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=32, temperature=0,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expect
