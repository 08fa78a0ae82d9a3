"""The dashboard as a browser meets it, over real HTTP: users made through the domain functions, a signed-in
client that carries cookies and the CSRF token of the pages it loaded."""

from __future__ import annotations

import re
from typing import Any

import httpx

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'<meta name="csrf-token" content="([0-9a-f]+)">')


def make_user(username: str, role: str = "registrator", password: str = PASSWORD, **kwargs: Any) -> int:
    """A user of the clinic ``seed_publication`` publishes for, unless ``clinic_code`` says otherwise."""
    from studypub.db import get_sessionmaker
    from studypub.settings import get_settings
    from studypub.users import create_user
    from tests.support.api import ensure_test_clinics

    settings = get_settings()
    ensure_test_clinics()
    kwargs.setdefault("clinic_code", "f_Khimki")
    with get_sessionmaker(settings)() as session:
        return create_user(session, settings, username, password, role, actor="test", **kwargs).id


class Browser:
    """An httpx client that behaves like a browser on the dashboard: cookies, the page's CSRF token."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(
            base_url=base_url, timeout=30, follow_redirects=False, headers={"Accept-Language": "en-GB,en;q=0.9"}
        )
        self.csrf = ""

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.http.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.get(path, **kwargs)
        if found := _CSRF.search(response.text):
            self.csrf = found.group(1)
        return response

    def post(
        self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True, **kwargs: Any
    ) -> httpx.Response:
        if not self.csrf:
            self.get("/dashboard/login")
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.csrf
        response = self.http.post(path, data=form, **kwargs)
        if found := _CSRF.search(response.text):
            self.csrf = found.group(1)
        return response

    def login(self, username: str, password: str = PASSWORD) -> httpx.Response:
        self.get("/dashboard/login")
        response = self.post("/dashboard/login", {"username": username, "password": password})
        assert response.status_code == 303, response.text[:500]
        return response
