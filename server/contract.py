"""The API's error contract: one body (:class:`ErrorBody`) for every error status, the statuses each
route declares in the OpenAPI document (:func:`errors`), and the exception handlers that make every
error answer in that body.

Statuses: 400 unparsable body, 401/403 writes with a missing or wrong token / on a read-only
server, 404 unknown dictionary, feature or path, 405 method not allowed (with ``Allow``; see
:mod:`server.guard`), 409 no SAE to run live, 413 body or text too large, 422 invalid parameter or
body, 503 database unavailable.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from pymongo.errors import ConnectionFailure
from starlette.exceptions import HTTPException as StarletteHTTPException


class FieldError(BaseModel):
    """One invalid input of a 422 answer."""

    loc: list[str | int]
    """Where: ``["query", "limit"]``, ``["path", "index"]``, ``["body", "text"]``..."""
    msg: str
    type: str
    """Pydantic's error type, e.g. ``int_parsing``, ``greater_than_equal``, ``json_invalid``."""


class ErrorBody(BaseModel):
    """The body of every error answer."""

    detail: str
    """What went wrong, for a person."""
    errors: list[FieldError] | None = None
    """422 only: each invalid input."""


DESCRIPTIONS = {
    400: "Unparsable request body (not UTF-8, or JSON nested too deep)",
    401: "Missing or wrong X-Write-Token header",
    403: "Read-only server (no SAES_WRITE_TOKEN configured)",
    404: "Unknown dictionary or feature, or the dictionary has no analysis",
    409: "The dictionary records no SAE to run live (re-run python -m saes.analyze)",
    413: "Request body over SAES_MAX_REQUEST_BYTES",
    422: "Invalid parameter or body",
    503: "The database is unavailable",
}


def errors(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that can answer ``codes``, each with :class:`ErrorBody`;
    ``descriptions`` override the defaults by code (``_413="..."``)."""
    return {c: {"model": ErrorBody, "description": descriptions.get(f"_{c}", DESCRIPTIONS[c])} for c in codes}


class ErrorResponse(JSONResponse):
    """An :class:`ErrorBody` as JSON, ASCII-escaped (a message quoting input with a lone
    surrogate still encodes)."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__({"detail": detail, **extra}, status_code=status_code, headers=headers)

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code < 200 or exc.status_code in (204, 205, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return ErrorResponse(exc.status_code, str(exc.detail), headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    issues = [{"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
               "type": str(e.get("type", ""))} for e in exc.errors()]  # fmt: skip
    detail = "; ".join(f"{'.'.join(map(str, i['loc']))}: {i['msg']}" for i in issues) or "invalid request"
    return ErrorResponse(422, detail, errors=issues)


async def _database_down(request: Request, exc: ConnectionFailure) -> Response:
    return ErrorResponse(503, f"the database is unavailable ({type(exc).__name__})")


async def _internal_error(request: Request, exc: Exception) -> Response:
    return ErrorResponse(500, "internal server error")


def declare_exactly(app: FastAPI) -> None:
    """Drop from the app's OpenAPI document the 422 FastAPI adds to every route with parameters
    (declared here through :func:`errors` where a route can really answer it: a route whose only
    parameter is a string path segment never does)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                answer = operation.get("responses", {}).get("422")
                if answer is not None and "HTTPValidationError" in json.dumps(answer):
                    del operation["responses"]["422"]
        schemas = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            if f"#/components/schemas/{name}" not in json.dumps(schema):
                schemas.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Every error answers an :class:`ErrorBody`: HTTP errors, validation errors (422, with
    ``errors``), a database that does not answer (503) and anything unexpected (500)."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ConnectionFailure, _database_down)
    app.add_exception_handler(Exception, _internal_error)
