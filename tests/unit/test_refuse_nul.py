"""api.errors.RefuseNul on its own: where a NUL is found (path, query, body in chunks) and what is not one."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from api.errors import NUL_MESSAGE, NulInRequest, RefuseNul


async def _reads_its_body(scope: Scope, receive: Receive, send: Send) -> None:
    """A route that reads its whole body, then answers 200 with it."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _call(
    path: str = "/publish", query: bytes = b"", chunks: tuple[bytes, ...] = (), content_type: str | None = None
) -> tuple[int, bytes]:
    headers = [(b"content-type", content_type.encode())] if content_type else []
    app = SimpleNamespace(state=SimpleNamespace(html_errors=[]))
    scope = {"type": "http", "method": "POST", "path": path, "query_string": query, "headers": headers, "app": app}
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> Message:
        return pending.pop(0)

    async def send(message: Message) -> None:
        sent.append(dict(message))

    asyncio.run(RefuseNul(_reads_its_body, own_path_misses=("/s/",))(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


FORM = "application/x-www-form-urlencoded"


def test_a_nul_in_the_path_or_query_is_answered_at_once() -> None:
    status, body = _call(path="/dashboard/tasks/ab\x00c")
    assert status == 422
    answer = json.loads(body)
    assert answer["code"] == "invalid_request" and "NUL character" in answer["detail"]
    assert answer["errors"] == [{"field": "path", "message": answer["errors"][0]["message"]}]
    for query in (b"pid=%00", b"a=1&acsn=x%00y", b"x=\x00"):
        status, body = _call(query=query)
        assert status == 422 and json.loads(body)["errors"][0]["field"] == "query", query


def test_look_alikes_are_not_refused() -> None:
    assert _call(query=b"pid=%2500&q=100")[0] == 200  # the text "%00"
    assert _call(chunks=(b"pid=%2500",), content_type=FORM)[0] == 200
    text = json.dumps({"service_title": "C:\\u0000"}).encode()  # a backslash, then the letters u0000
    assert b"\\\\u0000" in text and _call(chunks=(text,), content_type="application/json")[0] == 200
    assert _call(chunks=(b'{"a": "\\\\\\\\u0000"}',), content_type="application/json")[0] == 200  # \\ then u0000
    assert _call(chunks=(b"a=%00",), content_type="text/plain")[0] == 200  # not a form: the text "%00"


def test_the_link_pages_judge_their_own_paths() -> None:
    assert _call(path="/s/ab\x00c")[0] == 200  # the route answers (its usual 404 for a malformed key)
    assert _call(path="/s/abc", query=b"x=%00")[0] == 422
    assert _call(path="/static/ab\x00c")[0] == 422


JSON = "application/json"


@pytest.mark.parametrize(
    ("chunks", "content_type", "field"),
    [
        ((b"username=adm%00in&password=x",), FORM, "username"),
        ((b"username=adm%0", b"0in"), FORM, "username"),  # split across two chunks
        ((b"username=adm%", b"00in"), FORM, "username"),
        ((b"a=1", b"&b=", b"\x00"), FORM, "b"),
        ((b"us%00er=x",), FORM, "(unknown field)"),  # a name that is not a field name is not echoed
        ((b'{"patient_id": "P\\u0000"}',), JSON, "patient_id"),
        ((b'{"patient_id": "P\\u00', b'00"}'), JSON, "patient_id"),
        ((b'{"patient_id": "P\\\\\\u0000"}',), JSON, "patient_id"),  # \\ then the escape \u0000
        ((b'{"patient_id": "P\\u0000"}',), None, "patient_id"),  # FastAPI reads a body without a type as JSON
        ((b'{"patient_id": "P\\u0000"}',), "application/fhir+json", "patient_id"),
        ((b'{"a": [1, {"b": "\\u0000"}]}',), JSON, "a.1.b"),
        ((b'{"x\\u0000": 1}',), JSON, "(unknown field)"),
        ((b'{"patient_id": "P\x00"}',), JSON, "body"),  # a raw zero byte: not even JSON
        ((b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\na\x00b\r\n--b--\r\n",), "multipart/form-data", "body"),
    ],
)
def test_a_nul_in_the_body_is_raised_while_it_is_read_naming_the_field(
    chunks: tuple[bytes, ...], content_type: str | None, field: str
) -> None:
    with pytest.raises(NulInRequest) as raised:
        _call(chunks=chunks, content_type=content_type)
    assert raised.value.status_code == 422 and raised.value.detail == f"{field}: {NUL_MESSAGE}"
    assert raised.value.errors == [{"field": field, "message": NUL_MESSAGE}]
