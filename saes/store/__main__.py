"""``python -m saes.store start|stop|status [DATA_DIR]``: manage the local MongoDB server."""

from __future__ import annotations

from saes.store.local_server import main

if __name__ == "__main__":
    raise SystemExit(main())
