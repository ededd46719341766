"""Tokenizer: one face over a `tokenizers.Tokenizer`, built from GGUF metadata or a tokenizer.json.

The engine works in token ids only; this is where text meets ids. Special tokens written in a prompt
(`<|im_start|>`) encode to their single id, and BOS/EOS are added here (never by the backend's
post-processor) so both checkpoint kinds behave the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from ember.errors import ModelLoadError

# llama.cpp's token_type values (gguf.TokenType); repeated here so this leaf needs no gguf import.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Turn and document terminators a chat model may emit instead of its configured eos; generation must
# stop on them too (llama.cpp treats the same texts as end-of-generation).
END_OF_TURN_TEXTS = frozenset({
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
    "</s>", "<|end_of_text|>",
})

# Split patterns for byte-level vocabularies, keyed by GGUF `tokenizer.ggml.pre`. The merges were
# learned on text split this way; another split gives valid but different (worse) ids.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class BytePre:
    """How a byte-level vocabulary named by GGUF `tokenizer.ggml.pre` splits text before its merges."""

    split: str | None
    """A regex whose matches (and the text between them) are the words, applied first; None: none."""
    gpt2_regex: bool
    """Whether ByteLevel then splits with GPT-2's own regex as well."""
    ignore_merges: bool = False
    """Whether a word that is itself in the vocabulary is taken whole (tiktoken's rule) before merging."""
    nfc: bool = False
    """Whether text is NFC-normalized first (the family's own tokenizer.json does it: Qwen's)."""


_BYTE_LEVEL_PRE: dict[str, BytePre] = {
    "default": BytePre(None, gpt2_regex=True),
    "gpt2": BytePre(None, gpt2_regex=True),
    # SmolLM / StarCoder: every digit is its own word, then GPT-2 splitting.
    "smollm": BytePre(r"\p{N}", gpt2_regex=True),
    "starcoder": BytePre(r"\p{N}", gpt2_regex=True),
    # Llama 3.x: tiktoken's pattern and rule.
    "llama-bpe": BytePre(_LLAMA3_SPLIT, gpt2_regex=False, ignore_merges=True),
    "llama3": BytePre(_LLAMA3_SPLIT, gpt2_regex=False, ignore_merges=True),
    # Qwen 2, 2.5 and 3 (all name their vocabulary "qwen2"): single digits, NFC first.
    "qwen2": BytePre(_QWEN2_SPLIT, gpt2_regex=False, nfc=True),
}


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used to spell byte-level tokens."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


