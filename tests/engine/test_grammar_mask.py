"""The token-mask unpacking that replaced llguidance's torch.compile'd apply step."""

from __future__ import annotations

import torch

from ember.engine.grammar import unpack_bitmask


def test_unpack_bitmask_matches_a_bit_by_bit_reference() -> None:
    g = torch.Generator().manual_seed(0)
    for vocab in (1, 31, 32, 33, 100, 49152):
        words = (vocab + 31) // 32
        mask = torch.randint(-(2**31), 2**31 - 1, (3, words), dtype=torch.int32, generator=g)
        mask[0, 0] = -1  # every bit, the sign bit included
        mask[1, -1] = -(2**31)  # only the sign bit
        got = unpack_bitmask(mask, vocab)
        assert got.shape == (3, vocab) and got.dtype == torch.bool
        for r in range(3):
            ref = [bool((int(mask[r, t // 32]) >> (t % 32)) & 1) for t in range(vocab)]
            assert got[r].tolist() == ref

