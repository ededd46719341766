"""The native kernel attends consecutive rows of one sequence as a tile that shares each key block's reads.
A row's bits must not depend on its tile: alone (a decode), first or last in a tile, or in a chunk whose
boundaries fall mid-tile, it computes the same numbers, and those match an fp64 softmax attention."""

from __future__ import annotations

import pytest
import torch

from ember import kernels

BS = 16


@pytest.fixture(scope="module")
def native():
    module = kernels.load()
    assert module is not None, "the test machine has a compiler: the kernel must build"
    return module


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor, window: int) -> torch.Tensor:
    """q [rows, H, D]; k, v [ctx, KV, D] of one sequence in position order -> [rows, H, D] in fp64."""
    rows, H, D = q.shape
    G = H // k.shape[1]
    kh = k.double().repeat_interleave(G, dim=1).transpose(0, 1)  # (H, ctx, D)
    vh = v.double().repeat_interleave(G, dim=1).transpose(0, 1)
    s = torch.einsum("rhd,htd->rht", q.double(), kh)
    pos = torch.arange(k.shape[0])
    allowed = pos.unsqueeze(0) < lens.unsqueeze(1)
    if window:
        allowed &= pos.unsqueeze(0) >= (lens.unsqueeze(1) - window)
    s.masked_fill_(~allowed.unsqueeze(1), float("-inf"))
    return torch.einsum("rht,htd->rhd", torch.softmax(s, -1), vh)


@pytest.mark.parametrize(("heads", "kv", "dim", "window"), [(9, 3, 64, 0), (9, 3, 64, 40), (4, 1, 256, 0),
                                                            (4, 1, 256, 33), (8, 2, 48, 0), (5, 5, 20, 7)])
def test_a_row_is_the_same_in_any_tile(native, heads: int, kv: int, dim: int, window: int) -> None:
    g = torch.Generator().manual_seed(heads + dim + window)
    ctx = 150
    nb = -(-ctx // BS)
    nblocks = 2 * nb + 3
    table = torch.randperm(nblocks, generator=g)[:nb]
    other = torch.randperm(nblocks, generator=g)[:nb]
    kc = torch.randn(nblocks * BS, kv * dim, generator=g)
    vc = torch.randn(nblocks * BS, kv * dim, generator=g)
    q = torch.randn(ctx, heads, dim, generator=g) / dim**0.5
    lens = torch.arange(1, ctx + 1)

    def attend(rows: slice, tab: torch.Tensor = table) -> torch.Tensor:
        n = len(range(*rows.indices(ctx)))
        return native.paged_decode_attention(q[rows], kc, vc, tab.repeat(n, 1), lens[rows], BS, kv, window)

    whole = attend(slice(0, ctx))  # one prompt in one call: tiles of 16 rows from row 0
    pos = torch.arange(ctx)
    slots = table[pos // BS] * BS + pos % BS
    want = reference(q, kc[slots].view(ctx, kv, dim), vc[slots].view(ctx, kv, dim), lens, window)
    torch.testing.assert_close(whole.double(), want, rtol=1e-5, atol=2e-6)
    # Every row alone: a tile of one, what a decode row at that position computes.
    for r in range(ctx):
        assert torch.equal(attend(slice(r, r + 1))[0], whole[r]), f"row {r} alone"
    # Chunks whose boundaries fall mid-tile (and mid key block), as a busy step or the prefix cache split them.
    for cuts in ([0, 37, 50, 150], [0, 1, 17, 18, 99, 150], [0, 149, 150]):
        parts = [attend(slice(a, b)) for a, b in zip(cuts, cuts[1:], strict=False)]
        assert torch.equal(torch.cat(parts), whole), f"chunks {cuts}"
    # The same rows behind another sequence's rows in one batch.
    mixed = native.paged_decode_attention(torch.cat([q[:20], q[60:130]]), kc, vc,
                                          torch.cat([other.repeat(20, 1), table.repeat(70, 1)]),
                                          torch.cat([lens[:20], lens[60:130]]), BS, kv, window)
    assert torch.equal(mixed[20:], whole[60:130])
