"""The FastAPI application: the MIS API, the patient's link pages, and the dashboard.

``create_app()`` builds it; start-up work (database schema, the dispatcher thread) happens in the lifespan,
never at import. ``studypub api`` serves it with uvicorn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from typing import Any

from fastapi import FastAPI

import dashboard
from api import errors
from api.routes import fhir, health, links, publish, viewer, webhooks
from api.schemas import date_examples
from studypub.dispatch import Dispatcher
from studypub.settings import Settings, get_settings

DESCRIPTION = """
StudyPublicator publishes anonymised imaging studies from the clinic's PACS behind short, unguessable links.

The MIS calls **`POST /publish`** with the key it was given (`X-API-Key` header). The answer comes at once
with the patient's link; the study is found, retrieved, anonymised, zipped and uploaded in the background
(a Prefect flow run), and the link's page says "being prepared" until it is ready. `GET /publish/{task_id}`
follows it.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from studypub.db import get_engine, get_sessionmaker, migrate
        from studypub.tenancy import tenant_sessionmaker
        from studypub.users import ensure_first_admin

        migrate(settings)  # quick when `studypub api` has done it already
        app.state.sessions = tenant_sessionmaker(get_engine(settings))  # each route's: scoped by its caller
        app.state.system_sessions = get_sessionmaker(settings)  # the dispatcher's and /ready's
        with app.state.system_sessions() as session:
            ensure_first_admin(session, settings)
        # Prefect's client is imported here, once, before any thread needs it: the dispatcher thread and a
        # request thread (the dashboard's Retry, /ready) importing it at the same moment deadlock on
        # Python's module locks (seen: _DeadlockError on prefect.client.schemas.filters).
        import prefect.client.orchestration
        import prefect.client.schemas.filters
        import prefect.exceptions
        import prefect.states  # noqa: F401

        app.state.dispatcher = Dispatcher(app.state.system_sessions, interval=settings.api.dispatch_interval)
        app.state.dispatcher.start()
        try:
            yield
        finally:
            app.state.dispatcher.stop()

    app = FastAPI(
        title="StudyPublicator",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    # Inside the size limit: it never reads more than the limit allows. The link pages answer a malformed key
    # (NUL or not) with the same 404 as an unknown one.
    app.add_middleware(errors.RefuseNul, own_path_misses=("/s/",))
    app.add_middleware(errors.BodySizeLimit, limit=settings.api.max_body_bytes)
    app.add_middleware(links.LinkHygiene)
    app.include_router(publish.router)
    app.include_router(viewer.router)  # before the links' catch-all under /s/
    app.include_router(fhir.router)
    app.include_router(webhooks.router)
    app.include_router(links.router)
    app.include_router(viewer.assets)
    app.state.viewer_available = viewer.phone_available(settings)
    viewer.log.info(viewer.describe_assets(settings))
    dashboard.install(app, settings)
    app.include_router(health.router)
    _dated_openapi(app, settings)

    return app


def _dated_openapi(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI document, made once a day: its examples' storage dates are ahead of today, so the
    documented example can be sent as it is (``api.schemas.date_examples``)."""
    made_on: list[date] = []

    def openapi() -> dict[str, Any]:
        today = date.today()
        if app.openapi_schema is None or made_on != [today]:
            app.openapi_schema = None
            schema = FastAPI.openapi(app)  # stores it in app.openapi_schema
            date_examples(schema, settings.links.max_retention_days, settings.links.default_retention_days)
            made_on[:] = [today]
            return schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
