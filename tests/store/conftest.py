"""Fixtures of the store tests: a fresh database on the session's real local server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from saes.store import connect


@pytest.fixture
def db(mongo_uri: str) -> Iterator[Any]:
    """A fresh database (indexes created) on the session server, dropped afterwards."""
    name = f"saes_test_{uuid.uuid4().hex[:10]}"
    database = connect(mongo_uri, name)
    try:
        yield database
    finally:
        database.client.drop_database(name)
        database.client.close()
