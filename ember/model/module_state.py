"""Checkpoint tensors (Hugging Face names) -> a module's parameters, as its architecture entry describes:
norms under the same name, fused Linears (q|k|v, gate|up) and biases concatenated from their parts, q's
rows (and q's bias) scaled by the entry's q_scale, and the entry's own extra tensors through its hook.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from ember.model.architectures import EMBED, FINAL_NORM, HEAD, Q_PROJ, architecture
from ember.model.checkpoint import Checkpoint


def module_state(ckpt: Checkpoint, skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, torch.Tensor]]:
    """(module parameter name, tensor) pairs, one tensor at a time, so a lazy checkpoint (GGUF: dequantized
    at each access) is never whole in memory. Modules named in `skip` (set by other means) are not read."""
    t, args = ckpt.tensors, ckpt.args
    arch = architecture(args.arch)
    # A tied head is the embedding's tensor itself: read once, not dequantized twice.
    embed = t[EMBED] if "embed_tokens" not in skip or (args.tie_embeddings and "lm_head" not in skip) else None
    if "embed_tokens" not in skip:
        yield "embed_tokens.weight", embed
    yield "norm.weight", t[FINAL_NORM]
    if "lm_head" not in skip:
        yield "lm_head.weight", embed if args.tie_embeddings else t[HEAD]
    del embed
    q_scale = arch.q_scale(args)
    for i in range(args.n_layers):
        p, m = f"model.layers.{i}.", f"layers.{i}."
        for norm in arch.layer_norms:
            yield m + norm + ".weight", t[p + norm + ".weight"]
        if arch.extra_layer_state is not None:
            yield from arch.extra_layer_state(t, args, i)
        for module, parts in arch.fused_linears.items():
            if m + module in skip:
                continue
            yield m + module + ".weight", _fused(t, p, parts, ".weight", q_scale)
        for param, parts in arch.fused_biases.items():
            yield m + param, _fused(t, p, parts, ".bias", q_scale)


def _fused(t: Mapping[str, torch.Tensor], prefix: str, parts: tuple[str, ...], suffix: str, q_scale: float
           ) -> torch.Tensor:
    """The parts' tensors (`prefix + part + suffix`) stacked by rows, q's scaled by q_scale."""
    out = [t[prefix + part + suffix] * q_scale if part == Q_PROJ and q_scale != 1.0 else t[prefix + part + suffix]
           for part in parts]
    return torch.cat(out, dim=0) if len(out) > 1 else out[0]
