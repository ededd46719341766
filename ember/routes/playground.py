"""The playground page: static files from ember/web, `/` for the page and `/playground/*` for its assets.

They are public (no API key): the page itself asks for the key and sends it with every API call. Nothing
is built or fetched at run time, so the page works offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def mount_playground(app: FastAPI) -> None:
    index = WEB_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(index, headers={"cache-control": "no-cache"})

    # Only under its own prefix: a catch-all mount at "/" would answer unknown API routes with its 404/405.
    app.mount("/playground", StaticFiles(directory=WEB_DIR), name="playground")
