"""Sliding-window attention (Gemma 3's local layers) on both attention paths, against a naive fp64
softmax attention with the same mask: the query at position p sees keys p - window + 1 .. p."""

from __future__ import annotations

import pytest
import torch

from ember import kernels
from ember.model.attention import DECODE_PAD, ForwardBatch, PrefillSlice, paged_attention

BS = 4  # small blocks so contexts span many of them, in shuffled order


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int, window: int) -> torch.Tensor:
    """q [H, D] at position `pos`; k, v [ctx, KV, D] of its sequence -> [H, D], in fp64."""
    H, D = q.shape
    KV = k.shape[1]
    lo = max(0, pos - window + 1) if window else 0
    keys = torch.arange(k.shape[0])
    allowed = (keys <= pos) & (keys >= lo)
    out = torch.empty(H, D, dtype=torch.float64)
    for h in range(H):
        kh, vh = k[:, h // (H // KV)].double(), v[:, h // (H // KV)].double()
        s = kh @ q[h].double()
        s[~allowed] = float("-inf")
        out[h] = torch.softmax(s, 0) @ vh
    return out


class Setup:
    """Two sequences in a shuffled paged cache: `a` decodes one row, `b` prefills a chunk of rows."""

    def __init__(self, heads: int, kv: int, dim: int, len_a: int, len_b: int, chunk: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.heads, self.kv, self.dim = heads, kv, dim
        self.lens = (len_a, len_b)
        nb = [-(-n // BS) for n in self.lens]
        nblocks = sum(nb) + 3
        perm = torch.randperm(nblocks, generator=g)
        self.tables = [perm[: nb[0]], perm[nb[0] : nb[0] + nb[1]]]
        self.kc = torch.randn(nblocks * BS, kv * dim, generator=g)
        self.vc = torch.randn(nblocks * BS, kv * dim, generator=g)
        # Rows: a's last position, then b's last `chunk` positions.
        self.rows = [(0, len_a - 1)] + [(1, p) for p in range(len_b - chunk, len_b)]
        self.chunk = chunk
        self.q = torch.randn(len(self.rows), heads, dim, generator=g) / dim**0.5

    def slots(self, seq: int, n: int) -> torch.Tensor:
        pos = torch.arange(n)
        return self.tables[seq][pos // BS] * BS + pos % BS

    def expected(self, window: int) -> torch.Tensor:
        out = []
        for (seq, p), qr in zip(self.rows, self.q, strict=True):
            s = self.slots(seq, p + 1)
            k = self.kc[s].view(-1, self.kv, self.dim)
            v = self.vc[s].view(-1, self.kv, self.dim)
            out.append(reference(qr, k, v, p, window))
        return torch.stack(out)

    def native_batch(self) -> ForwardBatch:
        """Every row attended from the block tables (the native kernel's layout)."""
        nb = max(len(t) for t in self.tables)
        tables = torch.zeros(len(self.rows), nb, dtype=torch.long)
        for i, (seq, _) in enumerate(self.rows):
            tables[i, : len(self.tables[seq])] = self.tables[seq]
        lens = torch.tensor([p + 1 for _, p in self.rows])
        return ForwardBatch(input_ids=torch.zeros(0), positions=torch.zeros(0), slot_mapping=torch.zeros(0),
                            num_decodes=len(self.rows), decode_tables=tables, decode_lens=lens, block_size=BS,
                            native=True)

    def torch_batch(self) -> ForwardBatch:
        """Row 0 on the padded decode path, b's rows as one prefill chunk with a causal mask."""
        n = self.lens[0]
        padded = -(-n // DECODE_PAD) * DECODE_PAD
        pos = torch.arange(padded)
        slots = self.tables[0][(pos // BS).clamp(max=len(self.tables[0]) - 1)] * BS + pos % BS
        mask = torch.zeros(1, 1, 1, padded)
        mask[..., n:] = float("-inf")
        return ForwardBatch(input_ids=torch.zeros(0), positions=torch.zeros(0), slot_mapping=torch.zeros(0),
                            num_decodes=1, decode_slots=slots.unsqueeze(0), decode_mask=mask,
                            decode_lens=torch.tensor([n]),
                            prefills=[PrefillSlice(start=1, q_len=self.chunk,
                                                   context_slots=self.slots(1, self.lens[1]))])


CASES = [  # heads, kv, dim, decode context, prefill context, chunk rows, window
    (9, 3, 64, 40, 37, 20, 8),  # window far smaller than the contexts
    (4, 1, 32, 30, 25, 25, 16),  # a whole prompt in one chunk: early rows see fewer than `window` keys
    (4, 1, 32, 13, 21, 9, 64),  # window larger than every context: same as full attention
    (6, 2, 16, 50, 70, 33, 1),  # each query sees only itself
    (8, 2, 48, 33, 40, 17, 0),  # no window
]


@pytest.mark.parametrize(("heads", "kv", "dim", "len_a", "len_b", "chunk", "window"), CASES)
@pytest.mark.parametrize("path", ["native", "torch"])
def test_window_matches_fp64_reference(path: str, heads: int, kv: int, dim: int, len_a: int, len_b: int,
                                       chunk: int, window: int) -> None:
    s = Setup(heads, kv, dim, len_a, len_b, chunk, seed=heads * dim + window)
    if path == "native":
        assert kernels.load() is not None, "the test machine has a compiler: the kernel must build"
        batch = s.native_batch()
    else:
        batch = s.torch_batch()
    got = paged_attention(s.q, s.kc, s.vc, batch, kv, window)
    want = s.expected(window)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=2e-6)
    if 0 < window < len_b - chunk:
        # The mask matters here: full attention gives other numbers.
        assert not torch.allclose(got.double(), s.expected(0), rtol=1e-3, atol=1e-4)


def test_window_wider_than_the_context_is_full_attention() -> None:
    native = kernels.load()
    assert native is not None
    s = Setup(9, 3, 64, 40, 37, 20, seed=3)
    b = s.native_batch()
    full = native.paged_decode_attention(s.q, s.kc, s.vc, b.decode_tables, b.decode_lens, BS, 3)
    for w in (40, 41, 1000):
        assert torch.equal(native.paged_decode_attention(s.q, s.kc, s.vc, b.decode_tables, b.decode_lens, BS, 3,
                                                         w), full)
    with pytest.raises(RuntimeError, match="window"):
        native.paged_decode_attention(s.q, s.kc, s.vc, b.decode_tables, b.decode_lens, BS, 3, -1)
