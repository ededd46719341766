"""Typed dependencies: what a route needs, taken from the app's state (set up in app.py's lifespan)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from ember.engine.client import EngineClient
from ember.errors import NotFound, PermissionDenied, ResourceNotFound
from ember.http.audit_records import write_refusal
from ember.pipeline.pipeline import Pipeline
from ember.pipeline.request import Caller
from ember.pipeline.served_model import ServedModel
from ember.platform.auth import Principal, authorization_of
from ember.platform.services import Platform


@dataclass
class AppState:
    client: EngineClient
    model: ServedModel
    platform: Platform
    stall_timeout_s: float = 30.0
    max_request_timeout_s: float | None = None
    draining: bool = False
    """Set when shutdown has begun: /health answers 503 so that load balancers stop sending work."""
    pipeline: Pipeline = field(init=False)
    """The one generation pipeline every endpoint and the batch runner use."""

    def __post_init__(self) -> None:
        self.pipeline = Pipeline(self.client, self.model, self.platform)


def caller_of(principal: Principal) -> Caller:
    return Caller(principal.account_id, principal.key_id, principal.cache_tenant)


def get_state(request: Request) -> AppState:
    return request.app.state.ember


def inference_principal(request: Request) -> Principal:
    """Any live key (or nobody, where the server serves open) may run inference."""
    st: AppState = request.app.state.ember
    return st.platform.auth.authenticate(authorization_of(request), inference=True)


def gateway_principal(request: Request, account_id: str) -> Principal:
    """A key of `account_id` whose role may manage: 401 without one, 404 for another account's id (its
    existence is not revealed), 403 for an inference-user key."""
    st: AppState = request.app.state.ember
    p = st.platform.auth.authenticate(authorization_of(request), inference=False)
    if p.user_id is None or p.account_id != account_id:
        raise ResourceNotFound(f"account {account_id[:63]!r} not found")
    if not p.manages:
        if request.method not in ("GET", "HEAD", "OPTIONS"):  # a member's refused change is audited
            write_refusal(request, p, account_id, 403, "inference-user keys may only run inference")
        raise PermissionDenied("inference-user keys may only run inference")
    return p


StateDep = Annotated[AppState, Depends(get_state)]
InferenceAuth = Annotated[Principal, Depends(inference_principal)]
GatewayAuth = Annotated[Principal, Depends(gateway_principal)]


def resolve_served(state: AppState, name: str) -> ServedModel:
    if state.model.answers_to(name):
        return state.model
    raise NotFound(f"model {name!r} is not served here; this server has {state.model.model_id!r}",
                   param="model")
