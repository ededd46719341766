"""The architecture registry: one entry per supported network, each self-consistent, and a clear refusal
of any other."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from ember.errors import ModelLoadError
from ember.model.architectures import ARCHITECTURES, GEMMA3, LLAMA, architecture, for_hf_model_type
from ember.model.gemma3 import Gemma3
from ember.model.gguf import read_gguf
from ember.model.hf import model_args
from ember.model.llama import Llama


def test_one_entry_per_supported_architecture() -> None:
    assert dict(ARCHITECTURES) == {"llama": LLAMA, "gemma3": GEMMA3}
    assert (LLAMA.module, GEMMA3.module) == (Llama, Gemma3)
    assert for_hf_model_type("llama") is for_hf_model_type("mistral") is LLAMA


@pytest.mark.parametrize("arch", list(ARCHITECTURES.values()), ids=list(ARCHITECTURES))
def test_entry_names_agree(arch) -> None:
    """Every GGUF name maps to a tensor the model expects, and every expected layer tensor has one GGUF
    name and one module parameter that reads it."""
    per_layer = arch.layer_tensors()
    assert len(per_layer) == len(set(per_layer))
    assert sorted(arch.gguf_names.values()) == sorted(per_layer)
    fused = [part for parts in arch.fused_linears.values() for part in parts]
    assert sorted([*arch.layer_norms, *arch.extra_layer_tensors, *fused]) == sorted(per_layer)
    assert (arch.extra_layer_state is None) == (not arch.extra_layer_tensors)


def test_unknown_architecture_is_refused_by_name() -> None:
    with pytest.raises(ModelLoadError, match=r"unsupported architecture 'qwen2' \(supported: llama, gemma3\)"):
        architecture("qwen2")
    with pytest.raises(ModelLoadError, match=r"unsupported model_type 'qwen2' \(supported: llama, mistral\)"):
        model_args({"model_type": "qwen2"}, tie_embeddings=True)


def test_gguf_of_an_unknown_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "qwen.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError) as e:
        read_gguf(path)
    assert str(e.value) == f"{path}: unsupported architecture 'qwen2' (supported: llama, gemma3)"
