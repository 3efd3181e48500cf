"""``uvicorn server.app:app --port 24577``: the feature API (OpenAPI docs at /docs).

The database connection is made at startup (lifespan), not at import. With ``ui/dist`` built,
the UI is served at ``/`` too.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from server.deps import LiveCache
from server.routers import dictionaries, features, inference
from server.settings import Settings

UI_DIST = Path(__file__).resolve().parents[1] / "ui" / "dist"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from saes.store.schema import connect

        app.state.db = connect(uri=settings.mongo_uri, db_name=settings.mongo_db)
        yield
        app.state.db.client.close()

    app = FastAPI(title="saes feature API", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.live = LiveCache(settings.model_cache_size, settings.device)
    app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins, allow_methods=["GET", "POST", "PUT"],
                       allow_headers=["Content-Type", "X-Write-Token"])
    for router in (dictionaries.router, features.router, inference.router):
        app.include_router(router, prefix="/api")
    if UI_DIST.is_dir():
        app.mount("/", StaticFiles(directory=UI_DIST, html=True), name="ui")
    return app


app = create_app()
