"""Tokenizer built from GGUF metadata, with the tokenizer transformers builds from the same file as oracle.

One known, deliberate difference: SmolLM2's GGUF names its pre-tokenizer "smollm" (llama.cpp: split every
digit off first, then GPT-2's split; the original tokenizer.json does the same with a Digits step).
transformers ignores that key and uses GPT-2's split alone, which groups whitespace differently when two
or more spaces precede a digit. Those strings are tested on their own below against the expected pieces.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from ember.errors import ModelLoadError
from ember.model.checkpoint import Checkpoint
from ember.model.gguf import read_gguf
from ember.tokenizer import CONTROL, USER_DEFINED, Tokenizer

STRINGS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's fine, won't they? We've seen it.",
    "In 2024 there were 3.14159 apples and 1,000,000 pears (x1.5).",
    "naïve café résumé Ångström straße",
    "日本語のテキスト、中文字符和한국어.",
    "Привет, мир! مرحبا بالعالم שלום",
    "emoji: 🙂👍🏽 👨‍👩‍👧‍👦 🇫🇷 ✨",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }\t// tab\tseparated",
    "   leading spaces and trailing spaces   ",
    "line one\n\n\nline two\r\nline three\t\t\tend",
    "multiple     internal      spaces",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after eot<file_sep>path/to/file.py",
    "almost special: <|im_start and im_end|> <| |>",
    "",
    " ",
    "\n",
    "a",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
    "URL: https://example.com/path?q=1&r=two#frag",
]

# Two or more spaces before a digit: where llama.cpp's "smollm" split and transformers' GGUF tokenizer part.
DIGIT_AFTER_SPACES = {
    "x  42": ["x", "ĠĠ", "4", "2"],
    "a   1": ["a", "ĠĠĠ", "1"],
    "\n  7": ["ĊĠĠ", "7"],
}


@pytest.fixture(scope="module")
def tok(smol_checkpoint: Checkpoint) -> Tokenizer:
    return smol_checkpoint.tokenizer


@pytest.mark.parametrize("text", STRINGS)
def test_encode_matches_transformers(tok: Tokenizer, transformers_gguf_tokenizer: Any, text: str) -> None:
    assert tok.encode(text) == transformers_gguf_tokenizer.encode(text)
    assert tok.encode(text, add_special_tokens=False) == transformers_gguf_tokenizer.encode(
        text, add_special_tokens=False)


@pytest.mark.parametrize("text", STRINGS)
def test_decode_matches_transformers(tok: Tokenizer, transformers_gguf_tokenizer: Any, text: str) -> None:
    ids = tok.encode(text)
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == transformers_gguf_tokenizer.decode(
            ids, skip_special_tokens=skip)
    assert tok.decode(ids) == text


def test_decode_arbitrary_ids_matches_transformers(tok: Tokenizer, transformers_gguf_tokenizer: Any) -> None:
    # Random ids split multi-byte characters across tokens: both sides must render the pieces alike.
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 12))]
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == transformers_gguf_tokenizer.decode(
                ids, skip_special_tokens=skip), ids


@pytest.mark.parametrize(("text", "pieces"), list(DIGIT_AFTER_SPACES.items()))
def test_smollm_digit_split(tok: Tokenizer, text: str, pieces: list[str]) -> None:
    assert [tok.hf.id_to_token(i) for i in tok.encode(text)] == pieces
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", STRINGS + list(DIGIT_AFTER_SPACES))
def test_token_bytes_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()


def test_every_token_piece_is_its_bytes_as_text(tok: Tokenizer) -> None:
    # id_to_piece shows what decode([id]) shows; a lone fragment of a UTF-8 character shows as U+FFFD.
    for i in range(tok.vocab_size):
        assert tok.id_to_piece(i) == tok.token_bytes(i).decode("utf-8", errors="replace"), i
    assert tok.id_to_piece(tok.encode(" world")[0]) == " world"


def test_special_ids(tok: Tokenizer, transformers_gguf_tokenizer: Any) -> None:
    assert tok.vocab_size == 49152
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.hf.id_to_token(2) == "<|im_end|>" == transformers_gguf_tokenizer.eos_token
    # eos is <|im_end|>; <|endoftext|> (0) also ends generation, as in llama.cpp.
    assert tok.stop_ids == frozenset({0, 2})
    assert tok.add_bos is False
    assert tok.chat_template is not None and "<|im_start|>" in tok.chat_template
    assert [i for i in range(tok.vocab_size) if tok.is_special(i)] == list(range(17))


def test_special_tokens_are_single_ids_and_skippable(tok: Tokenizer) -> None:
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>"


def test_user_defined_tokens_stay_whole_and_are_not_skipped(smol_tokenizer_meta: dict[str, Any]) -> None:
    types = list(smol_tokenizer_meta["tokenizer.ggml.token_type"])
    assert types[5] == CONTROL  # <file_sep>; relabel it as a user-defined (added, not special) token
    types[5] = USER_DEFINED
    tok = Tokenizer.from_gguf_fields({**smol_tokenizer_meta, "tokenizer.ggml.token_type": types})
    ids = tok.encode("a<file_sep>b")
    assert 5 in ids and not tok.is_special(5)
    assert tok.decode(ids, skip_special_tokens=True) == "a<file_sep>b"


def test_unsupported_tokenizer_model(smol_tokenizer_meta: dict[str, Any]) -> None:
    with pytest.raises(ModelLoadError, match="'bert'"):
        Tokenizer.from_gguf_fields({**smol_tokenizer_meta, "tokenizer.ggml.model": "bert"})
    with pytest.raises(ModelLoadError, match="pre-tokenizer 'mystery'"):
        Tokenizer.from_gguf_fields({**smol_tokenizer_meta, "tokenizer.ggml.pre": "mystery"})


# -- sentencepiece ("llama") vocabularies, from the tiny GGUF --------------------------------------------
# We follow llama.cpp (and the original sentencepiece Llama tokenizers): the dummy-prefix space is added
# to every text segment, even one that already starts with a space or follows a special token.
# transformers' GGUF tokenizer skips it in those two cases, so they are tested against llama.cpp's rule.

SPM_STRINGS = ["hello world", "the hello and the world", "Hello  World!", "trailing  ", "unknown: ß 🙂 中",
               "thing", "a", ""]


@pytest.fixture(scope="module")
def spm_pair(tiny_gguf: Any) -> tuple[Tokenizer, Any]:
    import transformers
    theirs = transformers.AutoTokenizer.from_pretrained(str(tiny_gguf.path.parent), gguf_file=tiny_gguf.path.name)
    return read_gguf(tiny_gguf.path).tokenizer, theirs


@pytest.mark.parametrize("text", SPM_STRINGS)
def test_sentencepiece_matches_transformers(spm_pair: tuple[Tokenizer, Any], text: str) -> None:
    ours, theirs = spm_pair
    assert ours.add_bos and ours.bos_id == 1 and ours.eos_id == 2
    ids = ours.encode(text)
    assert ids == theirs.encode(text)
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True) == text
    # The first piece carries sentencepiece's dummy-prefix space, which decoding strips again.
    pieces = b"".join(ours.token_bytes(i) for i in ours.encode(text, add_special_tokens=False))
    assert pieces == (" " + text).encode() if text else pieces == b""


def test_sentencepiece_dummy_prefix_like_llama_cpp(spm_pair: tuple[Tokenizer, Any]) -> None:
    ours, _ = spm_pair
    for text, pieces in {" hello": ["\u2581", "\u2581hello"], "  the": ["\u2581", "\u2581", "\u2581the"],
                         "<s>hello</s>the": ["<s>", "\u2581hello", "</s>", "\u2581the"]}.items():
        ids = ours.encode(text, add_special_tokens=False)
        assert [ours.hf.id_to_token(i) for i in ids] == pieces
    assert ours.decode(ours.encode(" hello"), skip_special_tokens=True) == " hello"
