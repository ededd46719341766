"""The chat adapter's reading of tools: wire definitions, choices and history turns as the pipeline's
ToolSet and Messages, every bad value a 400 naming its field (AGENT-APIS T5, T8, T9)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import jsonschema
import jsonschema.exceptions

from ember.errors import InvalidRequest
from ember.json_depth import check_depth
from ember.pipeline.request import Message
from ember.pipeline.tools import ToolCall, ToolDef, ToolMode, ToolSet
from ember.protocol.schemas import ChatCompletionRequest, ChatMessage, FunctionDef

NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}
"""What `parameters` omitted means (T5): a function of no arguments."""


def _definition(fn: FunctionDef, where: str, param: str) -> ToolDef:
    if not isinstance(fn.name, str) or not NAME.fullmatch(fn.name):
        raise InvalidRequest(f"{where}.name must be 1 to 64 letters, digits, '_' or '-', got "
                             f"{json.dumps(fn.name)[:80]}", param=param, code="invalid_tool_name")
    params = EMPTY_PARAMETERS if fn.parameters is None else fn.parameters
    if not isinstance(params, dict):
        raise InvalidRequest(f"{where}.parameters must be a JSON schema object", param=param)
    check_depth(params, param)
    kind = params.get("type", "object")
    if kind != "object" and not (isinstance(kind, list) and kind == ["object"]):
        raise InvalidRequest(f"{where}.parameters must be an object schema (type \"object\"), got type "
                             f"{json.dumps(kind)[:40]}", param=param)
    try:
        jsonschema.validators.validator_for(params).check_schema(params)
    except jsonschema.exceptions.SchemaError as e:
        raise InvalidRequest(f"{where}.parameters is not a valid JSON Schema: {e.message[:200]}",
                             param=param) from e
    return ToolDef(fn.name, fn.description, json.dumps(params, ensure_ascii=False))


def _definitions(req: ChatCompletionRequest) -> tuple[tuple[ToolDef, ...], str]:
    """The functions offered, and the field they came in."""
    if req.tools is not None and req.functions is not None:
        raise InvalidRequest("send tools or the deprecated functions, not both", param="functions")
    defs: list[ToolDef] = []
    if req.functions is not None:
        param = "functions"
        defs = [_definition(fn, f"functions[{i}]", param) for i, fn in enumerate(req.functions)]
    else:
        param = "tools"
        for i, t in enumerate(req.tools or ()):
            if t.type != "function":
                raise InvalidRequest(f"tools[{i}].type must be \"function\", got {json.dumps(t.type)[:40]}",
                                     param=param)
            if t.function is None:
                raise InvalidRequest(f"tools[{i}].function is required", param=param)
            defs.append(_definition(t.function, f"tools[{i}].function", param))
    seen: set[str] = set()
    for d in defs:
        if d.name in seen:
            raise InvalidRequest(f"two tools are named {d.name!r}: names must be unique", param=param,
                                 code="duplicate_tool_name")
        seen.add(d.name)
    return tuple(defs), param


def _named(choice: dict[str, Any], param: str, legacy: bool) -> str:
    """The function a named choice names: `{"type": "function", "function": {"name"}}`,
    `{"type": "function", "name"}`, or the legacy `function_call: {"name"}`."""
    if not legacy and choice.get("type") != "function":
        raise InvalidRequest(f"{param} must be auto, none, required or {{\"type\": \"function\", \"function\": "
                             "{\"name\": ...}}", param=param)
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
    if not isinstance(name, str):
        raise InvalidRequest(f"{param} names no function (expected function.name)", param=param)
    return name


def tool_set(req: ChatCompletionRequest) -> ToolSet | None:
    """The request's tools and choice; None when it offers none."""
    defs, defs_param = _definitions(req)
    if req.tool_choice is not None:
        choice, param, legacy = req.tool_choice, "tool_choice", False
    else:
        choice, param, legacy = req.function_call, "function_call", True
    mode, forced = ToolMode.AUTO, None
    if isinstance(choice, str):
        allowed = ("auto", "none") if legacy else ("auto", "none", "required", "any")
        if choice not in allowed:
            raise InvalidRequest(f"{param} must be one of {', '.join(allowed)} or a named function, got "
                                 f"{json.dumps(choice)[:40]}", param=param)
        mode = ToolMode.REQUIRED if choice in ("required", "any") else ToolMode(choice)
    elif isinstance(choice, dict):
        mode, forced = ToolMode.NAMED, _named(choice, param, legacy)
    if mode in (ToolMode.REQUIRED, ToolMode.NAMED) and not defs:
        raise InvalidRequest(f"{param} {'names a function' if forced else 'requires a call'} but the request "
                             "has no tools", param=param)
    if forced is not None and forced not in {d.name for d in defs}:
        raise InvalidRequest(f"{param} names {forced!r}, which is not among the request's {defs_param}",
                             param=param)
    if not defs:
        return None
    return ToolSet(defs, mode, forced, parallel=req.parallel_tool_calls is not False)


def history_messages(messages: Sequence[ChatMessage]) -> tuple[Message, ...]:
    """The wire messages as the pipeline's: tool calls typed, results tied to the call they answer (T8);
    the legacy `function` role and `function_call` read as tool results and calls."""
    out: list[Message] = []
    calls: dict[str, str] = {}
    for i, m in enumerate(messages):
        # "developer" is OpenAI's new name for the system role; templates know only "system".
        role = "system" if m.role == "developer" else m.role
        if role == "tool":
            if m.tool_call_id is None or m.tool_call_id not in calls:
                said = "has no tool_call_id" if m.tool_call_id is None else \
                    f"answers {m.tool_call_id!r}, which no earlier assistant message called"
                raise InvalidRequest(f"messages[{i}] (a tool result) {said}", param="tool_call_id",
                                     code="unknown_tool_call_id")
            out.append(Message("tool", m.text(), tool_call_id=m.tool_call_id, name=m.name or calls[m.tool_call_id]))
            continue
        if role == "function":
            out.append(Message("tool", m.text(), name=m.name))
            continue
        tool_calls: list[ToolCall] = []
        if role == "assistant":
            for c in m.tool_calls or ():
                tool_calls.append(ToolCall(c.id, c.function.name, c.function.arguments))
                calls[c.id] = c.function.name
            if m.function_call is not None:
                tool_calls.append(ToolCall(f"call_{i:08d}", m.function_call.name, m.function_call.arguments))
        elif m.tool_calls or m.function_call is not None:
            raise InvalidRequest(f"messages[{i}]: only assistant messages carry tool calls", param="tool_calls")
        out.append(Message(role, m.text(), tuple(tool_calls)))
    return tuple(out)
