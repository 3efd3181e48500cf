"""``uvicorn server.app:app --port 24577``: the feature API (OpenAPI docs at /docs).

The database connection is made at startup (lifespan), not at import. With ``ui/dist`` built,
the UI is served at ``/`` too. Every error answers ``{"detail": ...}`` (:mod:`server.contract`), and
the OpenAPI document declares, per route, each status the route can answer.
"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from saes.errors import ConfigError
from saes.models import resolve_device
from server.contract import declare_exactly, errors, install_error_handlers
from server.deps import LiveCache
from server.guard import Guard
from server.pages import Dictionaries, FeaturePages
from server.search import SearchCache
from server.routers import dictionaries, features, inference
from server.settings import Settings

UI_DIST = Path(__file__).resolve().parents[1] / "ui" / "dist"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API (and the built UI, when there is one). A ``SAES_DEVICE`` this machine cannot use
    stops it at start-up with one line naming the setting and the fix (exit 2)."""
    settings = settings or Settings()
    try:
        device = resolve_device(settings.device, "SAES_DEVICE")
    except ConfigError as err:
        print(f"saes server: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from saes.store.schema import connect

        app.state.db = connect(uri=settings.mongo_uri, db_name=settings.mongo_db)
        yield
        app.state.db.client.close()

    # every route reads the database (503 when it does not answer) and is behind the body limit (413)
    app = FastAPI(title="saes feature API", version="0.1.0", lifespan=lifespan, responses=errors(413, 503))
    install_error_handlers(app)
    declare_exactly(app)
    app.state.settings = settings
    app.state.live = LiveCache(settings.model_cache_size, device)
    app.state.search = SearchCache()
    app.state.pages = FeaturePages(settings.page_cache_size)
    app.state.dictionaries = Dictionaries(ttl_s=1.0)
    app.add_middleware(Guard, max_request_bytes=settings.max_request_bytes)  # body limit, 404/405/OPTIONS
    # added last, so outermost: the guard's answers (413, 405...) carry the CORS headers too
    app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins, allow_methods=["GET", "POST", "PUT"],
                       allow_headers=["Content-Type", "X-Write-Token"])

    @app.get("/api/health", tags=["health"])
    def health() -> dict[str, bool]:
        """Liveness: the server answers and its database does (503 when it does not)."""
        app.state.db.client.admin.command("ping")
        return {"ok": True}

    for router in (dictionaries.router, features.router, inference.router):
        app.include_router(router, prefix="/api")
    if UI_DIST.is_dir():
        app.mount("/", StaticFiles(directory=UI_DIST, html=True), name="ui")
    return app


app = create_app()
