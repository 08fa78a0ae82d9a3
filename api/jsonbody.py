"""The MIS API reads its body as JSON whatever ``Content-Type`` says.

``curl -d '{...}'`` without ``-H 'Content-Type: application/json'`` sends ``application/x-www-form-urlencoded``,
and FastAPI would then hand the route the raw bytes ("the body must be a JSON object" for a valid JSON
object). The MIS API takes only JSON, so its routes parse the body as JSON in every case; a body that is not
JSON is answered with a message that also names the header (the declared type is kept in the request's scope
under :data:`DECLARED_CONTENT_TYPE` for :mod:`api.errors`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

DECLARED_CONTENT_TYPE = "studypub.declared_content_type"
_JSON = b"application/json"


def _is_json(value: bytes) -> bool:
    media = value.split(b";", 1)[0].strip().lower()
    return media == _JSON or (media.startswith(b"application/") and media.endswith(b"+json"))


class JsonBodyRoute(APIRoute):
    """An API route whose body is JSON even when the client declared another type (or none)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            headers = list(request.scope.get("headers", []))
            declared = next((v for k, v in headers if k == b"content-type"), None)
            if declared is not None and not _is_json(declared):
                # In the request's own scope: the error handlers see the same one.
                scope = request.scope
                scope["headers"] = [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", _JSON)]
                scope[DECLARED_CONTENT_TYPE] = declared.decode("latin-1")
                request = Request(scope, request.receive)
            return await handler(request)

        return route
