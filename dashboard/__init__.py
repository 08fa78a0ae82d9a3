"""The dashboard for registrators and administrators: server-rendered pages under ``/dashboard``."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from studypub.settings import Settings


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the dashboard into the app: its routes, static files, HTML error pages and sign-in limiter."""
    from dashboard import clinics
    from dashboard.auth import LoginLimiter
    from dashboard.pages import router
    from dashboard.render import PREFIX, STATIC_DIR, error_page

    app.include_router(router)
    # The address alone (what a person types) leads to the dashboard, which leads to the sign-in if needed.
    app.add_api_route(
        "/", lambda: RedirectResponse(PREFIX, status_code=303), methods=["GET", "HEAD"], include_in_schema=False
    )
    app.include_router(clinics.router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="dashboard_static")
    app.state.html_errors = [*getattr(app.state, "html_errors", []), (PREFIX, error_page)]
    app.state.login_limiter = LoginLimiter(settings.dashboard.login_rate_limit)
