"""Typed dependencies: what a route needs, taken from the app's state (set up in app.py's lifespan)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated

from fastapi import Depends, Request

from ember.api.chat_template import ChatTemplate, chat_template_of
from ember.engine.client import EngineClient
from ember.engine.grammar import GrammarCompiler
from ember.errors import NotFound, Unauthorized
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


@dataclass
class AppState:
    client: EngineClient
    model: ServedModel
    api_keys: tuple[str, ...] = ()


def get_state(request: Request) -> AppState:
    return request.app.state.ember


def check_api_key(request: Request) -> None:
    st: AppState = request.app.state.ember
    if not st.api_keys:
        return
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if token not in st.api_keys:
        raise Unauthorized("invalid or missing API key: send 'Authorization: Bearer <key>'")


StateDep = Annotated[AppState, Depends(get_state)]
AuthDep = Depends(check_api_key)


def resolve_served(state: AppState, name: str) -> ServedModel:
    if state.model.answers_to(name):
        return state.model
    raise NotFound(f"model {name!r} is not served here; this server has {state.model.model_id!r}",
                   param="model")
