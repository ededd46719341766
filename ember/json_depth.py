"""JSON that a client sends inside a string (a response_format schema, a job's extraBody, a dataset line)
or as a free-form object is parsed and walked by recursive code: Python's json module, pydantic, llguidance,
the error echo. Nested deep enough, any of them raises RecursionError (a 500 with a traceback) or worse.
Here such JSON is parsed and measured without recursion of ours, and anything nested deeper than
MAX_JSON_DEPTH is a 400 naming the field.
"""

from __future__ import annotations

import json
from typing import Any

from ember.errors import InvalidRequest

MAX_JSON_DEPTH = 64
"""Levels of arrays and objects. A JSON schema nests two levels per object level (properties, name), so
this admits schemas 30 objects deep, far past any real one, and stays far below the ~1,000 frames where
Python's recursion limit sits."""


def depth_exceeds(obj: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `obj` (parsed JSON: dicts, lists, scalars) nests more than `limit` levels; iterative."""
    if not isinstance(obj, (dict, list)):
        return False
    stack: list[tuple[dict | list, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects"


def too_deep(param: str, limit: int = MAX_JSON_DEPTH) -> InvalidRequest:
    return InvalidRequest(f"{param}: JSON nested deeper than {limit} levels of arrays and objects", param=param)


def check_depth(obj: Any, param: str, limit: int = MAX_JSON_DEPTH) -> Any:
    """`obj` itself, or InvalidRequest naming `param` when it nests deeper than `limit`."""
    if isinstance(obj, (dict, list)) and depth_exceeds(obj, limit):
        raise too_deep(param, limit)
    return obj


def loads_bounded(text: str | bytes, param: str, limit: int = MAX_JSON_DEPTH) -> Any:
    """json.loads, with nesting past `limit` (even past the interpreter's recursion limit) an InvalidRequest
    naming `param`. Malformed JSON still raises ValueError, for the caller's own message."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise too_deep(param, limit) from None
    return check_depth(obj, param, limit)
