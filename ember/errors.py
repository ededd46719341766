"""Error kinds raised anywhere in ember.

No HTTP here: `ember.http.errors` alone maps each kind to a status code and a wire body, so the engine
stays usable from the CLI, the batch runner and Ray replicas.
"""

from __future__ import annotations


class EmberError(Exception):
    """Base of every error ember raises on purpose.

    `param` names the request field at fault (OpenAI's `error.param`); `code` is a stable machine-readable
    string (OpenAI's `error.code`).
    """

    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        """Seconds a client should wait before retrying (429 and 503 only)."""
        if code is not None:
            self.code = code


class InvalidRequest(EmberError):
    """The request is well-formed but cannot be served as asked (a 400)."""


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class NotFound(EmberError):
    code = "model_not_found"


class ResourceNotFound(NotFound):
    """A platform resource (account, user, key, quota) that does not exist or is not the caller's."""

    code = "not_found"


class Unauthorized(EmberError):
    code = "invalid_api_key"


class PermissionDenied(EmberError):
    """A valid key whose role lacks the right (a 403)."""

    code = "permission_denied"


class AlreadyExists(EmberError):
    code = "already_exists"


class FailedPrecondition(EmberError):
    code = "failed_precondition"


class RateLimited(EmberError):
    code = "rate_limit_exceeded"


class ResourceExhausted(RateLimited):
    """A per-account cap on what an account may hold (jobs, datasets, keys): a 429 that waiting alone
    does not clear (google.rpc RESOURCE_EXHAUSTED, as the Gateway answers a quota on resources)."""

    code = "resource_exhausted"


class Overloaded(EmberError):
    code = "overloaded"


class DeadlineExceeded(EmberError):
    """The request's own deadline (`x-request-timeout`, or the server's cap) passed before it finished."""

    code = "deadline_exceeded"


class ModelLoadError(EmberError):
    """A model file is missing, unreadable or of an unsupported kind."""

    code = "model_load_error"
