"""Oracle: Hugging Face transformers loading the same GGUF. Logits and greedy tokens must agree.

Tolerance: both sides run float32 on the same dequantized weights, so differences come only from the
order of floating-point operations: max |logit difference| <= 2e-3 on logits of magnitude ~20.
"""

from __future__ import annotations

import pytest
import torch

from ember.model.loader import LoadedModel
from ember.model.registry import ModelRef
from tests.engine.helpers import greedy, make_engine, req, run_all
from tests.engine.test_engine import dense_logits

transformers = pytest.importorskip("transformers")

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a land far away,"]


@pytest.fixture(scope="module")
def hf_model(smol_ref: ModelRef):
    m = transformers.AutoModelForCausalLM.from_pretrained(
        str(smol_ref.path.parent), gguf_file=smol_ref.path.name, torch_dtype=torch.float32)
    return m.eval()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_agree(smol: LoadedModel, hf_model, prompt: str) -> None:
    ids = smol.tokenizer.encode(prompt)
    ours = dense_logits(smol, ids)
    with torch.inference_mode():
        theirs = hf_model(torch.tensor([ids])).logits[0].float()
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    assert diff <= 2e-3, f"max logit difference {diff}"
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_greedy_32_tokens_identical(smol: LoadedModel, hf_model) -> None:
    ids = smol.tokenizer.encode(PROMPTS[2])
    with torch.inference_mode():
        ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    expect = ref[0, len(ids):].tolist()
    engine = make_engine(smol)
    got = run_all(engine, [req("g", ids, greedy(max_tokens=32))])["g"].token_ids
    assert got == expect
