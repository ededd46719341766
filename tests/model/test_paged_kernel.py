"""The native decode-attention kernel against the torch path it replaces, on random caches."""

from __future__ import annotations

import shutil

import pytest
import torch

from ember import kernels
from ember.model.attention import decode_attention


@pytest.fixture(scope="module")
def native():
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on this machine: the engine uses the torch path")
    module = kernels.load()
    assert module is not None, "a compiler is present, so the kernel must build"
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


@pytest.mark.parametrize(("heads", "kv", "dim", "bs"), [(9, 3, 64, 16), (4, 4, 32, 4), (8, 2, 48, 16),
                                                         (6, 1, 20, 8)])
def test_kernel_matches_gathered_attention(native, heads: int, kv: int, dim: int, bs: int) -> None:
    g = torch.Generator().manual_seed(heads * dim)
    lens = torch.tensor([1, bs, bs + 1, 3 * bs - 1, 100, 7])
    nb = int(-(-lens.max() // bs))
    nblocks = len(lens) * nb + 5
    kc = torch.randn(nblocks * bs, kv * dim, generator=g)
    vc = torch.randn(nblocks * bs, kv * dim, generator=g)
    tables = torch.randperm(nblocks, generator=g)[: len(lens) * nb].view(len(lens), nb)
    q = torch.randn(len(lens), heads, dim, generator=g) / dim**0.5
    out = native.paged_decode_attention(q, kc, vc, tables, lens, bs, kv)
    torch.testing.assert_close(out, reference(q, kc, vc, tables, lens, bs, kv), rtol=1e-5, atol=1e-5)
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
