"""The native kernels against the torch ops they replace, on random data."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from ember import kernels
from ember.model.attention import decode_attention, write_kv
from ember.model.layers import apply_rope


@pytest.fixture(scope="module")
def native():
    # `make install` builds the kernels, so every machine that runs the tests has a compiler: never skip.
    assert shutil.which("c++") is not None, "no C++ compiler: `make install` needs one to build the kernels"
    module = kernels.load()
    assert module is not None, "the native kernels must build"
    return module


def reference(q, kc, vc, tables, lens, bs, kv):
    """Row by row: gather the context through the block table, then the torch decode attention."""
    B, H, D = q.shape
    out = torch.empty_like(q)
    for b in range(B):
        n = int(lens[b])
        pos = torch.arange(n)
        slots = tables[b][pos // bs] * bs + pos % bs
        k = kc[slots].view(n, kv, D).transpose(0, 1).unsqueeze(0)
        v = vc[slots].view(n, kv, D).transpose(0, 1).unsqueeze(0)
        out[b] = decode_attention(q[b].view(1, kv, H // kv, D), k, v).reshape(H, D)
    return out


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("heads", "kv", "dim", "bs"), [(9, 3, 64, 16), (4, 4, 32, 4), (8, 2, 48, 16),
                                                         (6, 1, 20, 8)])
def test_kernel_matches_gathered_attention(native, heads: int, kv: int, dim: int, bs: int,
                                           cache_dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(heads * dim)
    lens = torch.tensor([1, bs, bs + 1, 3 * bs - 1, 100, 7])
    nb = int(-(-lens.max() // bs))
    nblocks = len(lens) * nb + 5
    kc = torch.randn(nblocks * bs, kv * dim, generator=g).to(cache_dtype)
    vc = torch.randn(nblocks * bs, kv * dim, generator=g).to(cache_dtype)
    tables = torch.randperm(nblocks, generator=g)[: len(lens) * nb].view(len(lens), nb)
    q = torch.randn(len(lens), heads, dim, generator=g) / dim**0.5
    out = native.paged_decode_attention(q, kc, vc, tables, lens, bs, kv)
    # A float16 cache is widened exactly, so the reference attends the same values in float32.
    ref = reference(q, kc.float(), vc.float(), tables, lens, bs, kv)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # A row's result is the same bits alone as in any batch.
    for b in range(len(lens)):
        alone = native.paged_decode_attention(q[b : b + 1], kc, vc, tables[b : b + 1], lens[b : b + 1], bs, kv)
        assert torch.equal(alone[0], out[b])


def test_kernel_rejects_a_context_past_its_table(native) -> None:
    kc = torch.zeros(64, 64)
    with pytest.raises(RuntimeError, match="block table"):
        native.paged_decode_attention(torch.zeros(1, 1, 64), kc, kc, torch.zeros(1, 2, dtype=torch.long),
                                      torch.tensor([33]), 16, 1)
    with pytest.raises(RuntimeError, match="outside the cache"):
        native.paged_decode_attention(torch.zeros(1, 1, 64), kc, kc, torch.full((1, 1), 9, dtype=torch.long),
                                      torch.tensor([3]), 16, 1)


def test_add_rms_norm_adds_in_place_and_normalizes(native) -> None:
    g = torch.Generator().manual_seed(1)
    h, delta, w = (torch.randn(5, 576, generator=g), torch.randn(5, 576, generator=g),
                   torch.randn(576, generator=g))
    want_h = h + delta
    want = F.rms_norm(want_h, (576,), w, 1e-5)
    got = native.add_rms_norm(h, delta, w, 1e-5)
    torch.testing.assert_close(h, want_h, rtol=0, atol=0)  # the residual stream, updated in place
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(native.add_rms_norm(h.clone(), None, w, 1e-5), F.rms_norm(h, (576,), w, 1e-5),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="contiguous"):
        native.add_rms_norm(h.t(), None, w, 1e-5)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_rope_write_kv_matches_rope_then_cache_write(native, cache_dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    T, H, KV, D = 7, 9, 3, 64
    qkv = torch.randn(T, (H + 2 * KV) * D, generator=g)
    angles = torch.rand(T, D // 2, generator=g) * 6
    cos, sin = angles.cos(), angles.sin()
    slots = torch.randperm(40, generator=g)[:T]
    kc, vc = torch.zeros(40, KV * D, dtype=cache_dtype), torch.zeros(40, KV * D, dtype=cache_dtype)
    q = native.rope_write_kv(qkv, cos, sin, kc, vc, slots, H, KV, D)
    qk = apply_rope(qkv[:, : (H + KV) * D].view(T, H + KV, D), cos.unsqueeze(1), sin.unsqueeze(1))
    kc_ref, vc_ref = torch.zeros(40, KV * D, dtype=cache_dtype), torch.zeros(40, KV * D, dtype=cache_dtype)
    write_kv(kc_ref, vc_ref, qk[:, H:], qkv[:, (H + KV) * D :].view(T, KV, D), slots)
    torch.testing.assert_close(q, qk[:, :H], rtol=1e-5, atol=1e-5)
    # float16 stores round to nearest even on both paths; a K value one float32 ulp apart may round to
    # the neighbouring half, so K is compared to within one half ulp there.
    tol = 1e-5 if cache_dtype == torch.float32 else 1e-3
    torch.testing.assert_close(kc.float(), kc_ref.float(), rtol=tol, atol=tol)
    assert torch.equal(vc, vc_ref)
    assert vc.abs().sum() > 0 and kc.dtype == cache_dtype
    with pytest.raises(RuntimeError, match="slot outside"):
        native.rope_write_kv(qkv, cos, sin, kc, vc, slots + 100, H, KV, D)


def test_silu_mul(native) -> None:
    gu = torch.randn(4, 2 * 1536, generator=torch.Generator().manual_seed(3)) * 4
    want = F.silu(gu[:, :1536]) * gu[:, 1536:]
    torch.testing.assert_close(native.silu_mul(gu), want, rtol=1e-5, atol=1e-5)
