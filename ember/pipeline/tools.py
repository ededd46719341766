"""Tools in the pipeline's terms: the functions a request offers the model and how it may call them.

The adapter validates the wire definitions (names, schemas, the choice) and builds these; rendering,
grammars and parsing read only these types.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any


class ToolMode(enum.StrEnum):
    NONE = "none"
    """Definitions are rendered, the output is free text and never parsed as calls."""
    AUTO = "auto"
    """Text or calls: a call is constrained from the moment the model starts one."""
    REQUIRED = "required"
    """One or more calls (exactly one when `parallel` is False), nothing else."""
    NAMED = "named"
    """Exactly one call of `ToolSet.forced`."""


@dataclass(frozen=True)
class ToolDef:
    name: str
    description: str | None
    parameters_json: str
    """The function's parameters JSON schema as JSON text (frozen: a dict would be mutable)."""

    @property
    def parameters(self) -> dict[str, Any]:
        return json.loads(self.parameters_json)

    def as_function(self) -> dict[str, Any]:
        """OpenAI's `function` object, as chat templates and the generic prompt show it."""
        out: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            out["description"] = self.description
        out["parameters"] = self.parameters
        return out


@dataclass(frozen=True)
class ToolSet:
    tools: tuple[ToolDef, ...]
    mode: ToolMode = ToolMode.AUTO
    forced: str | None = None
    """The function a NAMED choice calls."""
    parallel: bool = True
    """Several calls in one answer (False: at most one)."""

    def __post_init__(self) -> None:
        if (self.mode == ToolMode.NAMED) != (self.forced is not None):
            raise ValueError("a named tool choice, and only it, names a function")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tools)

    def get(self, name: str) -> ToolDef | None:
        return next((t for t in self.tools if t.name == name), None)

    @property
    def constrained(self) -> bool:
        """Whether the output is parsed for calls (and a grammar shapes them)."""
        return self.mode != ToolMode.NONE and bool(self.tools)

    def callable(self) -> tuple[ToolDef, ...]:
        """The functions the answer may call."""
        if self.mode == ToolMode.NAMED:
            return tuple(t for t in self.tools if t.name == self.forced)
        return self.tools


@dataclass(frozen=True)
class ToolCall:
    """A call in the history (an earlier assistant turn) or in an answer."""

    id: str
    name: str
    arguments: str
    """JSON text, as the wire carries it."""

    def arguments_value(self) -> Any:
        """The arguments as a JSON value for templates that write them with `tojson`; text that is not
        JSON stays the string it is."""
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments
