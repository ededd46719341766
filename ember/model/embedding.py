"""Int8Embedding: a token embedding held as int8 rows, for vocabularies too big to keep in fp32.

Symmetric int8 over groups of 32 values with one float32 scale each: GGUF Q8_0's layout. A Q8_0 tensor
survives the round trip exactly: its largest value in a group is d * +-127, so absmax / 127 gives d back
and every value divides to its integer again. Gemma 3's 262144 x 640 table: 671 MB in fp32, 189 MB here.
"""

from __future__ import annotations

import torch
from torch import nn

GROUP = 32
_ROWS_PER_CHUNK = 8192
"""Rows quantized at a time, so the temporaries stay small next to the fp32 table itself."""


class Int8Embedding(nn.Module):
    def __init__(self, weight: torch.Tensor, group: int = GROUP) -> None:
        super().__init__()
        N, K = weight.shape
        if K % group:
            raise ValueError(f"embedding width {K} is not a multiple of {group}")
        q = torch.empty(N, K, dtype=torch.int8, device=weight.device)
        scales = torch.empty(N, K // group, dtype=torch.float32, device=weight.device)
        for start in range(0, N, _ROWS_PER_CHUNK):
            g = weight[start : start + _ROWS_PER_CHUNK].float().reshape(-1, K // group, group)
            s = g.abs().amax(dim=-1) / 127.0
            scales[start : start + _ROWS_PER_CHUNK] = s
            safe = torch.where(s > 0, s, torch.ones_like(s)).unsqueeze(-1)
            q[start : start + _ROWS_PER_CHUNK] = torch.round(g / safe).clamp(-127, 127).to(torch.int8).reshape(-1, K)
        self.register_buffer("qweight", q)
        self.register_buffer("scales", scales)
        self.group = group
        self.num_embeddings, self.embedding_dim = N, K

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.qweight[ids].view(*ids.shape, self.embedding_dim // self.group, self.group).float()
        return (rows * self.scales[ids].unsqueeze(-1)).view(*ids.shape, self.embedding_dim)