class Tokenizer:
    """Text <-> token ids, plus the special ids and chat template the engine and API need."""

    def __init__(self, hf: HFTokenizer, *, bos_id: int | None, eos_id: int | None, add_bos: bool = False,
                 add_eos: bool = False, chat_template: str | None = None, extra_stop_ids: Iterable[int] = (),
                 byte_level: bool = True) -> None:
        self.hf = hf
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos and bos_id is not None
        self.add_eos = add_eos and eos_id is not None
        self.chat_template = chat_template
        self.byte_level = byte_level
        added = hf.get_added_tokens_decoder()
        self._added: dict[int, str] = {i: t.content for i, t in added.items()}
        self._special = frozenset(i for i, t in added.items() if t.special)
        self.vocab_size: int = max(hf.get_vocab(with_added_tokens=True).values()) + 1
        eog = {i for i in self._special if self._added[i] in END_OF_TURN_TEXTS}
        self.stop_ids: frozenset[int] = frozenset(
            {i for i in (eos_id, *extra_stop_ids) if i is not None} | eog)
        self._unbyte = {c: b for b, c in byte_to_unicode().items()}

    # -- construction --------------------------------------------------------------------------------

    @classmethod
    def from_gguf_fields(cls, meta: dict[str, Any]) -> Tokenizer:
        """From llama.cpp's `tokenizer.*` metadata (values already decoded to Python types)."""
        kind = meta.get("tokenizer.ggml.model")
        tokens: list[str] = list(meta.get("tokenizer.ggml.tokens") or [])
        if not tokens:
            raise ModelLoadError("GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
        types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
        if kind == "gpt2":
            hf = _byte_level_bpe(tokens, types, meta)
        elif kind == "llama":
            hf = _sentencepiece_bpe(tokens, types, meta)
        else:
            raise ModelLoadError(f"unsupported GGUF tokenizer model {kind!r} (tokenizer.ggml.model; supported: "
                                 "'gpt2' (byte-level BPE), 'llama' (SentencePiece BPE))")
        _register_added(hf, tokens, types)
        extra = [meta.get(k) for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")]
        return cls(
            hf,
            bos_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_id=meta.get("tokenizer.ggml.eos_token_id"),
            # llama.cpp adds BOS to sentencepiece vocabularies that do not say otherwise.
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama")),
            add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
            chat_template=meta.get("tokenizer.chat_template"),
            extra_stop_ids=[i for i in extra if isinstance(i, int)],
            byte_level=kind == "gpt2",
        )

    @classmethod
    def from_file(cls, path: str | Path, config: dict[str, Any] | None = None) -> Tokenizer:
        """From a Hugging Face tokenizer.json; ids and template come from the JSON files beside it.

        `config` is the model's parsed config.json when the caller has it (else it is read here).
        """
        path = Path(path)
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise ModelLoadError(f"cannot read tokenizer {path}: {' '.join(str(e).split())}") from e
        if hf.decoder is None:
            hf.decoder = implied_decoder(json.loads(hf.to_str()), path)
        folder = path.parent
        tok_cfg = _read_json(folder / "tokenizer_config.json")
        gen_cfg = _read_json(folder / "generation_config.json")
        config = config if config is not None else _read_json(folder / "config.json")

        def token_id(name: str) -> int | None:
            tok = tok_cfg.get(name)
            text = tok.get("content") if isinstance(tok, dict) else tok
            found = hf.token_to_id(text) if isinstance(text, str) else None
            return found if found is not None else _first_id(config.get(f"{name}_id"))

        bos_id, eos_id = token_id("bos_token"), token_id("eos_token")
        add_bos = tok_cfg.get("add_bos_token")
        if add_bos is None:  # no flag: do what the file's own post-processor would do
            add_bos = bos_id is not None and hf.encode("a").ids[:1] == [bos_id]
        gen_eos = gen_cfg.get("eos_token_id")
        extra = gen_eos if isinstance(gen_eos, list) else [gen_eos]
        return cls(hf, bos_id=bos_id, eos_id=eos_id, add_bos=bool(add_bos),
                   add_eos=bool(tok_cfg.get("add_eos_token", False)),
                   chat_template=_chat_template(tok_cfg, folder),
                   extra_stop_ids=[i for i in extra if isinstance(i, int)],
                   byte_level=_is_byte_level(hf))

    @cached_property
    def max_token_chars(self) -> int:
        """The most characters one token stands for: its bytes, which are at least its characters.

        So a text of c characters is at least c / max_token_chars tokens, a bound that costs a len() where
        tokenizing a 50 MB prompt to learn it cannot fit took 50 s and 6 GB. (A normalizer that composes
        characters, Qwen's NFC, widens the bound by the most characters one composed character replaces.)"""
        longest = max((len(self.token_bytes(i)) for i in range(self.vocab_size) if self._has_id(i)), default=1)
        longest = max(1, longest, *(len(t.encode()) for t in self._added.values()))
        # NFC / NFKC composition joins up to four characters into one (Greek and Vietnamese letters with
        # stacked marks), so a text's characters may outnumber the bytes it is tokenized from by that much.
        return longest * 4 if _composes(self.hf) else longest

    def _has_id(self, token_id: int) -> bool:
        return token_id in self._added or self.hf.id_to_token(token_id) is not None

    # -- use -----------------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # encode_batch releases the GIL while it works (encode holds it): a 5 MB prompt took 5 s, and the
        # event loop, every other request and uvicorn's keep-alive timers stood still for all of it.
        # Same ids; no slower on short text (14 us against 19 us).
        ids: list[int] = self.hf.encode_batch([text], add_special_tokens=False)[0].ids
        if add_special_tokens and self.add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if add_special_tokens and self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    def id_to_piece(self, token_id: int) -> str:
        """The token alone as text (a lone fragment of a UTF-8 character shows as U+FFFD)."""
        return self.hf.decode([token_id], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes the token stands for; concatenating them rebuilds the UTF-8 text."""
        if token_id in self._added:
            return self._added[token_id].encode()
        piece = self.hf.id_to_token(token_id)
        if piece is None:
            raise ValueError(f"token id {token_id} is outside the vocabulary")
        if self.byte_level:
            return bytes(self._unbyte[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode()


# -- building from GGUF metadata ---------------------------------------------------------------------

def _byte_level_bpe(tokens: list[str], types: list[int], meta: dict[str, Any]) -> HFTokenizer:
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _BYTE_LEVEL_PRE:
        raise ModelLoadError(f"unsupported GGUF pre-tokenizer {pre!r} (tokenizer.ggml.pre; supported: "
                             f"{', '.join(sorted(_BYTE_LEVEL_PRE))})")
    spec = _BYTE_LEVEL_PRE[pre]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    hf = HFTokenizer(models.BPE(_vocab(tokens), merges, ignore_merges=spec.ignore_merges))
    if spec.nfc:
        hf.normalizer = normalizers.NFC()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=spec.gpt2_regex)
    hf.pre_tokenizer = byte_level if spec.split is None else pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(spec.split), behavior="isolated"), byte_level])
    hf.decoder = decoders.ByteLevel()
    return hf


def _sentencepiece_bpe(tokens: list[str], types: list[int], meta: dict[str, Any]) -> HFTokenizer:
    vocab = _vocab(tokens)
    raw = meta.get("tokenizer.ggml.merges")
    if raw:
        merges = [tuple(m.split(" ", 1)) for m in raw]
    else:
        scores = list(meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
        merges = _merges_from_scores(tokens, types, scores, vocab)
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    hf = HFTokenizer(models.BPE(vocab, merges, unk_token=tokens[unk] if unk is not None else None,
                                fuse_unk=True, byte_fallback=True))
    if meta.get("tokenizer.ggml.add_space_prefix", True):
        hf.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        strip = [decoders.Strip(" ", 1, 0)]
    else:
        hf.normalizer = normalizers.Replace(" ", "\u2581")
        strip = []
    hf.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    return hf


def _merges_from_scores(tokens: list[str], types: list[int], scores: list[float],
                        vocab: dict[str, int]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges the pair whose result scores best; a GGUF keeps only the scores, so
    every (left, right) split of a normal token into two known pieces becomes a merge ranked by them."""
    ranked: list[tuple[float, int, int, str, str]] = []
    for piece, kind, score in zip(tokens, types, scores, strict=True):
        if kind != NORMAL or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a few files repeat a piece; the first id is the one llama.cpp matches
    return vocab


def _register_added(hf: HFTokenizer, tokens: list[str], types: list[int]) -> None:
    """Control tokens become special (whole in text, dropped by skip_special_tokens); user-defined
    ones become plain added tokens (whole in text, always decoded)."""
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, k in zip(tokens, types, strict=True) if k == CONTROL])
    hf.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, k in zip(tokens, types, strict=True) if k == USER_DEFINED])


