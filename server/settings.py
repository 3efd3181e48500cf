"""Server settings from environment variables or ``server/.env`` (see ``server/.env.example``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=Path(__file__).with_name(".env"), extra="ignore")

    mongo_uri: str | None = Field(None, validation_alias=AliasChoices("MONGO_URI"))
    """MongoDB URI; unset: the local server saes.store starts (same data as ``python -m saes.analyze``)."""
    mongo_db: str = Field("saes", validation_alias=AliasChoices("SAES_MONGO_DB"))
    """Database name."""
    allowed_origins: list[str] = Field(["http://localhost:24576"], validation_alias=AliasChoices("SAES_ALLOWED_ORIGINS"))
    """CORS origins allowed to call the API (JSON list); default: the UI dev server."""
    write_token: str | None = Field(None, validation_alias=AliasChoices("SAES_WRITE_TOKEN"))
    """Token required in the ``X-Write-Token`` header to write explanations; unset: read-only."""
    model_cache_size: int = Field(2, ge=1, validation_alias=AliasChoices("SAES_MODEL_CACHE_SIZE"))
    """Models+SAEs kept loaded for live inference (LRU)."""
    max_text_chars: int = Field(2000, ge=1, validation_alias=AliasChoices("SAES_MAX_TEXT_CHARS"))
    """Longest text accepted by the live-inference routes."""
    device: str = Field("cpu", validation_alias=AliasChoices("SAES_DEVICE"))
    """Device for live inference."""
