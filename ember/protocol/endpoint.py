"""What one API surface brings to the pipeline: adding an endpoint is writing one of these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ember.pipeline.generation import Generation
from ember.pipeline.request import Caller, InferenceRequest, UsageKind
from ember.pipeline.served_model import ServedModel
from ember.protocol.responses import Head, ResponseBuilder
from ember.protocol.schemas import GenerationRequest

W = TypeVar("W", bound=GenerationRequest)


@dataclass(frozen=True)
class Endpoint(Generic[W]):
    wire: type[W]
    """The request body's model (a batch row is validated with it)."""
    id_prefix: str
    """Of the response id and the engine's request ids."""
    sequences: Callable[[W, ServedModel], int]
    """The cheap refusals, before admission; the engine sequences the request asks for."""
    request: Callable[[W, ServedModel, Caller, str, float | None, UsageKind], InferenceRequest]
    """Wire -> InferenceRequest (request id, deadline, usage kind given); CPU work, run off the event loop."""
    responses: Callable[[W, ServedModel, Generation, Head, float], ResponseBuilder]
    """The builder that turns the generation's events into wire JSON or stream chunks."""
