"""ForwardBatch and paged attention over block tables.

The KV cache of one layer is a flat array of slots, `[num_blocks * block_size, n_kv_heads * head_dim]`;
slot = block_id * block_size + offset. A sequence's context is the slots its block table names, in order.
The runner turns block tables into slot indices once per step; every layer reuses them.

Tokens of all sequences in a step are flattened into one axis of T rows:

    rows:  [ d0 d1 d2 ... d(B-1) | p0 p0 p0 p0 | p1 p1 ... ]
             decodes (1 query each)  prefill chunks (q_len each)

Where the native kernel could be built (ember/kernels), it attends every row alone straight from the
block tables, prefill rows included (then there are no prefill slices: every row is a "decode" row over
its own context length), so a row's numbers never depend on its batch, its chunking or the prefix cache.
Otherwise decodes are attended together as one padded batch of gathered K/V, and each prefill chunk on
its own with a causal mask offset by the tokens already in its context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ember import kernels

DECODE_PAD = 16
"""Decode contexts are padded to a multiple of this many positions (whole AVX-512 vectors)."""


@dataclass
class PrefillSlice:
    start: int
    """First row of this chunk in the flattened batch."""
    q_len: int
    context_slots: torch.Tensor
    """[ctx_len] slot ids of the whole context (cached tokens plus this chunk)."""


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor
    """[T] token ids."""
    positions: torch.Tensor
    """[T] position of each token in its sequence."""
    slot_mapping: torch.Tensor
    """[T] where each token's K/V is written."""
    num_decodes: int = 0
    """Rows 0..num_decodes-1 are attended one by one: single-token decodes, draft positions and, with the
    native kernel, prefill rows too."""
    decode_slots: torch.Tensor | None = None
    """[num_decodes, max_ctx] context slots of each decode, padded with slot 0; max_ctx is a multiple of
    DECODE_PAD so a row's sums do not depend on the longest context in its batch."""
    decode_head_rows: torch.Tensor | None = None
    """[num_decodes * n_kv_heads * max_ctx] rows of the cache viewed as [slots * n_kv_heads, head_dim],
    ordered (decode, kv head, position): one gather yields K as [B, KV, L, D], ready for the matmul."""
    decode_mask: torch.Tensor | None = None
    """[num_decodes, 1, 1, max_ctx] additive mask: 0 inside the context, -inf in the padding."""
    prefills: list[PrefillSlice] = field(default_factory=list)
    decode_tables: torch.Tensor | None = None
    """[num_decodes, max_blocks] int64 block tables, set (with decode_lens) instead of decode_slots when
    the native kernel attends decodes straight from the cache."""
    decode_lens: torch.Tensor | None = None
    """[num_decodes] int64 context length of each decode row (on both paths: a sliding-window layer masks
    the positions before each row's window with it)."""
    block_size: int = 16
    native: bool = False
    """Run the fused native kernels (ember/kernels) for the layer's small steps and decode attention."""
    exact_decode_rows: list[tuple[int, int]] = field(default_factory=list)
    """(decode row, padded context length) of draft rows to re-attend over their own padded length,
    on platforms where padding changes a row's sums (see `decode_padding_is_invariant`): draft
    verification must reproduce plain decoding exactly."""


def decode_head_rows(decode_slots: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    heads = torch.arange(n_kv_heads, device=decode_slots.device).view(1, n_kv_heads, 1)
    return (decode_slots.unsqueeze(1) * n_kv_heads + heads).reshape(-1)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """One query per row: q [B, KV, G, D] (pre-scaled), k/v [B, KV, L, D], additive mask [B, 1, 1, L].

    A hand-written matmul + softmax: SDPA costs milliseconds per single-query call on CPU.
    """
    scores = torch.matmul(q, k.transpose(-1, -2))  # (B, KV, G, L)
    if mask is not None:
        scores += mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, KV, G, D)


PROBE_CASES = ((1, 40, 3), (5, 17, 2), (17, 333, 4), (31, 64, 32), (100, 101, 5), (200, 1000, 9), (333, 700, 2),
               (700, 2000, 17))
"""(a row's context, the batch's longest context, batch size) that decode_padding_is_invariant tries."""


