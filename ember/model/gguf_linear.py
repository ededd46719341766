"""Linears and embeddings that run straight on a GGUF file's block-quantized tensors (ember/kernels).

The weights stay where the file's memory map put them: a uint8 tensor [rows, bytes per row] per tensor,
read by `gguf_matmul_int8` block by block, with no dequantized or repacked copy. A fused projection (q|k|v,
gate|up) is a list of parts, each in its own format, each writing its own columns of the output; the
converter's RoPE row order of q and k is undone by an output-row index, and the attention scale folded into
q by a per-part output scale, so neither touches the weights.

EMBER_QUANT_ISA=portable|avx2|avx512vnni forces the kernels' instruction set (default: the best this CPU
has); it is read when a module is built.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from types import ModuleType

import gguf
import numpy as np
import torch
from torch import nn

from ember import kernels
from ember.model.gguf import LazyTensors, unpermute_rope_rows

ISA_ENV = "EMBER_QUANT_ISA"
ISAS = {"portable": 0, "avx2": 1, "avx512vnni": 2}
_Q = gguf.GGMLQuantizationType
SUPPORTED_TYPES = frozenset({_Q.Q4_0, _Q.Q4_1, _Q.Q5_0, _Q.Q8_0, _Q.Q4_K, _Q.Q5_K, _Q.Q6_K})


def quant_isa() -> int:
    """The ISA code `gguf_matmul_int8` is asked for: -1 (the best available) unless EMBER_QUANT_ISA names one."""
    name = os.environ.get(ISA_ENV, "auto").strip().lower()
    if name in ("", "auto"):
        return -1
    if name not in ISAS:
        raise ValueError(f"{ISA_ENV}={name!r}: expected auto, " + ", ".join(ISAS))
    return ISAS[name]


def as_block_tensor(data: np.ndarray) -> torch.Tensor:
    """A uint8 torch view of (part of) the mapped file. The map is read-only and so is every use of it here,
    which torch cannot know: its non-writable warning is silenced for this one view."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(data)


@dataclass(frozen=True)
class BlockPart:
    """One stored tensor feeding `out_features` consecutive output columns."""

    data: torch.Tensor
    """uint8 [stored rows, bytes per row], a view of the file."""
    qtype: int
    rows: torch.Tensor | None = None
    """int64 [out_features]: the stored row behind each output column; None = the identity."""
    scale: float = 1.0

    @property
    def out_features(self) -> int:
        return int(self.rows.numel()) if self.rows is not None else int(self.data.shape[0])


def _module() -> ModuleType:
    module = kernels.load()
    if module is None:
        raise RuntimeError("GGUF block kernels need ember's native kernels, which did not build")
    return module


class GGUFLinear(nn.Module):
    """y = x @ W^T for W the row-wise concatenation of `parts` (bias-free)."""

    def __init__(self, parts: list[BlockPart], in_features: int) -> None:
        super().__init__()
        self.parts = parts
        self.in_features = in_features
        self.out_features = sum(p.out_features for p in parts)
        self.isa = quant_isa()
        self._kernels = _module()
        # The per-part arguments of gguf_linear_int8, built once: a decode step pays one call per Linear.
        no_rows = torch.empty(0, dtype=torch.int64)
        self._data = [p.data for p in parts]
        self._qtypes = [p.qtype for p in parts]
        self._rows = [p.rows if p.rows is not None else no_rows for p in parts]
        self._scales = [p.scale for p in parts]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(torch.float32)
        # x is quantized once for every part (int8 blocks, their scales and exact sums); each part writes
        # its own columns.
        y = self._kernels.gguf_linear_int8(x2, self._data, self._qtypes, self._rows, self._scales, self.isa)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kinds = ",".join(_Q(p.qtype).name for p in self.parts)
        return f"in_features={self.in_features}, out_features={self.out_features}, parts={kinds}"


class GGUFEmbedding(nn.Module):
    """An embedding table in a block format: a lookup dequantizes just the rows it gathers."""

    def __init__(self, data: torch.Tensor, qtype: int, dim: int) -> None:
        super().__init__()
        self.data = data
        self.qtype = qtype
        self.embedding_dim = dim
        self.num_embeddings = int(data.shape[0])
        self._kernels = _module()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = self._kernels.gguf_dequantize_rows(self.data, self.qtype, ids.reshape(-1), self.embedding_dim)
        return flat.reshape(*ids.shape, self.embedding_dim)


def block_modules(tensors: object, names: dict[str, list[str]], embed_name: str, q_scale: float
                  ) -> dict[str, nn.Module]:
    """Module path -> GGUFLinear for each Linear whose parts (`names`: path -> checkpoint tensor names) are
    all stored in a supported block type, plus "embed_tokens" -> GGUFEmbedding when the embedding is.
    Empty unless `tensors` is a GGUF file's LazyTensors and the native kernels load. q_proj parts get
    `q_scale` (the attention scale the fp32 path folds into q's rows)."""
    if not isinstance(tensors, LazyTensors) or kernels.load() is None:
        return {}
    out: dict[str, nn.Module] = {}
    for path, parts in names.items():
        stored = [tensors.block(n) for n in parts]
        if any(t.tensor_type not in SUPPORTED_TYPES for t, _ in stored):
            continue
        blocks = []
        for name, (t, heads) in zip(parts, stored, strict=True):
            data = as_block_tensor(t.data)
            rows = unpermute_rope_rows(torch.arange(data.shape[0]), heads) if heads is not None else None
            scale = q_scale if name.endswith("q_proj.weight") else 1.0
            blocks.append(BlockPart(data, int(t.tensor_type), rows, scale))
        out[path] = GGUFLinear(blocks, in_features=int(stored[0][0].shape[0]))
    t, _ = tensors.block(embed_name)
    if t.tensor_type in SUPPORTED_TYPES:
        out["embed_tokens"] = GGUFEmbedding(as_block_tensor(t.data), int(t.tensor_type), int(t.shape[0]))
    return out
