"""The architecture registry: one entry per supported network, each self-consistent, and a clear refusal
of any other."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from ember.errors import ModelLoadError
from ember.model.architectures import (
    ARCHITECTURES,
    GEMMA3,
    LLAMA,
    PHI3,
    QWEN2,
    QWEN3,
    architecture,
    for_hf_model_type,
)
from ember.model.gemma3 import Gemma3
from ember.model.gguf import read_gguf
from ember.model.hf import model_args
from ember.model.llama import Llama


def test_one_entry_per_supported_architecture() -> None:
    assert dict(ARCHITECTURES) == {"llama": LLAMA, "gemma3": GEMMA3, "qwen2": QWEN2, "qwen3": QWEN3, "phi3": PHI3}
    assert (LLAMA.module, GEMMA3.module, PHI3.module) == (Llama, Gemma3, Llama)
    assert for_hf_model_type("llama") is for_hf_model_type("mistral") is LLAMA
    assert [for_hf_model_type(t) for t in ("qwen2", "qwen3", "phi3")] == [QWEN2, QWEN3, PHI3]


@pytest.mark.parametrize("arch", list(ARCHITECTURES.values()), ids=list(ARCHITECTURES))
def test_entry_names_agree(arch) -> None:
    """Every GGUF name maps to a tensor the model expects (or to a stored fused one the readers split into
    expected parts), and every expected layer tensor has one GGUF name and one module parameter that reads
    it."""
    per_layer = arch.layer_tensors()
    assert len(per_layer) == len(set(per_layer))
    assert sorted(arch.gguf_names.values()) == sorted(arch.stored_layer_tensors())
    for parts in arch.stored_fused.values():
        assert set(parts) <= set(per_layer)
    assert set(arch.layer_biases()) <= set(per_layer)
    fused = [part for parts in arch.fused_linears.values() for part in parts]
    assert sorted([*arch.layer_norms, *arch.extra_layer_tensors, *fused]) == sorted(per_layer)
    assert (arch.extra_layer_state is None) == (not arch.extra_layer_tensors)


def test_unknown_architecture_is_refused_by_name() -> None:
    with pytest.raises(ModelLoadError) as e:
        architecture("falcon")
    assert str(e.value) == ("unsupported architecture 'falcon' (supported GGUF architectures: llama, gemma3, qwen2, "
                            "qwen3, phi3; Hugging Face model_types: llama, mistral, qwen2, qwen3, phi3)")
    with pytest.raises(ModelLoadError) as e:
        model_args({"model_type": "falcon"}, tie_embeddings=True)
    assert str(e.value) == ("unsupported model_type 'falcon' (supported: llama, mistral, qwen2, qwen3, phi3; "
                            "as GGUF: llama, gemma3, qwen2, qwen3, phi3)")


def test_gguf_of_an_unknown_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "falcon.gguf"
    writer = gguf.GGUFWriter(str(path), "falcon")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError) as e:
        read_gguf(path)
    assert str(e.value) == (f"{path}: unsupported architecture 'falcon' (supported GGUF architectures: llama, "
                            "gemma3, qwen2, qwen3, phi3; Hugging Face model_types: llama, mistral, qwen2, qwen3, phi3)")