# -- reading Hugging Face side files -----------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e
    return data if isinstance(data, dict) else {}


def _first_id(value: object) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) else None


def _chat_template(tok_cfg: dict[str, Any], folder: Path) -> str | None:
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return template if isinstance(template, str) else None


def implied_decoder(spec: dict[str, Any], path: Path) -> decoders.Decoder:
    """The decoder a tokenizer.json without one needs, as its pre-tokenizer, normalizer and model imply it.

    Byte-level BPE spells bytes as GPT-2's printable characters, which only ByteLevel turns back; a
    SentencePiece-style vocabulary writes spaces as U+2581 and may fall back to <0xNN> byte pieces. Any
    other tokenizer cannot be decoded faithfully without knowing its rules, so it is refused by name."""
    pre, norm, model = spec.get("pre_tokenizer"), spec.get("normalizer"), spec.get("model") or {}
    if _has_type(pre, "ByteLevel"):
        return decoders.ByteLevel()
    metaspace = _find_type(pre, "Metaspace")
    if metaspace is not None:
        return decoders.Metaspace(replacement=metaspace.get("replacement", "\u2581"),
                                  prepend_scheme=metaspace.get("prepend_scheme", "always"),
                                  split=metaspace.get("split", True))
    replace = _find_type(norm, "Replace")
    if replace is not None and replace.get("content") == "\u2581":
        steps: list[decoders.Decoder] = [decoders.Replace("\u2581", " ")]
        if model.get("byte_fallback"):
            steps.append(decoders.ByteFallback())
        steps.append(decoders.Fuse())
        if _has_type(norm, "Prepend"):
            steps.append(decoders.Strip(" ", 1, 0))
        return decoders.Sequence(steps)
    raise ModelLoadError(
        f"{path} has no decoder, and its pre-tokenizer and normalizer imply none (byte-level BPE or a "
        f"SentencePiece-style \u2581 vocabulary): add the model's \"decoder\" to {path.name}")


def _find_type(node: Any, kind: str) -> dict[str, Any] | None:
    """The first component of type `kind` in a tokenizer.json component, searching its Sequences."""
    if isinstance(node, dict):
        if node.get("type") == kind:
            return node
        for child in (*node.get("pretokenizers", ()), *node.get("normalizers", ())):
            found = _find_type(child, kind)
            if found is not None:
                return found
    return None


def _has_type(node: Any, kind: str) -> bool:
    return _find_type(node, kind) is not None


def _composes(hf: HFTokenizer) -> bool:
    # The normalizer's own JSON: the whole tokenizer's would serialize the vocabulary too.
    norm = json.loads(hf.normalizer.__getstate__()) if hf.normalizer is not None else None
    return _has_type(norm, "NFC") or _has_type(norm, "NFKC")


def _is_byte_level(hf: HFTokenizer) -> bool:
    spec = json.loads(hf.to_str())
    return '"ByteLevel"' in json.dumps(spec.get("decoder"))
