"""One batch row: its body with the job's defaults, and its output line, in the job's API format.

Fireworks rows are `{"custom_id", "body"}` with no model (the job names it) and answer
`{"custom_id", "response"}` / `{"custom_id", "error"}`; OpenAI rows add `method` and `url` and name the
model in the body, and answer OpenAI's BatchRequestOutput `{"id", "custom_id", "response", "error"}`.
"""

from __future__ import annotations

import json
import uuid

from ember.errors import InvalidRequest
from ember.pipeline.served_model import ServedModel
from ember.store.dataset_files import Row
from ember.store.tables import BatchJob

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
    does); an OpenAI line is a POST to /v1/completions naming the served model."""
    body = dict(row.body)
    if j.api == "openai":
        if row.url != "/v1/completions" or (row.method or "").upper() != "POST":
            raise InvalidRequest("each line must have \"method\": \"POST\" and \"url\": \"/v1/completions\"",
                                 param="url")
        model = body.pop("model", None)
        if not isinstance(model, str) or not served.answers_to(model):
            raise InvalidRequest(f"model {str(model)[:100]!r} is not served here; this server has "
                                 f"{served.model_id!r}", param="model", code="model_not_found")
    elif "model" in body:
        raise InvalidRequest("model must not be set in a batch row: the job's model is used", param="model")
    return body