def decode_padding_is_invariant(n_heads: int, n_kv_heads: int, head_dim: int, multiple: int,
                                device: torch.device, dtype: torch.dtype = torch.float32,
                                cases: tuple[tuple[int, int, int], ...] = PROBE_CASES) -> bool:
    """Whether `decode_attention` gives a row the same bits alone as in a batch padded to a longer
    context, when every context is padded to a multiple of `multiple`.

    Only the order of the sums in q.K and the softmax could differ, and with lengths padded to whole
    vectors the CPU kernels measured here sum the real positions identically whatever the padding
    (unpadded, 42 of 162 probed cases differed). Kernels are the platform's to choose, so the engine
    asks at start-up rather than assuming: if this returns False, draft rows are re-attended unpadded.
    """
    g = torch.Generator().manual_seed(0)
    group = n_heads // n_kv_heads

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    with torch.inference_mode():
        for length, longest, batch in cases:
            own = -(-length // multiple) * multiple
            padded = -(-longest // multiple) * multiple
            q, k, v = rand(batch, n_kv_heads, group, head_dim), rand(batch, n_kv_heads, padded, head_dim), \
                rand(batch, n_kv_heads, padded, head_dim)
            mask = torch.zeros(batch, 1, 1, padded, device=device, dtype=dtype)
            mask[0, ..., length:] = float("-inf")
            alone_mask = mask[:1, ..., :own]
            alone = decode_attention(q[:1], k[:1, :, :own], v[:1, :, :own], alone_mask)
            if not torch.equal(decode_attention(q, k, v, mask)[:1], alone):
                return False
    return True


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slots: torch.Tensor) -> None:
    """K and V rows into the caches at `slots`, rounded to the caches' dtype (float16 by default)."""
    k_cache.index_copy_(0, slots, k.reshape(k.shape[0], -1).to(k_cache.dtype))
    v_cache.index_copy_(0, slots, v.reshape(v.shape[0], -1).to(v_cache.dtype))


def window_mask(lens: torch.Tensor, length: int, window: int) -> torch.Tensor:
    """[rows, 1, 1, length] additive mask: -inf at the positions before each row's window (a row with
    context `len` is the query at position len - 1 and sees keys len - window .. len - 1), else 0."""
    pos = torch.arange(length, device=lens.device).unsqueeze(0)
    mask = torch.zeros(lens.shape[0], length, device=lens.device)
    mask.masked_fill_(pos < (lens.unsqueeze(1) - window), float("-inf"))
    return mask.view(-1, 1, 1, length)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: ForwardBatch,
                    n_kv_heads: int, window: int = 0) -> torch.Tensor:
    """q: [T, H, D], already scaled by 1/sqrt(D) -> [T, H, D], reading K/V for every row's context from
    the cache. `window` > 0 makes this a sliding-window layer: the query at position p attends only the
    keys at positions p - window + 1 .. p (Hugging Face's `kv_idx > q_idx - sliding_window`); 0 attends
    the whole context."""
    T, H, D = q.shape
    group = H // n_kv_heads
    out = torch.empty_like(q)
    nd = batch.num_decodes
    if nd and batch.decode_tables is not None:
        native = kernels.load()
        assert native is not None and batch.decode_lens is not None
        out[:nd] = native.paged_decode_attention(q[:nd], k_cache, v_cache, batch.decode_tables, batch.decode_lens,
                                                 batch.block_size, n_kv_heads, window)
    elif nd:
        assert batch.decode_slots is not None and batch.decode_mask is not None
        B, L = batch.decode_slots.shape
        rows = batch.decode_head_rows
        if rows is None:
            rows = decode_head_rows(batch.decode_slots, n_kv_heads)
        # Gathering straight into (B, KV, L, D) saves the copy a permuted view would cost in matmul.
        k = k_cache.view(-1, D).index_select(0, rows).view(B, n_kv_heads, L, D).to(q.dtype)
        v = v_cache.view(-1, D).index_select(0, rows).view(B, n_kv_heads, L, D).to(q.dtype)
        qd = q[:nd].view(B, n_kv_heads, group, D)
        mask = batch.decode_mask
        if window:
            assert batch.decode_lens is not None
            mask = mask + window_mask(batch.decode_lens.to(mask.device), L, window)
        o = decode_attention(qd, k, v, mask)
        for r, length in batch.exact_decode_rows:
            if length < L:
                o[r] = decode_attention(qd[r : r + 1], k[r : r + 1, :, :length], v[r : r + 1, :, :length],
                                        mask[r : r + 1, ..., :length])[0]
        out[:nd] = o.reshape(B, H, D)
    for p in batch.prefills:
        ctx = p.context_slots.shape[0]
        k = k_cache.index_select(0, p.context_slots).view(ctx, n_kv_heads, D).to(q.dtype)
        v = v_cache.index_select(0, p.context_slots).view(ctx, n_kv_heads, D).to(q.dtype)
        qp = q[p.start : p.start + p.q_len].transpose(0, 1).unsqueeze(0)  # (1, H, q, D)
        kp = k.transpose(0, 1).repeat_interleave(group, dim=0).unsqueeze(0)  # (1, H, ctx, D)
        vp = v.transpose(0, 1).repeat_interleave(group, dim=0).unsqueeze(0)
        # Query i sits at context position ctx - q_len + i and sees keys 0..that position.
        qpos = torch.arange(ctx - p.q_len, ctx, device=q.device).unsqueeze(1)
        kpos = torch.arange(ctx, device=q.device).unsqueeze(0)
        mask = kpos <= qpos
        if window:
            mask &= kpos > qpos - window
        o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=1.0)
        out[p.start : p.start + p.q_len] = o.squeeze(0).transpose(0, 1)
    return out
