"""Every instruction-set path of the layer kernels against the scalar one, on every level this CPU runs (the
GGUF block kernels' levels: test_quant_kernels.py).

One binary holds the scalar, AVX2 and AVX-512 paths (ember/kernels/isa.h); a kernel's `isa` argument forces
one. Integer work (int8 quantization, block decoding) must agree bit for bit across levels; float sums may
differ only in their order, so to float32 rounding.
"""

from __future__ import annotations

import shutil
from types import ModuleType

import pytest
import torch

from ember import kernels

SCALAR, AVX2, AVX512 = 0, 1, 2


@pytest.fixture(scope="module")
def native() -> ModuleType:
    # `make install` builds the kernels, so every machine that runs the tests has a compiler: never skip.
    assert shutil.which("c++") is not None, "no C++ compiler: `make install` needs one to build the kernels"
    module = kernels.load()
    assert module is not None, "the native kernels must build"
    return module


def levels() -> list[int]:
    module = kernels.load() if shutil.which("c++") else None
    return list(module.cpu_isas()) if module is not None else [SCALAR]


LEVELS = levels()
LEVEL_IDS = [{SCALAR: "scalar", AVX2: "avx2", AVX512: "avx512"}[i] for i in LEVELS]


def test_every_kernel_refuses_a_level_the_cpu_lacks(native: ModuleType) -> None:
    x = torch.randn(2, 64)
    with pytest.raises(RuntimeError, match="not available on this CPU"):
        native.silu_mul(x, isa=3)
    with pytest.raises(RuntimeError, match="not available on this CPU"):
        native.quantize_activations_int8(x, isa=3)
    with pytest.raises(RuntimeError, match="not available on this CPU"):
        native.add_rms_norm(x, None, torch.ones(64), 1e-5, isa=3)


def attention_case(cache_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    H, KV, D, BS = 9, 3, 72, 16  # D not a multiple of 16: the value loop's narrower tails too
    lens = torch.tensor([1, 5, 16, 17, 40, 41, 42, 100])
    nblocks = 64
    kc = torch.randn(nblocks * BS, KV * D, generator=g).to(cache_dtype)
    vc = torch.randn(nblocks * BS, KV * D, generator=g).to(cache_dtype)
    tables = torch.randperm(nblocks, generator=g)[:56].view(8, 7)
    tables[4:6] = tables[3]  # rows 3-5: consecutive positions of one sequence (one tile)
    q = torch.randn(8, H, D, generator=g) / D**0.5
    return q, kc, vc, tables, lens, torch.tensor(BS), torch.tensor(KV)


@pytest.mark.parametrize("isa", LEVELS, ids=LEVEL_IDS)
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("window", [0, 20])
def test_paged_decode_attention_every_level(native: ModuleType, isa: int, cache_dtype: torch.dtype,
                                            window: int) -> None:
    q, kc, vc, tables, lens, bs, kv = attention_case(cache_dtype)
    args = (kc, vc, tables, lens, int(bs), int(kv), window)
    out = native.paged_decode_attention(q, *args, isa=isa)
    torch.testing.assert_close(out, native.paged_decode_attention(q, *args, isa=SCALAR), rtol=1e-5, atol=1e-5)
    for b in (0, 4, 7):  # a row's bits do not depend on its batch, on any level
        alone = native.paged_decode_attention(q[b : b + 1], kc, vc, tables[b : b + 1], lens[b : b + 1], int(bs),
                                              int(kv), window, isa=isa)
        assert torch.equal(alone[0], out[b])
    if isa == max(LEVELS):
        assert torch.equal(native.paged_decode_attention(q, *args), out), "the default is the best level"


@pytest.mark.parametrize("isa", LEVELS, ids=LEVEL_IDS)
def test_fused_layer_ops_every_level(native: ModuleType, isa: int) -> None:
    g = torch.Generator().manual_seed(8)
    h, delta, w = torch.randn(20, 576, generator=g), torch.randn(20, 576, generator=g), torch.randn(576, generator=g)
    h_ref, h_isa = h.clone(), h.clone()
    want = native.add_rms_norm(h_ref, delta, w, 1e-5, isa=SCALAR)
    got = native.add_rms_norm(h_isa, delta, w, 1e-5, isa=isa)
    assert torch.equal(h_isa, h_ref)  # the residual add is one rounding per element on every level
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    gu = torch.randn(20, 2 * 1539, generator=g) * 4  # an odd width: every level's tail
    torch.testing.assert_close(native.silu_mul(gu, isa=isa), native.silu_mul(gu, isa=SCALAR), rtol=1e-5, atol=1e-5)

    T, H, KV, D = 19, 9, 3, 36
    qkv = torch.randn(T, (H + 2 * KV) * D, generator=g)
    angles = torch.rand(T, D // 2, generator=g) * 6
    slots = torch.randperm(40, generator=g)[:T]
    for dtype in (torch.float32, torch.float16):
        caches = {}
        for level in (SCALAR, isa):
            kc, vc = torch.zeros(40, KV * D, dtype=dtype), torch.zeros(40, KV * D, dtype=dtype)
            q = native.rope_write_kv(qkv, angles.cos(), angles.sin(), kc, vc, slots, H, KV, D, isa=level)
            caches[level] = (q, kc, vc)
        (q0, k0, v0), (q1, k1, v1) = caches[SCALAR], caches[isa]
        torch.testing.assert_close(q1, q0, rtol=1e-5, atol=1e-5)
        # V is copied (float16: rounded to nearest even, F16C or not): bit-equal. K may differ by a rounding
        # of the rotation, so by one float16 ulp at most.
        assert torch.equal(v1, v0) and v1.abs().sum() > 0
        tol = 1e-5 if dtype == torch.float32 else 1e-3
        torch.testing.assert_close(k1.float(), k0.float(), rtol=tol, atol=tol)
