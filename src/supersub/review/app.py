"""The review web app: FastAPI routes over a :class:`~.session.ReviewSession` (``supersub.api.review`` serves it
with uvicorn on 127.0.0.1).

Routes: ``/`` the page (one HTML file, its script inline, nothing fetched from elsewhere), ``/api/state`` the
clusters, labels and known classes, ``/api/predictions`` the filtered and sorted predictions, ``/image/{id}``
a thumbnail (by id, so no path from the page ever reaches the file system), ``/api/save`` the edits. Every
refused request answers ``{"error": "<one line>"}`` with a 4xx status, which the page shows as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..errors import SupersubError
from ..report_page import thumbnail_jpeg
from .page import PAGE
from .session import ReviewSession, StaleVersion

log = logging.getLogger("supersub")


def create_app(session: ReviewSession) -> FastAPI:
    """The app serving ``session``."""
    app = FastAPI(title="supersub review", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(SupersubError)
    async def _user_error(_: Request, e: SupersubError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=409 if isinstance(e, StaleVersion) else 400)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        return {"run": str(session.run_dir), "labels": str(session.labels_path), "version": session.version(),
                "clusters": session.cluster_state(), "assignments": session.assignments(),
                "known": session.known_classes(), "items": len(session.items),
                "retrain": session.retrain_command()}

    @app.get("/api/predictions")
    def predictions(decision: str = "all", sort: str = "confidence", descending: bool = False) -> list[dict[str, Any]]:
        return session.predictions(decision, sort, descending)

    @app.get("/image/{item_id}")
    def image(item_id: int) -> Response:
        if not 0 <= item_id < len(session.items):
            return JSONResponse({"error": f"no image {item_id}"}, status_code=404)
        jpeg = thumbnail_jpeg(Path(session.items[item_id].path), 128)
        if not jpeg:
            return JSONResponse({"error": f"{session.items[item_id].image}: unreadable image"}, status_code=404)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/save")
    def save(payload: dict[str, Any] = Body(...)) -> dict[str, Any]:
        rows = payload.get("rows")
        version = str(payload.get("version", ""))
        result = session.save(version, rows)  # type: ignore[arg-type]
        log.info("review: saved %d rows to %s", result["rows"], result["path"])
        return result

    return app
