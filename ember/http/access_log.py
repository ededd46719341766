"""uvicorn's access log without credentials: query parameters that carry one are written as REDACTED,
and anything shaped like an API key, under whatever name, is masked.

A signed download URL's `signature` is a bearer credential until it expires, and some clients send API
keys as `?key=` / `?api_key=`; uvicorn writes the whole request line to its access log, which is
usually readable by more people than the store. The filter sits on the `uvicorn.access` logger itself,
so every handler (uvicorn's, a log shipper's, a test's) sees only the redacted line.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from uvicorn.config import LOGGING_CONFIG

from ember.store.audit_record import masked

SECRET_PARAM = re.compile(r"(key|token|secret|signature|sig|password|passwd|auth|credential)", re.I)
_PARAM = re.compile(r"([^&=?#]+)=([^&#]*)")
REDACTED = "REDACTED"


def redact_query(path: str) -> str:
    """"/f?expires=1&signature=ab12" -> "/f?expires=1&signature=REDACTED" (the path itself is kept)."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    query = _PARAM.sub(lambda m: f"{m[1]}={REDACTED}" if SECRET_PARAM.search(m[1]) else m[0], query)
    return base + sep + masked(query)


class RedactSecrets(logging.Filter):
    """For uvicorn's access records, whose args are (client, method, full_path, http_version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], masked(redact_query(args[2])), *args[3:])
        return True


def redact_access_log() -> None:
    """Put the filter on uvicorn's access logger of this process, once, however the app is served
    (`ember serve`, a test's uvicorn, a Ray Serve replica): create_app calls it at start-up."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in access.filters):
        access.addFilter(RedactSecrets())


def log_config() -> dict[str, Any]:
    """uvicorn's own logging configuration plus the filter on its access logger."""
    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg.setdefault("filters", {})["redact_secrets"] = {"()": RedactSecrets}
    cfg["loggers"]["uvicorn.access"]["filters"] = ["redact_secrets"]
    return cfg
