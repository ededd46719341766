"""The completions adapter: a CompletionRequest as the pipeline's InferenceRequest, its events as a
CompletionResponse or stream chunks."""

from __future__ import annotations

from ember.pipeline.generation import Generation
from ember.pipeline.request import Caller, InferenceRequest, PromptInput, TextPrompt, TokenPrompt, UsageKind
from ember.pipeline.served_model import ServedModel
from ember.protocol.endpoint import Endpoint
from ember.protocol.responses import Head, ResponseBuilder
from ember.protocol.schemas import CompletionRequest
from ember.protocol.translate import (
    check_completion_bounds,
    inference_request,
    prompt_items,
    reject_invalid_text,
    reject_unsupported_completion,
)


def completion_sequences(req: CompletionRequest, served: ServedModel) -> int:
    """The refusals before admission (what a text-only model cannot do, too many choices, a text that
    cannot fit); the engine sequences the request asks for."""
    reject_unsupported_completion(req)
    return check_completion_bounds(req, served.tokenizer, served.max_model_len)


def completion_request(req: CompletionRequest, served: ServedModel, caller: Caller, request_id: str,
                       deadline: float | None, kind: UsageKind) -> InferenceRequest:
    """The request in the pipeline's terms (CPU work for a large body: run it off the event loop)."""
    reject_unsupported_completion(req)
    reject_invalid_text(req)
    check_completion_bounds(req, served.tokenizer, served.max_model_len)
    prompts: tuple[PromptInput, ...] = tuple(
        TextPrompt(item) if isinstance(item, str) else TokenPrompt(tuple(item)) for item in prompt_items(req))
    return inference_request(req, prompts, caller, request_id, deadline, kind)


def completion_responses(req: CompletionRequest, served: ServedModel, gen: Generation, head: Head,
                         t0: float) -> ResponseBuilder:
    return ResponseBuilder("completion", req, served.tokenizer, gen.plan, gen.tally, head, t0)


COMPLETIONS = Endpoint(CompletionRequest, "cmpl", completion_sequences, completion_request, completion_responses)
