"""ember's own tool prompt, for models whose chat template knows no tools (SmolLM2, Gemma 3).

The definitions go into the system message (one is created when the conversation has none): a short
fixed instruction, then one JSON object per tool (OpenAI's function object: name and description
verbatim, parameters). Earlier calls are written into their assistant turn as the model is asked to
write them; tool results become user turns, so any template that knows user and assistant renders them.
"""

from __future__ import annotations

import json

from ember.pipeline.request import Message
from ember.pipeline.tool_format import ToolFormat
from ember.pipeline.tools import ToolSet


def tool_instruction(fmt: ToolFormat) -> str:
    example = f'{fmt.open}\n{{"name": "<function name>", "{fmt.arguments_key}": <arguments as a JSON object>}}\n{fmt.close}'
    return ("You can call the functions below. To call one, answer with exactly this and nothing else, "
            f"one block per call:\n{example}\nFunctions:")


def tools_block(tools: ToolSet, fmt: ToolFormat) -> str:
    lines = [json.dumps(t.as_function(), ensure_ascii=False) for t in tools.tools]
    return tool_instruction(fmt) + "\n" + "\n".join(lines)


def tool_result_text(m: Message) -> str:
    return f"<tool_response>\n{m.content}\n</tool_response>"


def generic_messages(messages: list[Message], tools: ToolSet | None, fmt: ToolFormat) -> list[Message]:
    """The conversation with tools written as plain system / user / assistant text."""
    out: list[Message] = []
    after_result = False
    for m in messages:
        if m.role == "tool":
            text = tool_result_text(m)
            if after_result:
                # Results of one turn's calls form one user turn (templates that alternate turns need it).
                out[-1] = Message("user", out[-1].content + "\n" + text)
            else:
                out.append(Message("user", text))
            after_result = True
            continue
        after_result = False
        if m.tool_calls:
            calls = "\n".join(fmt.render_call(c) for c in m.tool_calls)
            out.append(Message("assistant", f"{m.content}\n{calls}" if m.content else calls))
        else:
            out.append(Message(m.role, m.content))
    if tools is not None and tools.tools:
        block = tools_block(tools, fmt)
        if out and out[0].role == "system":
            out[0] = Message("system", f"{out[0].content}\n\n{block}" if out[0].content else block)
        else:
            out.insert(0, Message("system", block))
    return out
