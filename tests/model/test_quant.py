"""Quantized Linears hold GGUF block weights (Q4_1, Q8_0) faithfully, and `auto` picks them per tensor."""

from __future__ import annotations

import pytest
import torch

from ember.model.checkpoint import Checkpoint
from ember.model.gguf_linear import GGUFEmbedding, GGUFLinear
from ember.model.loader import LoadedModel, quantization_plan
from ember.model.quant import ChannelInt8Linear, Int4Linear, Int8Linear, quantize_linear
from tests.engine.test_engine import dense_logits


def q4_1_weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """w = d * q + m over 32-wide groups, q in 0..15 with both ends used, as llama.cpp's Q4_1 writes it;
    d and m are bf16-representable so the kernel's bf16 scales hold them exactly."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k // 32, 32), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    d = (torch.rand(n, k // 32, 1, generator=g) * 0.01 + 1e-3).bfloat16().float()
    m = (-torch.rand(n, k // 32, 1, generator=g) * 0.05).bfloat16().float()
    return (d * q + m).reshape(n, k)


def q8_0_weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (n, k // 32, 32), generator=g)
    q[..., 0] = 127
    d = (torch.rand(n, k // 32, 1, generator=g) * 0.001 + 1e-4).bfloat16().float()
    return (d * q).reshape(n, k)


def bf16_exact(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.bfloat16().double() @ w.double().t()


@pytest.mark.parametrize(("make", "cls"), [(q4_1_weight, Int4Linear), (q8_0_weight, Int8Linear)])
def test_block_weights_are_held_exactly(make, cls) -> None:
    w = make(96, 256)
    lin = quantize_linear(torch.nn.Linear(256, 96, bias=False).requires_grad_(False), "none")
    lin.weight.data = w
    q = quantize_linear(lin, "int4" if cls is Int4Linear else "int8")
    assert isinstance(q, cls)
    x = torch.randn(5, 256)
    ref = bf16_exact(x, w)
    # Only the bf16 output rounding remains (relative 2^-8), no weight error.
    err = (q(x).double() - ref).abs().max().item()
    assert err <= ref.abs().max().item() * 2**-7, err
    assert q(x).dtype == torch.float32


def test_int4_on_arbitrary_weights_is_close_not_exact() -> None:
    w = torch.randn(64, 128) * 0.05
    q = Int4Linear(w)
    x = torch.randn(3, 128)
    ref = x @ w.t()
    # 4 bits over 32-wide groups of Gaussian weights: about 10% relative RMS error is what 16 levels give.
    rel = ((q(x) - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.2


def test_odd_shapes_fall_back() -> None:
    lin = torch.nn.Linear(128, 30, bias=False).requires_grad_(False)  # 30 rows: no int4 packing
    q = quantize_linear(lin, "int4")
    assert isinstance(q, ChannelInt8Linear)
    x = torch.randn(2, 128)
    assert torch.allclose(q(x), lin(x), atol=0.05)
    odd = torch.nn.Linear(100, 30, bias=False).requires_grad_(False)  # K=100: neither kernel
    assert quantize_linear(odd, "int8") is odd


def test_auto_plan_follows_the_gguf(smol_checkpoint: Checkpoint) -> None:
    cpu = torch.device("cpu")
    plan = quantization_plan(smol_checkpoint, "auto", cpu)
    assert plan["lm_head"] == "int8"  # token_embd is Q8_0 in this file
    assert {v for k, v in plan.items() if k.startswith("layers.")} == {"int4"}  # every Q4_1 projection
    assert set(quantization_plan(smol_checkpoint, "none", cpu).values()) == {"none"}
    assert set(quantization_plan(smol_checkpoint, "int8", cpu).values()) == {"int8"}
    assert set(quantization_plan(smol_checkpoint, "auto", torch.device("meta")).values()) == {"none"}
    float_ckpt = Checkpoint(args=smol_checkpoint.args, tensors={}, tokenizer=smol_checkpoint.tokenizer,
                            source="hf")
    assert set(quantization_plan(float_ckpt, "auto", cpu).values()) == {"none"}


@pytest.mark.parametrize("prompt", ["The capital of France is", "def fibonacci(n):\n    ",
                                    "Write a haiku about the sea."])
def test_served_model_agrees_with_fp32(smol: LoadedModel, smol_served: LoadedModel, prompt: str) -> None:
    """The default model (GGUF block kernels on the file's own Q4_1 / Q8_0 tensors) picks the same next
    token as the exact fp32 one wherever fp32's top two are not a near tie, and its logits stay close. The
    activations are rounded to 8-bit blocks of 32 (what llama.cpp does too): measured max logit error
    0.9-1.13 on logits ~20, and fp32 near ties (top-2 margin 0.04) can flip."""
    assert isinstance(smol_served.model.lm_head, GGUFLinear)
    assert isinstance(smol_served.model.embed_tokens, GGUFEmbedding)
    assert all(isinstance(m.self_attn.qkv_proj, GGUFLinear) for m in smol_served.model.layers)
    ids = smol.tokenizer.encode(prompt)
    a, b = dense_logits(smol, ids), dense_logits(smol_served, ids)
    top = a.topk(2, dim=-1).values
    clear = (top[:, 0] - top[:, 1]) > 0.5
    assert clear.sum() >= 2
    assert torch.equal(a.argmax(-1)[clear], b.argmax(-1)[clear])
    assert (a - b).abs().max().item() < 1.5
