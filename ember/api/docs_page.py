"""`/docs`: a plain page of the API's operations, built from the app's own OpenAPI document.

FastAPI's default pages load Swagger UI / ReDoc from a CDN: a third party's script running on this
server's origin, where the playground keeps its API key. No PyPI package in ember's dependencies ships
those assets, so this page is plain HTML with no script at all (it passes the pages' CSP, see
ember.api.security_headers); the full schema is at /openapi.json for any OpenAPI tool.
"""

from __future__ import annotations

from html import escape

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

_METHODS = ("get", "post", "put", "patch", "delete")


def docs_html(openapi: dict) -> str:
    info = openapi.get("info", {})
    rows = []
    for path, ops in sorted(openapi.get("paths", {}).items()):
        for method in _METHODS:
            op = ops.get(method)
            if op is None:
                continue
            summary = op.get("summary") or op.get("operationId") or ""
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{escape(path)}</code></td>"
                        f"<td>{escape(summary)}</td></tr>")
    title = escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title></head><body><h1>{title}</h1>"
            "<p>The full OpenAPI document: <a href=\"/openapi.json\">/openapi.json</a>.</p>"
            "<table><thead><tr><th>method</th><th>path</th><th>summary</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></body></html>")


def mount_docs(app: FastAPI) -> None:
    """Call on an app made with docs_url=None and redoc_url=None."""

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_html(app.openapi()))
