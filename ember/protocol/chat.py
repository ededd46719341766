"""The chat adapter: a ChatCompletionRequest as the pipeline's InferenceRequest over a conversation, its
events as a ChatCompletionResponse or stream chunks."""

from __future__ import annotations

from collections.abc import Sequence

from ember.errors import InvalidRequest
from ember.pipeline.generation import Generation
from ember.pipeline.request import Caller, Conversation, InferenceRequest, UsageKind
from ember.pipeline.served_model import ServedModel
from ember.pipeline.tools import ToolSet
from ember.protocol.endpoint import Endpoint
from ember.protocol.responses import Head, ResponseBuilder
from ember.protocol.schemas import ChatCompletionRequest, ChatMessage
from ember.protocol.tools import history_messages, tool_set
from ember.protocol.translate import (
    check_chat_bounds,
    inference_request,
    reject_invalid_text,
    reject_unsupported_chat,
)


def conversation(messages: Sequence[ChatMessage], truncate_to: int | None = None, safe: bool = False,
                 generation_prompt: bool = True, tools: ToolSet | None = None) -> Conversation:
    return Conversation(history_messages(messages), truncate_to, safe, generation_prompt, tools)


def chat_sequences(req: ChatCompletionRequest, served: ServedModel) -> int:
    """The refusals before admission (a conversation that cannot fit, a prediction too long); the
    engine sequences the request asks for."""
    return check_chat_bounds(req, served.tokenizer, served.max_model_len)


def chat_request(req: ChatCompletionRequest, served: ServedModel, caller: Caller, request_id: str,
                 deadline: float | None, kind: UsageKind) -> InferenceRequest:
    """The request in the pipeline's terms (CPU work for a large body: run it off the event loop). Chat
    without max_tokens generates up to the context window, as OpenAI and vLLM do: the model ends its turn
    itself."""
    reject_invalid_text(req)
    reject_unsupported_chat(req)
    if served.chat_template is None:
        raise InvalidRequest("the served model has no chat template, so it cannot take chat messages; use "
                             "/v1/completions with a prompt", param="messages", code="no_chat_template")
    check_chat_bounds(req, served.tokenizer, served.max_model_len)
    conv = conversation(req.messages, req.prompt_truncate_len, bool(req.safe_tokenization),
                        tools=tool_set(req))
    return inference_request(req, (conv,), caller, request_id, deadline, kind, fill_context=True)


def chat_responses(req: ChatCompletionRequest, served: ServedModel, gen: Generation, head: Head,
                   t0: float) -> ResponseBuilder:
    return ResponseBuilder("chat", req, served.tokenizer, gen.plan, gen.tally, head, t0)


CHAT = Endpoint(ChatCompletionRequest, "chatcmpl", chat_sequences, chat_request, chat_responses)
