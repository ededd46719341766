"""The model a server answers for: its names, tokenizer, context length, grammar compiler and chat template."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

from ember.engine.grammar import GrammarCompiler
from ember.pipeline.chat_template import ChatTemplate, chat_template_of
from ember.tokenizer import Tokenizer


@dataclass
class ServedModel:
    model_id: str
    aliases: tuple[str, ...]
    tokenizer: Tokenizer
    max_model_len: int
    grammars: GrammarCompiler | None = None
    """Validates response_format grammars (the engine's own compiler, so each is compiled once)."""
    created: int = field(default_factory=lambda: int(time.time()))

    @cached_property
    def chat_template(self) -> ChatTemplate | None:
        """The model's chat template, compiled once; None when the checkpoint has none."""
        return chat_template_of(self.tokenizer)

    def answers_to(self, name: str) -> bool:
        return name == self.model_id or name in self.aliases
