"""Checkpoint readers against real files, with Hugging Face transformers as the oracle.

Tolerance for the SmolLM2 oracle: atol=1e-6, rtol=1e-6. Both sides dequantize the same Q4_1/Q8_0 blocks
with the same float32 arithmetic (fp16 scale times integer plus fp16 offset), so they agree to the last
bit today; the slack only absorbs a future reordering of that arithmetic (one float32 ulp is ~1e-8 at
these weights' magnitudes). The tiny float32 GGUF and the safetensors round trip must match exactly.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from ember.errors import ModelLoadError
from ember.model.args import ModelArgs
from ember.model.catalog import DEFAULT_MODEL, ModelRef, resolve_model
from ember.model.checkpoint import Checkpoint
from ember.model.formats import read_checkpoint
from ember.model.gguf import llama3_scaling_from_freqs, read_gguf, unpermute_rope_rows
from ember.model.hf import read_hf_dir
from ember.model.layers import rope_inv_freq

ATOL = RTOL = 1e-6


def test_embedded_model_args(smol_checkpoint: Checkpoint) -> None:
    a = smol_checkpoint.args
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.hidden_dim, a.vocab_size) == (576, 30, 9, 3, 1536, 49152)
    assert a.head_dim == 64
    assert a.tie_embeddings and "lm_head.weight" not in smol_checkpoint.tensors
    assert a.rope_theta == 100000.0 and a.rope_scaling is None
    assert a.max_seq_len == 8192
    assert a.norm_eps == pytest.approx(1e-5)


def test_embedded_tensor_shapes_are_out_by_in(smol_checkpoint: Checkpoint) -> None:
    t = smol_checkpoint.tensors
    assert all(v.dtype == torch.float32 for v in t.values())
    assert len(t) == 2 + 30 * 9
    assert t["model.embed_tokens.weight"].shape == (49152, 576)
    p = "model.layers.7."
    assert t[p + "self_attn.q_proj.weight"].shape == (576, 576)
    assert t[p + "self_attn.k_proj.weight"].shape == (192, 576)
    assert t[p + "self_attn.o_proj.weight"].shape == (576, 576)
    assert t[p + "mlp.gate_proj.weight"].shape == (1536, 576)
    assert t[p + "mlp.down_proj.weight"].shape == (576, 1536)
    assert t[p + "input_layernorm.weight"].shape == (576,)


def test_every_tensor_matches_transformers(smol_checkpoint: Checkpoint, transformers_gguf_model: Any) -> None:
    theirs = transformers_gguf_model.state_dict()
    ours = smol_checkpoint.tensors
    # transformers lists the tied output projection under its own name; we leave it out.
    assert set(theirs) - {"lm_head.weight"} == set(ours)
    for name, expected in theirs.items():
        got = ours["model.embed_tokens.weight" if name == "lm_head.weight" else name]
        if not torch.equal(got, expected):  # exact is the norm and far cheaper to check than closeness
            torch.testing.assert_close(got, expected.float(), atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")


def test_unpermute_rope_rows() -> None:
    # Per head, llama.cpp stores rotated partners (i, i + head_dim/2) next to each other; HF keeps halves.
    stored = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7, 10, 14, 11, 15, 12, 16, 13, 17], dtype=torch.float32)
    hf = unpermute_rope_rows(stored[:, None].expand(16, 3), n_heads=2)
    assert hf.shape == (16, 3)
    assert hf[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17]


def test_tiny_gguf_gives_back_the_hf_state_exactly(tiny_gguf: Any) -> None:
    ckpt = read_gguf(tiny_gguf.path)
    assert set(ckpt.tensors) == set(tiny_gguf.state)
    for name, expected in tiny_gguf.state.items():
        assert torch.equal(ckpt.tensors[name], expected), name
    a, cfg = ckpt.args, tiny_gguf.config
    assert (a.dim, a.n_heads, a.n_kv_heads, a.n_layers, a.hidden_dim) == (64, 4, 2, 2, 96)
    assert a.vocab_size == cfg.vocab_size and not a.tie_embeddings and a.max_seq_len == 256


def test_tiny_gguf_matches_what_transformers_reads(tiny_gguf: Any) -> None:
    import accelerate  # noqa: F401
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tiny_gguf.path.parent), gguf_file=tiny_gguf.path.name, dtype=torch.float32)
    ours = read_gguf(tiny_gguf.path).tensors
    for name, expected in model.state_dict().items():
        assert torch.equal(ours[name], expected), name


def test_gguf_is_found_by_magic_not_only_suffix(tiny_gguf: Any, tmp_path: Path) -> None:
    renamed = tmp_path / "weights.bin"
    shutil.copyfile(tiny_gguf.path, renamed)
    assert read_checkpoint(renamed).args.dim == 64


@pytest.mark.parametrize("tied", [True, False])
def test_hf_dir_round_trip(smol_checkpoint: Checkpoint, tmp_path: Path, tied: bool) -> None:
    import transformers
    tok = smol_checkpoint.tokenizer
    cfg = transformers.LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
        rope_theta=50000.0, rope_scaling={"rope_type": "linear", "factor": 2.0}, tie_word_embeddings=tied,
        bos_token_id=1, eos_token_id=2)
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path)
    tok.hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
         "chat_template": tok.chat_template}))

    ckpt = read_checkpoint(tmp_path)
    assert ckpt.source == str(tmp_path)
    assert read_hf_dir(tmp_path).tensors.keys() == ckpt.tensors.keys()
    expected = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert set(ckpt.tensors) == set(expected)
    for name, value in expected.items():
        assert torch.equal(ckpt.tensors[name], value), name
    a = ckpt.args
    assert (a.vocab_size, a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.hidden_dim) == (49152, 32, 2, 4, 2, 48)
    assert a.tie_embeddings is tied
    assert a.rope_theta == 50000.0 and a.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert a.max_seq_len == 512 and a.norm_eps == 1e-5 and a.head_dim == 8
    text = "<|im_start|>user\nHi there 👋<|im_end|>"
    assert ckpt.tokenizer.encode(text) == tok.encode(text)
    assert (ckpt.tokenizer.bos_id, ckpt.tokenizer.eos_id, ckpt.tokenizer.stop_ids) == (1, 2, tok.stop_ids)
    assert ckpt.tokenizer.chat_template == tok.chat_template and not ckpt.tokenizer.add_bos
    assert all(ckpt.tokenizer.token_bytes(i) == tok.token_bytes(i) for i in range(0, tok.vocab_size, 97))


@pytest.mark.parametrize("factor", [8.0, 32.0])
def test_llama3_rope_freqs_tensor_becomes_rope_scaling(factor: float) -> None:
    # Llama 3.x GGUFs store their RoPE scaling only as per-frequency divisors (rope_freqs.weight).
    args = ModelArgs(vocab_size=10, dim=256, n_layers=1, n_heads=4, n_kv_heads=4, hidden_dim=8, rope_theta=500000.0)
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    divisors = rope_inv_freq(args) / rope_inv_freq(replace(args, rope_scaling=scaling))
    assert llama3_scaling_from_freqs(args, divisors, Path("x.gguf")) == scaling
    with pytest.raises(ModelLoadError, match="rope_freqs"):
        llama3_scaling_from_freqs(args, divisors * 1.5, Path("x.gguf"))


# -- errors -------------------------------------------------------------------------------------------

def one_line_error(excinfo: pytest.ExceptionInfo[ModelLoadError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as e:
        read_checkpoint(tmp_path / "nope.gguf")
    assert "not found" in one_line_error(e)
    with pytest.raises(ModelLoadError) as e:
        read_gguf(tmp_path / "nope.gguf")
    assert "not found" in one_line_error(e)


def test_text_file_named_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelLoadError) as e:
        read_checkpoint(bogus)
    assert "model.gguf" in one_line_error(e)


def test_truncated_gguf(smol_ref: ModelRef, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smol_ref.path.read_bytes()[:3_000_000])  # whole header, partial tensor data
    with pytest.raises(ModelLoadError) as e:
        read_checkpoint(cut)
    assert "cannot read GGUF file" in one_line_error(e)


def test_non_model_file_and_empty_dir(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    for target in (notes, tmp_path):
        with pytest.raises(ModelLoadError) as e:
            read_checkpoint(target)
        assert "not a GGUF file or a Hugging Face model directory" in one_line_error(e)


def test_hf_dir_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError) as e:
        read_checkpoint(tmp_path)
    assert "safetensors" in one_line_error(e)


def test_hf_dir_missing_a_tensor(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    config = {"model_type": "llama", "vocab_size": 8, "hidden_size": 4, "num_hidden_layers": 1,
              "num_attention_heads": 1, "intermediate_size": 4, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({"model.embed_tokens.weight": torch.zeros(8, 4), "model.norm.weight": torch.ones(4)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelLoadError) as e:
        read_hf_dir(tmp_path)
    assert "lacks 9 expected tensor(s), e.g. model.layers.0.input_layernorm.weight" in one_line_error(e)


# -- catalog ------------------------------------------------------------------------------------------

def test_resolve_default_and_names() -> None:
    ref = resolve_model(None)
    assert ref.path.suffix == ".gguf" and ref.path.is_file()
    assert ref.model_id == "accounts/fireworks/models/smollm2-135m-instruct"
    assert DEFAULT_MODEL in ref.aliases
    assert resolve_model(DEFAULT_MODEL) == ref == resolve_model(ref.model_id)


def test_resolve_path(tiny_gguf: Any) -> None:
    ref = resolve_model(str(tiny_gguf.path))
    assert ref.path == tiny_gguf.path.resolve()
    assert ref.model_id == "accounts/fireworks/models/tiny-llama"


def test_resolve_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ModelLoadError) as e:
        resolve_model("no-such-model-anywhere")
    message = one_line_error(e)
    assert "no-such-model-anywhere" in message and DEFAULT_MODEL in message
