"""One batch row: its body with the job's defaults, and its output line, in the job's API format.

Fireworks rows are `{"custom_id", "body"}` with no model (the job names it) and answer
`{"custom_id", "response"}` / `{"custom_id", "error"}`; OpenAI rows add `method` and `url` and name the
model in the body, and answer OpenAI's BatchRequestOutput `{"id", "custom_id", "response", "error"}`.

A row's body is a completion (`prompt`) or a chat completion (`messages`) and its response is what that
endpoint answers. A Gateway job's rows each say which by their body, so one file may mix both; every row
of an OpenAI batch is a request to the batch's one endpoint.
"""

from __future__ import annotations

import json
import uuid

from ember.errors import InvalidRequest
from ember.pipeline.served_model import ServedModel
from ember.protocol.schemas import ChatCompletionRequest, CompletionRequest
from ember.store.dataset_files import Row
from ember.store.tables import BatchJob

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
ENDPOINTS = (COMPLETIONS, CHAT)
"""The endpoints a batch row may be a request to."""
RowRequest = CompletionRequest | ChatCompletionRequest

# inferenceParameters (camelCase) -> the completion body field it defaults.
_PARAM_FIELDS = {"maxTokens": "max_tokens", "temperature": "temperature", "topP": "top_p", "topK": "top_k",
                 "n": "n"}


def _dumps(obj: dict) -> str:
    """One output line: UTF-8 as it is, unless something in it cannot be UTF-8 (then escaped)."""
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj)
    return text


def row_defaults(params: dict) -> dict:
    """The body defaults a job's inferenceParameters give: extraBody first, the named ones over it."""
    out: dict = {}
    extra = params.get("extraBody")
    if extra:
        out.update(json.loads(extra))
    for k, v in params.items():
        if k in _PARAM_FIELDS:
            out[_PARAM_FIELDS[k]] = v
    return out


def error_line(j: BatchJob, custom_id: str, err: dict) -> str:
    """A failed row's line (it goes to error-data)."""
    if j.api == "openai":  # OpenAI's BatchRequestOutput: a failed request has an error, no response
        out = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": None,
               "error": {"code": err.get("code") or err.get("type"), "message": err.get("message")}}
    else:
        out = {"custom_id": custom_id, "error": err}
    return _dumps(out)


def ok_line(j: BatchJob, custom_id: str, request_id: str, response: dict) -> str:
    """A completed row's line (it goes to BIJOutputSet.jsonl)."""
    if j.api == "openai":
        out = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
               "response": {"status_code": 200, "request_id": request_id, "body": response}, "error": None}
    else:
        out = {"custom_id": custom_id, "response": response}
    return _dumps(out)


def row_body(j: BatchJob, row: Row, served: ServedModel) -> dict:
    """The row's body without its model, or InvalidRequest: a Fireworks row names no model (the job
    does); an OpenAI line is a POST to the batch's endpoint naming the served model."""
    body = dict(row.body)
    if j.api == "openai":
        if row.url != j.endpoint or (row.method or "").upper() != "POST":
            raise InvalidRequest(f"each line must have \"method\": \"POST\" and \"url\": \"{j.endpoint}\", "
                                 "the batch's endpoint", param="url")
        model = body.pop("model", None)
        if not isinstance(model, str) or not served.answers_to(model):
            raise InvalidRequest(f"model {str(model)[:100]!r} is not served here; this server has "
                                 f"{served.model_id!r}", param="model", code="model_not_found")
    elif "model" in body:
        raise InvalidRequest("model must not be set in a batch row: the job's model is used", param="model")
    return body


def row_endpoint(j: BatchJob, body: dict) -> str:
    """The endpoint a row is a request to: an OpenAI batch's own; for a Gateway row, chat completions when
    its body has `messages`, completions when it has `prompt` (InvalidRequest for both or neither)."""
    if j.api == "openai":
        return j.endpoint
    chat, completion = "messages" in body, "prompt" in body
    if chat == completion:
        raise InvalidRequest("a row's body must have either \"prompt\" (a completion) or \"messages\" (a chat "
                             f"completion), {'not both' if chat else 'found neither'}", param="body")
    return CHAT if chat else COMPLETIONS


def row_request(j: BatchJob, row: Row, served: ServedModel, defaults: dict) -> RowRequest:
    """The row as a validated request of its endpoint, the job's defaults under the row's own fields:
    InvalidRequest, or pydantic's ValidationError for a body its endpoint does not take."""
    own = row_body(j, row, served)
    schema, other = ((ChatCompletionRequest, CompletionRequest) if row_endpoint(j, own) == CHAT
                     else (CompletionRequest, ChatCompletionRequest))
    # One job's defaults serve both kinds of row: a field only the other endpoint has is not this row's.
    foreign = other.model_fields.keys() - schema.model_fields.keys()
    base = {k: v for k, v in defaults.items() if k not in foreign}
    if "max_completion_tokens" in own:  # the row's own limit, under either name, wins over the job's
        base.pop("max_tokens", None)
    return schema.model_validate({**base, **own, "model": served.model_id, "stream": False})
