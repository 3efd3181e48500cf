"""Checks made before routing (inside CORS, so their answers carry its headers): the body size
limit, and methods and paths by the app's OpenAPI document.

Starlette answers a wrong method with the ``Allow`` of the first route whose path matches (one of
``GET`` and ``PUT`` on ``.../explanation``, never both), and with the UI mounted at ``/`` the mount
answers instead (``Allow: GET, HEAD``, or 404 to ``HEAD``). Here the methods are those the OpenAPI
document declares for the path: a wrong method is 405 with ``Allow`` listing them, ``OPTIONS``
(not a CORS preflight, which CORS answers) is 204 with that ``Allow``, and an ``/api`` path the
document does not declare is 404 whether or not the UI is mounted.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from server.contract import ErrorResponse

API_PREFIX = "/api"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def declared_paths(app: FastAPI) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """``(path regex, methods)`` of each path of the app's OpenAPI document (a ``{param}`` is one
    path segment, as Starlette matches it)."""
    paths = []
    for template, operations in app.openapi()["paths"].items():
        parts = re.split(r"\{[^}/]+\}", template)
        paths.append((re.compile("^" + "[^/]+".join(map(re.escape, parts)) + "$"),
                      frozenset(m.upper() for m in operations if m.upper() in METHODS)))  # fmt: skip
    return paths


class Guard:
    def __init__(self, app: ASGIApp, max_request_bytes: int):
        self.app, self.max_request_bytes = app, max_request_bytes
        self.paths: list[tuple[re.Pattern[str], frozenset[str]]] | None = None  # on the first request

    def allowed_methods(self, scope: Scope, path: str) -> set[str] | None:
        """The methods declared for ``path``, None if it is not declared."""
        if self.paths is None:
            self.paths = declared_paths(scope["app"])
        found = [methods for regex, methods in self.paths if regex.match(path)]
        return set().union(*found) if found else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        response = self.refuse(scope)
        if response is None:
            return await self.app(scope, receive, send)
        await response(scope, receive, send)

    def refuse(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if (length is not None and (not length.isdigit() or int(length) > self.max_request_bytes)) or (
            length is None and headers.get("transfer-encoding")
        ):  # declared too large, or chunked (refused before being read)
            return ErrorResponse(413, f"request body over {self.max_request_bytes} bytes")
        path, root = scope["path"], scope.get("root_path", "")
        path = path[len(root):] if root and path.startswith(root) else path
        methods = self.allowed_methods(scope, path)
        if methods is None:
            return ErrorResponse(404, "Not Found") if path == API_PREFIX or path.startswith(API_PREFIX + "/") else None
        allow = {"Allow": ", ".join(sorted(methods | {"OPTIONS"}))}
        if scope["method"] == "OPTIONS":
            return Response(status_code=204, headers=allow)
        if scope["method"] not in methods:
            return ErrorResponse(405, "Method Not Allowed", headers=allow)
        return None
