"""Weight-only quantized Linears: drop-ins for nn.Linear that the model never notices.

Decode on CPU is bound by reading weights: fp32 SmolLM2 reads 540 MB per token, int8 135 MB, int4 70 MB.
torch's packed kernels are fast only with bf16 activations on this class of CPU (a 3072x576 projection
at batch 1: fp32 matmul 0.15 ms, `_weight_int4pack_mm_for_cpu` 0.05 ms with bf16 input but 1.5 ms with
fp32 input), so activations are cast to bf16 around them. Measured per shape on 2 cores, int4 with
32-wide groups is the fastest kernel at every batch size up to 64 rows and within 10% of fp32 at
512-row prefill chunks (32 rows, 3072x576: int4 0.68 ms, per-channel int8 0.79 ms, fp32 0.92 ms; the
49152x576 head: 11, 25 and 28 ms).

`auto` keeps each weight at the precision of its file: a GGUF Q4_1 tensor (w = d*q + m over 32-wide
groups) becomes int4 with the same groups, which reproduces its values up to bf16 rounding of d and m;
an 8-bit or 6-bit tensor becomes int8 over the same 32-wide groups; float tensors stay fp32. (With the
native kernels built, `auto` runs GGUF block tensors on model/gguf_linear.py instead, straight from the
file: these modules then serve safetensors checkpoints, forced int4/int8, and GGUF types those kernels lack.)
"""

from __future__ import annotations

import torch
from torch import nn

INT4_GROUP = 32


class Int8Linear(nn.Module):
    """Symmetric int8 over groups of 32 input channels (GGUF Q8_0's layout), run as two int4 planes.

    q + 128 = 16 * hi + lo with hi, lo in 0..15, so w = s * q = 16s * (hi - 8) + s * (lo - 8) + 8s: two
    calls of the int4 kernel with group scales (16s, 0) and (s, 8s). That holds a Q8_0 tensor exactly
    (up to bf16 rounding of s), where torch's per-channel `_weight_int8pack_mm` would requantize it
    (logit error 0.30 vs 0.05 on SmolLM2's head), and it is faster from 4 rows up (49152x576 at 32 rows:
    2 x 11 ms against 25 ms).
    """

    def __init__(self, weight: torch.Tensor, group: int = INT4_GROUP) -> None:
        super().__init__()
        N, K = weight.shape
        g = weight.float().reshape(N, K // group, group)
        s = (g.abs().amax(dim=-1) / 127.0).clamp(min=1e-10)
        q = torch.round(g / s.unsqueeze(-1)).clamp(-127, 127).to(torch.int32) + 128
        hi, lo = (q // 16).reshape(N, K), (q % 16).reshape(N, K)
        self.register_buffer("packed_hi", torch.ops.aten._convert_weight_to_int4pack_for_cpu(hi, 1))
        self.register_buffer("packed_lo", torch.ops.aten._convert_weight_to_int4pack_for_cpu(lo, 1))
        sz_hi = torch.stack([16.0 * s, torch.zeros_like(s)], dim=-1).transpose(0, 1).contiguous()
        sz_lo = torch.stack([s, 8.0 * s], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("sz_hi", sz_hi.to(torch.bfloat16))
        self.register_buffer("sz_lo", sz_lo.to(torch.bfloat16))
        self.group = group
        self.in_features = K
        self.out_features = N

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.to(torch.bfloat16)
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
        y = mm(xb, self.packed_hi, self.group, self.sz_hi).to(x.dtype)
        return y.add_(mm(xb, self.packed_lo, self.group, self.sz_lo))


class ChannelInt8Linear(nn.Module):
    """Symmetric per-output-channel int8 (absmax / 127): for shapes the int4 kernel cannot take."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.float()
        scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
        self.register_buffer("weight", torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]

    @staticmethod
    def supports(weight: torch.Tensor) -> bool:
        # torch 2.13's kernel reads past the row (a segfault, not an error) unless K is a multiple of 16.
        return weight.device.type == "cpu" and weight.shape[1] % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.weight, self.scales)
        return y.to(x.dtype)


class Int4Linear(nn.Module):
    """Asymmetric int4 over groups of 32 input channels: w = (q - 8) * scale + zero, q in 0..15."""

    def __init__(self, weight: torch.Tensor, group: int = INT4_GROUP) -> None:
        super().__init__()
        N, K = weight.shape
        g = weight.float().reshape(N, K // group, group)
        lo, hi = g.amin(dim=-1), g.amax(dim=-1)
        scale = ((hi - lo) / 15.0).clamp(min=1e-10)
        q = torch.round((g - lo.unsqueeze(-1)) / scale.unsqueeze(-1)).clamp(0, 15).to(torch.int32)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(N, K), 1))
        # The kernel wants [K / group, N, 2] = (scale, zero) with zero the value at q = 8.
        sz = torch.stack([scale, lo + 8.0 * scale], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("scales_zeros", sz.to(torch.bfloat16))
        self.group = group
        self.in_features = K
        self.out_features = N

    @staticmethod
    def supports(weight: torch.Tensor, group: int = INT4_GROUP) -> bool:
        N, K = weight.shape
        return weight.device.type == "cpu" and K % group == 0 and N % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.packed, self.group,
                                                       self.scales_zeros)
        return y.to(x.dtype)


def quantize_linear(linear: nn.Linear, kind: str) -> nn.Module:
    """`kind`: "int4", "int8" or "none". Shapes the int4 kernel cannot take get per-channel int8, and
    shapes neither kernel can take stay fp32."""
    w = linear.weight.data
    if kind in ("int4", "int8") and Int4Linear.supports(w):
        return Int4Linear(w) if kind == "int4" else Int8Linear(w)
    if kind in ("int4", "int8") and ChannelInt8Linear.supports(w):
        return ChannelInt8Linear(w)
    return linear


def kind_for_bits(bits: int | None) -> str:
    """The kernel that holds a weight stored with `bits` per value without losing much of it."""
    if bits is None:
        return "none"
    return "int4" if bits <= 4 else "int8"


def quantize_model(model: nn.Module, kinds: dict[str, str]) -> nn.Module:
    """Swap each bias-free nn.Linear named in `kinds` (module path -> kind) in place."""
    for path, kind in kinds.items():
        if kind == "none":
            continue
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        child = getattr(parent, name)
        if isinstance(child, nn.Linear) and child.bias is None:
            setattr(parent, name, quantize_linear(child, kind))
    return model
