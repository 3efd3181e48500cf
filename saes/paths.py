"""Where saes keeps its caches (converted models, built corpora)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$SAES_CACHE``, else ``$XDG_CACHE_HOME/saes``, else ``~/.cache/saes``."""
    if "SAES_CACHE" in os.environ:
        return Path(os.environ["SAES_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return base / "saes"
