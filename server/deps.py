"""Request dependencies: the database, settings, the live-model cache, the write token."""

from __future__ import annotations

import hmac
from collections import OrderedDict
from threading import Lock

from fastapi import Header, HTTPException, Request
from pymongo.database import Database

from server.live import LiveSAE
from server.pages import Dictionaries, FeaturePages
from server.search import SearchCache
from server.settings import Settings


async def get_db(request: Request) -> Database:
    return request.app.state.db


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


class LiveCache:
    """LRU cache of loaded models+SAEs keyed by the SAE path from the dictionary record."""

    def __init__(self, size: int, device: str):
        self.size, self.device = size, device
        self.items: OrderedDict[str, LiveSAE] = OrderedDict()
        self.lock = Lock()

    def get(self, sae_path: str) -> LiveSAE:
        with self.lock:
            if sae_path in self.items:
                self.items.move_to_end(sae_path)
                return self.items[sae_path]
            live = LiveSAE(sae_path, device=self.device)
            self.items[sae_path] = live
            while len(self.items) > self.size:
                self.items.popitem(last=False)
            return live


async def get_live_cache(request: Request) -> LiveCache:
    return request.app.state.live


async def get_feature_pages(request: Request) -> FeaturePages:
    return request.app.state.pages


async def get_dictionaries(request: Request) -> Dictionaries:
    return request.app.state.dictionaries


async def get_search_cache(request: Request) -> SearchCache:
    return request.app.state.search


def require_write_token(request: Request, x_write_token: str | None = Header(None)) -> None:
    """Writes need the configured token; with none configured the server is read-only."""
    expected = request.app.state.settings.write_token
    if expected is None:
        raise HTTPException(403, "this server is read-only (no SAES_WRITE_TOKEN configured)")
    if x_write_token is None or not hmac.compare_digest(x_write_token.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong X-Write-Token header")
