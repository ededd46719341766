"""`/docs`: Swagger UI over the app's own OpenAPI document, every file served by this server.

FastAPI's default pages load Swagger UI / ReDoc from a CDN: a third party's script running on this
server's origin, where the playground keeps its API key. Here the assets come from the PyPI package
`swagger-ui-bundle-v2` (a dependency; its module is `swagger_ui_bundle`) and are served under /docs/assets; the start-up call lives in a file
of its own (/docs/init.js), so the page holds no inline script and passes the pages' CSP
(ember.http.response_headers): only this origin's scripts, styles and API.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"
_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ember API</title>
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body></html>
"""
# deepLinking off: it rewrites the URL's fragment on every click; tryItOut works against this origin.
_INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: false,
  presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"
});
"""


def mount_docs(app: FastAPI) -> None:
    """Call on an app made with docs_url=None and redoc_url=None."""
    app.mount(ASSETS, StaticFiles(directory=Path(swagger_ui_bundle.swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_PAGE)

    @app.get("/docs/init.js", include_in_schema=False)
    async def docs_init() -> Response:
        return Response(_INIT, media_type="text/javascript")
