"""Errors become HTTP responses in one place: ``{"code", "detail", "errors"?}``. Bad input is a 4xx with a
reason; trouble with a dependency is a 503; nothing echoes the request's values back (they may be PHI)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studypub.errors import StudyPubError
from studypub.logs import details, get_logger

log = get_logger("api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


# Parts of the app that answer errors as HTML pages (the dashboard): (path prefix, renderer). A renderer gets
# (request, status, code, detail) and returns a response, or None to leave the JSON answer.
HtmlErrorRenderer = Callable[[Request, int, str, str], Response | None]


def _answer(
    request: Request,
    status: int,
    code: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    for prefix, render in getattr(request.app.state, "html_errors", ()):
        if request.url.path.startswith(prefix):
            page = render(request, status, code, detail)
            if page is not None:
                return page
    return JSONResponse(error_body(code, detail, errors), status_code=status, headers=headers)


def error_body(code: str, detail: str, errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "detail": detail}
    if errors:
        body["errors"] = errors
    return body


_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")


def _field(loc: tuple[Any, ...], kind: str | None = None) -> str:
    if kind == "json_invalid":  # its location is a character offset, not a field
        return "body"
    # Only name what looks like a field name: an unknown key may carry anything (even an identifier).
    parts = [
        str(p) if isinstance(p, int) or _FIELD_NAME.match(str(p)) else "(unknown field)" for p in loc if p != "body"
    ]
    return ".".join(parts) or "body"


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "json_invalid":
        return "the body is not valid JSON"
    if kind == "model_attributes_type" or kind == "dict_type":
        return "the body must be a JSON object"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a field of this request"
    if kind == "timezone_aware":
        return "needs a UTC offset (ISO 8601, e.g. 2025-03-01T00:00:00+03:00)"
    if kind == "string_pattern_mismatch":
        return "contains characters that are not allowed (control characters; in identifiers also \\ * ?)"
    if kind == "uuid_parsing" or kind == "uuid_type":
        return "is not a task id (a UUID)"
    return str(err.get("msg", "is invalid")).removeprefix("Value error, ")


async def _validation(request: Request, exc: RequestValidationError) -> Response:
    errors = [
        {
            "field": "body" if e.get("type") == "json_invalid" else _field(tuple(e.get("loc", ()))),
            "message": _message(e),
        }
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": "body", "message": "is invalid"}
    detail = first["message"] if first["field"] == "body" else f"{first['field']}: {first['message']}"
    return _answer(request, 422, "invalid_request", detail, errors)


async def _studypub(request: Request, exc: StudyPubError) -> Response:
    status = exc.http_status
    if status >= 500 and status != 503:
        log.error("Request failed", extra=details(error_code=exc.code))
        return _answer(request, 500, exc.code, "internal error")
    headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else None
    return _answer(request, status, exc.code, exc.reason, headers=headers)


async def _http(request: Request, exc: StarletteHTTPException) -> Response:
    code = _HTTP_CODES.get(exc.status_code, "error")
    return _answer(request, exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _database(request: Request, exc: Exception) -> Response:
    log.error("Database unavailable", extra=details(error=type(exc).__name__))
    return _answer(request, 503, "database_unavailable", "the database is unavailable; retry later")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("Unexpected error", extra=details(error=type(exc).__name__))
    return _answer(request, 500, "internal_error", "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StudyPubError, _studypub)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, _database)
    app.add_exception_handler(DBAPIError, _database)
    app.add_exception_handler(PoolTimeout, _database)
    app.add_exception_handler(Exception, _unexpected)


class BodySizeLimit:
    """Refuse bodies larger than ``limit`` bytes with 413, whether announced (Content-Length) or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._too_large(send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # FastAPI passes an HTTPException through its body parsing
                    raise StarletteHTTPException(413, f"the request body is larger than {self.limit} bytes")
            return message

        await self.app(scope, limited, send)

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse(
            error_body("request_too_large", f"the request body is larger than {self.limit} bytes"), 413
        )
        await response({"type": "http"}, _empty_receive, send)


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}
