"""FastAPI dependencies as ``Annotated`` aliases: the settings, a database session, the calling MIS client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from studypub.apikeys import authenticate
from studypub.errors import Unauthorized
from studypub.models import ApiKey
from studypub.settings import Settings

API_KEY_HEADER = "X-API-Key"
_api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="The MIS client's key (`studypub create-api-key`)."
)


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_mis_client(session: SessionDep, key: Annotated[str | None, Security(_api_key_scheme)]) -> ApiKey:
    client = authenticate(session, key)
    if client is None:
        raise Unauthorized("missing or invalid API key" if key else f"the {API_KEY_HEADER} header is missing")
    return client


MisClient = Annotated[ApiKey, Depends(get_mis_client)]
