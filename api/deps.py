"""FastAPI dependencies as ``Annotated`` aliases: the settings, a database session, the calling MIS client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from studypub.apikeys import Caller, authenticate
from studypub.errors import Unauthorized
from studypub.settings import Settings

API_KEY_HEADER = "X-API-Key"
_api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="The MIS client's key (`studypub create-api-key`)."
)


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request. Async on purpose: its clean-up (returning the connection to the pool) then runs
    on the event loop, not in a worker thread; a sync clean-up would wait for a free thread while holding a
    connection that the busy threads are waiting for (a pool/thread deadlock under load)."""
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def get_mis_client(session: SessionDep, key: Annotated[str | None, Security(_api_key_scheme)]) -> Caller:
    client = authenticate(session, key)
    # FastAPI runs this dependency and the route in different worker threads: end the transaction here so no
    # thread holds a pooled connection while it waits for another thread (a pool/thread deadlock under load).
    session.commit()
    if client is None:
        raise Unauthorized("missing or invalid API key" if key else f"the {API_KEY_HEADER} header is missing")
    return client


MisClient = Annotated[Caller, Depends(get_mis_client)]
