"""Errors become HTTP responses in one place: ``{"code", "detail", "errors"?}``. Bad input is a 4xx with a
reason; trouble with a dependency is a 503; nothing echoes the request's values back (they may be PHI).

Two middlewares guard every route (the MIS API, the link pages, the dashboard, static files) before any of it
runs: :class:`BodySizeLimit` (413) and :class:`RefuseNul` (422 for a NUL character anywhere in the input).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.jsonbody import DECLARED_CONTENT_TYPE
from studypub.errors import StudyPubError, ValidationError
from studypub.i18n import N_
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
    422: "invalid_request",
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


# Messages of a field's validation error, by pydantic's error type: plain words (pydantic's own phrasing,
# "Input should be a valid string", is never shown). The field's name comes before them ("patient_id: ...").
_CONTENT_TYPE_HINT = N_(
    "the body is not valid JSON (send a JSON object, with the header Content-Type: application/json)"
)
_MESSAGES: dict[str, str] = {
    "json_invalid": N_("the body is not valid JSON"),
    "model_attributes_type": N_("the body must be a JSON object"),
    "dict_type": N_("the body must be a JSON object"),
    "model_type": N_("the body must be a JSON object"),
    "missing": N_("is required"),
    "extra_forbidden": N_("is not a field of this request"),
    "string_type": N_("must be a text string (in double quotes)"),
    "string_too_short": N_("must not be empty"),
    "string_pattern_mismatch": N_(
        "contains characters that are not allowed (control characters; in identifiers also \\ * ?)"
    ),
    "timezone_aware": N_("needs a UTC offset (ISO 8601, e.g. 2025-03-01T00:00:00+03:00)"),
    "datetime_type": N_("must be an ISO 8601 date-time string with a UTC offset, e.g. 2025-03-01T00:00:00+03:00"),
    "datetime_parsing": N_("must be an ISO 8601 date-time string with a UTC offset, e.g. 2025-03-01T00:00:00+03:00"),
    "datetime_from_date_parsing": N_(
        "must be an ISO 8601 date-time string with a UTC offset, e.g. 2025-03-01T00:00:00+03:00"
    ),
    "datetime_object_invalid": N_("is not a valid date-time"),
    "uuid_parsing": N_("is not a task id (a UUID)"),
    "uuid_type": N_("is not a task id (a UUID)"),
}


def _message(err: dict[str, Any]) -> str:
    kind = str(err.get("type", ""))
    if kind == "string_too_long":
        limit = (err.get("ctx") or {}).get("max_length")
        return N_("must be at most %(count)s characters long", count=limit) if limit else N_("is too long")
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind == "value_error":  # our own validators' messages (api/schemas.py), already in plain words
        return str(err.get("msg", "")).removeprefix("Value error, ") or N_("is not valid")
    return N_("is not valid")


def _required_fields(request: Request) -> list[str]:
    """The required fields of the route's JSON body (for an empty body), in the model's order."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(body_field, "field_info", None), "annotation", None)
    fields = getattr(model, "model_fields", None) or {}
    return [name for name, info in fields.items() if info.is_required()]


async def _validation(request: Request, exc: RequestValidationError) -> Response:
    raw = list(exc.errors())
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in raw):
        # No body at all: say which fields are expected.
        required = _required_fields(request)
        errors = [{"field": name, "message": N_("is required")} for name in required]
        detail = (
            N_("the body is empty: a JSON object with %(fields)s is expected", fields=", ".join(required))
            if required
            else N_("the body is empty: a JSON object is expected")
        )
        return _answer(request, 422, "invalid_request", detail, errors or None)
    declared = request.scope.get(DECLARED_CONTENT_TYPE)
    errors = []
    for e in raw:
        kind = e.get("type")
        if kind == "json_invalid":
            message = _CONTENT_TYPE_HINT if declared else _message(e)
            errors.append({"field": "body", "message": message})
        else:
            errors.append({"field": _field(tuple(e.get("loc", ()))), "message": _message(e)})
    first = errors[0] if errors else {"field": "body", "message": N_("is not valid")}
    # "field: message" (not a catalog message of its own: it would read like the catalogs' "step: reason")
    detail = first["message"] if first["field"] == "body" else f"{first['field']}: {first['message']}"
    return _answer(request, 422, "invalid_request", detail, errors)


async def _studypub(request: Request, exc: StudyPubError) -> Response:
    status = exc.http_status
    if status >= 500 and status != 503:
        log.error("Request failed", extra=details(error_code=exc.code))
        return _answer(request, 500, exc.code, "internal error")
    headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else None
    field = getattr(exc, "field", None)
    errors = [{"field": field, "message": exc.reason}] if isinstance(exc, ValidationError) and field else None
    return _answer(request, status, exc.code, exc.reason, errors, headers=headers)


async def _http(request: Request, exc: StarletteHTTPException) -> Response:
    code = _HTTP_CODES.get(exc.status_code, "error")
    errors = exc.errors if isinstance(exc, NulInRequest) else None
    return _answer(request, exc.status_code, code, str(exc.detail), errors, headers=getattr(exc, "headers", None))


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


# NUL characters ------------------------------------------------------------------------------------------------

NUL_MESSAGE = "contains a NUL character (a zero byte, %00), which no field accepts"
_FORM = "application/x-www-form-urlencoded"
# A JSON string's \u0000 escape, not preceded by an escaped backslash ("\\u0000" is the text "\u0000").
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


class NulInRequest(StarletteHTTPException):
    """A NUL character in the request body (raised while the body is read: FastAPI passes it on)."""

    def __init__(self, field: str = "body") -> None:
        super().__init__(422, f"{field}: {NUL_MESSAGE}")
        self.errors = [{"field": field, "message": NUL_MESSAGE}]


def _nul_in_url(scope: Scope, own_path_misses: tuple[str, ...]) -> str | None:
    path: str = scope.get("path", "")
    if "\x00" in path and not path.startswith(own_path_misses):
        return "path"
    query: bytes = scope.get("query_string", b"")
    if b"\x00" in query or b"%00" in query:  # a literal % is %25: "%00" is always an encoded NUL
        return "query"
    return None


def _content_type(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return str(value.decode("latin-1").split(";", 1)[0].strip().lower())
    return ""


def _json_nul_at(value: Any, loc: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """Where in a parsed JSON document the first NUL is (a key or a string value), or None."""
    if isinstance(value, str):
        return loc if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return (*loc, key)
        found = _json_nul_at(item, (*loc, key))
        if found is not None:
            return found
    return None


def _nul_field(body: bytes, kind: str) -> str:
    """The field a NUL is in, named as validation errors name fields (a key that is not a plain field name, such
    as one holding the NUL itself, is "(unknown field)"), or "body" when that cannot be told."""
    try:
        if kind == "form":
            for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
                if "\x00" in name or "\x00" in value:
                    return _field((name,))
        elif kind == "json":
            loc = _json_nul_at(json.loads(body))
            if loc is not None:
                return _field(loc)
    except (ValueError, RecursionError):
        pass
    return "body"


class RefuseNul:
    """Refuse a NUL character anywhere in a request's input with 422 and a reason in words, for every route.

    PostgreSQL cannot hold one in text (psycopg2 raises ``ValueError``, which was a 500), SQLite keeps it
    silently, and no field of this service means one. Checked once, before any route runs: the path (path
    parameters), the query string (filters), and the body (form fields, percent-encoded or raw; JSON strings,
    as ``\\u0000``; a raw zero byte in any body). A path or query answers at once. A body is checked when its
    last part has been read and, with a NUL, :class:`NulInRequest` (naming the field) is raised from ``receive``
    (like :class:`BodySizeLimit`): FastAPI passes it through its body parsing to the handler above, so the
    route never sees the value. The body kept meanwhile is bounded by :class:`BodySizeLimit`, outside this one.

    ``own_path_misses``: path prefixes whose routes answer a malformed path themselves, the same way as any
    other miss (the patient's link pages: every unknown key, NUL or not, gets the same 404 page, and
    :func:`studypub.links.find_link` never sends a malformed key to the database). Their query and body are
    still checked.
    """

    def __init__(self, app: ASGIApp, own_path_misses: tuple[str, ...] = ()) -> None:
        self.app = app
        self.own_path_misses = own_path_misses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = _nul_in_url(scope, self.own_path_misses)
        if where is not None:
            response = _answer(
                Request(scope),
                422,
                "invalid_request",
                f"{where}: {NUL_MESSAGE}",
                [{"field": where, "message": NUL_MESSAGE}],
            )
            await response(scope, receive, send)
            return
        content_type = _content_type(scope)
        # FastAPI reads a body without a content type as JSON.
        kind = "form" if content_type == _FORM else "json" if content_type.endswith(("/json", "+json")) else ""
        kind = kind or ("json" if not content_type else "other")
        body = bytearray()

        async def checked() -> Message:
            message = await receive()
            if message["type"] != "http.request":
                return message
            body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                nul = b"\x00" in body
                if kind == "form":
                    nul = nul or b"%00" in body
                elif kind == "json":
                    nul = nul or _JSON_NUL.search(body) is not None
                if nul:
                    raise NulInRequest(_nul_field(bytes(body), kind))
            return message

        await self.app(scope, checked, send)
