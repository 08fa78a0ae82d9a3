"""The study in the browser, from the patient's link: ``/s/{key}/view`` opens a viewer (our touch viewer on a
phone, OHIF on a wide screen, either on request with ``?ui=phone|desk``), fed by manifests built from the
archive's viewer index (the anonymised instances in the archive, nothing else) and by signed, short-lived
instance URLs that read each instance's bytes out of the archive itself (studypub.viewer).

It obeys the link like the download does: revoked, expired or deleted → the 410 page for the viewer, both
manifests and every instance; the page and the manifests are ``no-store``; instances are cacheable privately
for at most the link's remaining life (and never past their URL's expiry). Pages and manifests count against
the per-address page limit; instances against their own per-link budget (``links.viewer_rate_limit``).
Opening the viewer is audited and counted like a download ("viewed in the browser").

The viewers' assets are built at set-up (``deployments/setup.sh``) into ``api.viewer_assets_dir``: ``phone/``
(the esbuild bundle) served under ``/viewer/``, ``ohif/`` (the prebuilt OHIF, its base path rewritten to
``/ohif/``) served under ``/ohif/``. Without them the link page offers the download only.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session
from starlette.responses import FileResponse, JSONResponse, RedirectResponse

from api.deps import PublicSessionDep, SettingsDep
from api.i18n import choose_locale
from api.routes.link_gate import SecondFactorChecked
from api.routes.links import (
    LinkRoute,
    _client,
    _facts,
    _gone,
    _message_page,
    _not_found,
    _page,
    _safely,
    _storage,
    _too_many,
)
from studypub.i18n import N_
from studypub.i18n.translator import translator
from studypub.links import Link, LinkState, find_link, record_download
from studypub.logs import details, get_logger
from studypub.models import utcnow
from studypub.settings import Settings
from studypub.storage import LocalStorage
from studypub.viewer.access import (
    DEFLATED,
    BlockCache,
    EntryUnreadable,
    expiry,
    for_browser,
    read_entry,
    read_stored,
    sign,
    verify,
)
from studypub.viewer.index import STUDY_KEYWORDS, Entry, load_index

log = get_logger("viewer")

DEFAULT_ASSETS = Path(__file__).parents[2] / "viewer" / "dist"
PHONE_PREFIX = "/viewer"
OHIF_PREFIX = "/ohif"

VIEWER_CSP = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
    "connect-src 'self' blob: data:; img-src 'self' data: blob:; style-src 'self'; font-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# OHIF's prebuilt bundle sets inline styles and evaluates code for its workers and codecs.
OHIF_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval' blob:; "
    "worker-src 'self' blob:; connect-src 'self' blob: data:; img-src 'self' data: blob:; "
    "style-src 'self' 'unsafe-inline'; font-src 'self' data:; base-uri 'self'; form-action 'none'; "
    "frame-ancestors 'none'"
)
PRIVATE_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
}

MESSAGES = {
    "no_viewer": (
        N_("The images cannot be shown in the browser"),
        N_("This study can only be downloaded. Go back to the link page and download the archive."),
    ),
}


# Assets -------------------------------------------------------------------------------------------------------


def assets_dir(settings: Settings) -> Path:
    return settings.api.viewer_assets_dir or DEFAULT_ASSETS


def phone_available(settings: Settings) -> bool:
    return (assets_dir(settings) / "phone" / "viewer.js").is_file()


def ohif_available(settings: Settings) -> bool:
    return (assets_dir(settings) / "ohif" / "index.html").is_file()


def describe_assets(settings: Settings) -> str:
    """A sentence for the start-up log: which viewers this service offers."""
    phone, ohif = phone_available(settings), ohif_available(settings)
    if phone and ohif:
        return "In-browser viewers available: touch viewer and OHIF"
    if phone:
        return "In-browser viewer: touch viewer only (OHIF not installed: run deployments/setup.sh)"
    return (
        f"No in-browser viewer installed in {assets_dir(settings)}: links offer the download only "
        "(run deployments/setup.sh)"
    )


# Index cache (object keys are never reused: an index never changes under its key) ---------------------------

_INDEX_CACHE: OrderedDict[str, dict[str, Any]] = OrderedDict()
_INDEX_LOCK = threading.Lock()
_INDEX_CACHE_SIZE = 16


def _index(session: Session, object_key: str) -> dict[str, Any] | None:
    with _INDEX_LOCK:
        if object_key in _INDEX_CACHE:
            _INDEX_CACHE.move_to_end(object_key)
            return _INDEX_CACHE[object_key]
    data = load_index(session, object_key)
    if data is None:
        return None
    with _INDEX_LOCK:
        _INDEX_CACHE[object_key] = data
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
    return data


# Per-link budget for instance requests ------------------------------------------------------------------------


class LinkBudget:
    """A moving-window limit per link (a hash of its key, never the key), in this process's memory."""

    def __init__(self, spec: str) -> None:
        self.items: list[RateLimitItem] = parse_many(spec)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, key: str) -> int | None:
        who = hashlib.sha256(key.encode()).hexdigest()[:24]
        for item in self.items:
            if not self._limiter.hit(item, "viewer", who):
                stats = self._limiter.get_window_stats(item, "viewer", who)
                return max(1, math.ceil(stats.reset_time - time.time()))
        return None


_budget_lock = threading.Lock()


def _budget(request: Request) -> LinkBudget:
    state = request.app.state
    budget = getattr(state, "viewer_budget", None)
    if budget is None:
        with _budget_lock:
            budget = getattr(state, "viewer_budget", None)
            if budget is None:
                budget = state.viewer_budget = LinkBudget(state.settings.links.viewer_rate_limit)
    return budget  # type: ignore[no-any-return]


_reader_lock = threading.Lock()


def _reader(request: Request, settings: Settings) -> Any:
    """Local files are read directly; S3 through a block cache (one per app instance, ~64 MiB at most)."""
    storage = _storage(request, settings)
    if isinstance(storage, LocalStorage):
        return storage
    state = request.app.state
    with _reader_lock:
        reader = getattr(state, "viewer_reader", None)
        if reader is None:
            reader = state.viewer_reader = BlockCache(storage)
    return reader


# Routes -------------------------------------------------------------------------------------------------------


class ViewerRoute(LinkRoute):
    """A link route (hygiene headers, errors as pages) whose answers may carry their own CSP and caching."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            response: Response = await handler(request)
            response.headers.update(getattr(response, "viewer_headers", {}))
            return response

        return route


router = APIRouter(route_class=ViewerRoute, include_in_schema=False)


def _with(response: Response, headers: dict[str, str]) -> Response:
    response.viewer_headers = headers  # type: ignore[attr-defined]
    return response


def _no_viewer(request: Request) -> Response:
    t = translator(choose_locale(request).locale)
    title, text = MESSAGES["no_viewer"]
    return _page(
        request, "link_message.html", status_code=404, kind="no_viewer", title=t.gettext(title), text=t.gettext(text)
    )


def _ready_link(request: Request, session: Session, key: str) -> tuple[Link | None, Response | None]:
    """The link when it is ready; otherwise the answer to give (404, 410, or back to the link page)."""
    link = find_link(session, key)
    if link.state is LinkState.UNKNOWN:
        return None, _not_found(request)
    if link.state is LinkState.GONE:
        return None, _gone(request)
    if link.state is not LinkState.READY or not link.object_key:
        return None, RedirectResponse(request.url_for("link_page", key=key).path, status_code=303)
    return link, None


def manifest_url(request: Request, key: str) -> str:
    return str(request.url_for("viewer_manifest", key=key))


# OHIF's names for our languages (its prebuilt dist ships all five: en-US, ru, de, es, fr).
OHIF_LANGUAGES = {"en": "en-US", "ru": "ru", "de": "de", "es": "es", "fr": "fr"}


def ohif_url(request: Request, key: str) -> str:
    """OHIF's address for the link: the manifest, and the link page's language (OHIF reads ``?lng=``)."""
    language = OHIF_LANGUAGES.get(choose_locale(request).locale, "en-US")
    return f"{OHIF_PREFIX}/viewer/dicomjson?url={quote(manifest_url(request, key), safe='')}&lng={language}"


@router.api_route("/s/{key}/view", methods=["GET", "HEAD"], name="viewer_page")
def viewer_page(
    key: str, request: Request, session: PublicSessionDep, settings: SettingsDep, _gate: SecondFactorChecked
) -> Response:
    """The viewer: the touch viewer's page, which sends a wide screen with a mouse on to OHIF (unless
    ``?ui=phone``); ``?ui=desk`` goes to OHIF at once. Counted like a download."""
    try:
        if (limited := _too_many(request)) is not None:
            return limited
        link, answer = _ready_link(request, session, key)
        if link is None:
            assert answer is not None
            return answer
        if _index(session, link.object_key or "") is None or not phone_available(settings):
            return _no_viewer(request)
        if request.method == "GET":
            counted = _safely(
                "view in the browser",
                lambda: record_download(session, link, _client(request), via="viewer", action="link.viewed_in_browser"),
                session,
            )
            if counted is False:
                return _gone(request)
        ui = request.query_params.get("ui")
        desk = ohif_available(settings)
        if ui == "desk" and desk:
            return RedirectResponse(ohif_url(request, key), status_code=303)
        t = translator(choose_locale(request).locale)
        facts = _facts(t, link, settings)
        response = _page(
            request,
            "viewer_phone.html",
            study_url=request.url_for("viewer_study", key=key).path,
            link_url=request.url_for("link_page", key=key).path,
            download_url=request.url_for("link_download", key=key).path,
            desk_url=ohif_url(request, key) if desk and ui != "phone" else "",
            full_viewer_url=f"{request.url_for('viewer_page', key=key).path}?ui=desk" if desk else "",
            phone_css=f"{PHONE_PREFIX}/viewer.css",
            phone_js=f"{PHONE_PREFIX}/viewer.js",
            choose_js=f"{PHONE_PREFIX}/choose.js",
            strings=_strings(t),
            **facts,
        )
        return _with(response, {"Content-Security-Policy": VIEWER_CSP})
    finally:
        session.close()


def _strings(t: Any) -> dict[str, str]:
    """The touch viewer's own words, in the page's language."""
    return {
        "loading": t.gettext("Loading images…"),
        "cannot_show": t.gettext(
            "This image cannot be shown in the browser. It is in the archive: download it to see it in a DICOM viewer."
        ),
        "series": t.gettext("Series"),
        "image_of": t.gettext("Image %(num)s of %(count)s", num="{n}", count="{count}"),
        "mode_scroll": t.gettext("Scroll"),
        "mode_window": t.gettext("Contrast"),
        "reset": t.gettext("Reset"),
        "play": t.gettext("Play"),
        "pause": t.gettext("Pause"),
        "soft_tissue": t.gettext("Soft tissue"),
        "lung": t.gettext("Lung"),
        "bone": t.gettext("Bone"),
        "brain": t.gettext("Brain"),
        "facts": t.gettext("About the study"),
        "back": t.gettext("Back to the link"),
        "gone": t.gettext("This link has expired"),
    }


def _instances(
    request: Request, settings: Settings, key: str, link: Link, index: dict[str, Any]
) -> list[tuple[int, dict[str, Any], str]]:
    """(position, metadata, signed URL) for every instance in the archive, in archive order."""
    secret = settings.secret_bytes()
    expires = expiry(settings.links.viewer_url_seconds)
    base = str(request.url_for("viewer_instance", key=key, n="0"))[: -len("0")]
    object_key = link.object_key or ""
    return [
        (n, item["meta"], f"{base}{n}?e={expires}&s={sign(secret, object_key, n, expires)}")
        for n, item in enumerate(index.get("instances") or [])
    ]


def _series_order(meta: dict[str, Any]) -> tuple[int, str]:
    number = meta.get("SeriesNumber")
    return (number if isinstance(number, int) else 1 << 30, str(meta.get("SeriesInstanceUID", "")))


def _instance_order(item: tuple[int, dict[str, Any], str]) -> tuple[int, int]:
    number = item[1].get("InstanceNumber")
    return (number if isinstance(number, int) else 1 << 30, item[0])


def _grouped(items: list[tuple[int, dict[str, Any], str]]) -> list[list[tuple[int, dict[str, Any], str]]]:
    series: dict[str, list[tuple[int, dict[str, Any], str]]] = {}
    for item in items:
        series.setdefault(str(item[1].get("SeriesInstanceUID", "")), []).append(item)
    groups = [sorted(members, key=_instance_order) for members in series.values()]
    return sorted(groups, key=lambda members: _series_order(members[0][1]))


def _json(data: Any) -> Response:
    return _with(JSONResponse(data), {"Cache-Control": "no-store"})


def _manifest_context(key: str, request: Request, session: Session, settings: Settings) -> Any:
    if (limited := _too_many(request)) is not None:
        return limited
    link, answer = _ready_link(request, session, key)
    if link is None:
        return answer
    index = _index(session, link.object_key or "")
    if index is None:
        return _no_viewer(request)
    return link, _grouped(_instances(request, settings, key, link, index))


@router.get("/s/{key}/view/manifest.json", name="viewer_manifest")
def viewer_manifest(
    key: str, request: Request, session: PublicSessionDep, settings: SettingsDep, _gate: SecondFactorChecked
) -> Response:
    """OHIF's DICOM JSON: the study, its series, each instance's metadata and its signed URL."""
    try:
        context = _manifest_context(key, request, session, settings)
        if isinstance(context, Response):
            return context
        _link, groups = context
        first = groups[0][0][1] if groups else {}
        series = []
        modalities: list[str] = []
        for members in groups:
            head = members[0][1]
            modality = str(head.get("Modality") or "OT")
            if modality not in modalities:
                modalities.append(modality)
            series.append(
                {
                    "SeriesInstanceUID": head.get("SeriesInstanceUID", ""),
                    "SeriesNumber": head.get("SeriesNumber"),
                    "SeriesDescription": head.get("SeriesDescription", ""),
                    "Modality": modality,
                    "SliceThickness": head.get("SliceThickness"),
                    "instances": [
                        {"metadata": {**meta, "PatientName": "", "PatientID": ""}, "url": f"dicomweb:{url}"}
                        for _n, meta, url in members
                    ],
                }
            )
        study = {k: first.get(k, "") for k in STUDY_KEYWORDS}
        study.update(
            {
                "PatientName": "",
                "PatientID": "",
                "AccessionNumber": "",
                "NumInstances": sum(len(m) for m in groups),
                "Modalities": "\\".join(modalities),
                "series": series,
            }
        )
        return _json({"studies": [study]})
    finally:
        session.close()


@router.get("/s/{key}/view/study.json", name="viewer_study")
def viewer_study(
    key: str, request: Request, session: PublicSessionDep, settings: SettingsDep, _gate: SecondFactorChecked
) -> Response:
    """The touch viewer's compact manifest: series with their instances' URLs, frames and display hints."""
    try:
        context = _manifest_context(key, request, session, settings)
        if isinstance(context, Response):
            return context
        _link, groups = context
        series = []
        for members in groups:
            head = members[0][1]
            series.append(
                {
                    "number": head.get("SeriesNumber"),
                    "description": head.get("SeriesDescription", ""),
                    "modality": head.get("Modality", ""),
                    "instances": [
                        {
                            "url": url,
                            "frames": int(meta.get("NumberOfFrames") or 1),
                            "frameTime": meta.get("FrameTime"),
                            "syntax": meta.get("TransferSyntaxUID", ""),
                            "pixels": bool(meta.get("Rows")),
                        }
                        for _n, meta, url in members
                    ],
                }
            )
        return _json({"series": series})
    finally:
        session.close()


def _cache_seconds(link: Link, expires: int) -> int:
    now = utcnow()
    until = link.save_till or now
    remaining = int((until - now).total_seconds()) if isinstance(until, datetime) else 0
    return max(0, min(remaining, expires - int(time.time())))


@router.get("/s/{key}/view/i/{n}", name="viewer_instance")
def viewer_instance(
    key: str, n: str, request: Request, session: PublicSessionDep, settings: SettingsDep, _gate: SecondFactorChecked
) -> Response:
    """One instance (application/dicom), read out of the archive. A bad or expired signature: 403."""
    try:
        link, answer = _ready_link(request, session, key)
        if link is None:
            assert answer is not None
            if answer.status_code == 303:  # published again, the new archive on its way: not now
                return _message_page(request, 503, "unavailable", headers={"Retry-After": "60"})
            return answer
        if (retry := _budget(request).hit(key)) is not None:
            return _with(Response(status_code=429, headers={"Retry-After": str(retry)}), {})
        object_key = link.object_key or ""
        expires, signature = request.query_params.get("e", ""), request.query_params.get("s", "")
        if not n.isdigit() or not verify(settings.secret_bytes(), object_key, int(n), expires, signature):
            return Response("This image address has expired: reopen the viewer from the link.", status_code=403)
        index = _index(session, object_key)
        items = (index or {}).get("instances") or []
        if int(n) >= len(items):
            return _not_found(request)
        entry = Entry.from_list(items[int(n)]["zip"])
        session.close()  # storage may take a moment: no database connection held meanwhile
        deflated = items[int(n)]["meta"].get("TransferSyntaxUID") == DEFLATED
        passthrough = entry.method == 8 and not deflated and "deflate" in request.headers.get("accept-encoding", "")
        encoding: dict[str, str] = {}
        try:
            if passthrough:  # the archive's deflate stream as it is: the browser inflates it
                body = read_stored(_reader(request, settings), object_key, entry)
                encoding = {"Content-Encoding": "deflate", "Vary": "Accept-Encoding"}
            else:
                body = for_browser(read_entry(_reader(request, settings), object_key, entry))
        except FileNotFoundError:
            return _gone(request)
        except EntryUnreadable as exc:
            log.error("Viewer index does not match its archive", extra=details(task_id=link.task_id, error=str(exc)))
            return _not_found(request)
        age = _cache_seconds(link, int(expires))
        return _with(
            Response(body, media_type="application/dicom", headers=encoding),
            {"Cache-Control": f"private, max-age={age}, immutable" if age > 0 else "no-store"},
        )
    finally:
        session.close()


# Static assets --------------------------------------------------------------------------------------------------


def _asset(root: Path, path: str) -> Path | None:
    base = root.resolve()
    candidate = (base / path).resolve()
    if base != candidate and base not in candidate.parents:
        return None
    return candidate if candidate.is_file() else None


_CONTENT_TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}


def _file(path: Path, headers: dict[str, str], request: Request | None = None) -> Response:
    """The file, or its gzip twin written at set-up when the browser takes gzip (the viewers' scripts and
    codecs are ~4× smaller compressed)."""
    packed = path.with_name(path.name + ".gz")
    if request is not None and "gzip" in request.headers.get("accept-encoding", "") and packed.is_file():
        response = FileResponse(packed, media_type=_CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
        response.headers["Content-Encoding"] = "gzip"
        response.headers["Vary"] = "Accept-Encoding"
    else:
        response = FileResponse(path, media_type=_CONTENT_TYPES.get(path.suffix))
    response.headers.update(PRIVATE_HEADERS)
    response.headers.update(headers)
    return response


assets = APIRouter(include_in_schema=False)


@assets.get(PHONE_PREFIX + "/{path:path}", name="viewer_assets")
def phone_assets(path: str, request: Request, settings: SettingsDep) -> Response:
    """The touch viewer's bundle (and the small script that picks a viewer): cacheable for a day."""
    root = assets_dir(settings) / "phone"
    local = _asset(root, path) or _asset(Path(__file__).parents[1] / "static" / "viewer", path)
    if local is None:
        return Response(status_code=404, headers=PRIVATE_HEADERS)
    return _file(local, {"Cache-Control": "public, max-age=86400"}, request)


@assets.get(OHIF_PREFIX, name="ohif_root")
@assets.get(OHIF_PREFIX + "/{path:path}", name="ohif_assets")
def ohif_assets(request: Request, settings: SettingsDep, path: str = "") -> Response:
    """OHIF: its files, and its index page for every route of the app (a single-page app). The page carries
    the manifest's URL (a link key) in its address: no referrer, no indexing, no caching."""
    root = assets_dir(settings) / "ohif"
    local = _asset(root, path) if path else None
    if local is not None and local.name != "index.html":
        hashed = any(part in local.name for part in (".bundle.", ".wasm", ".woff"))
        return _file(local, {"Cache-Control": "public, max-age=604800" if hashed else "no-cache"}, request)
    index = _asset(root, "index.html")
    if index is None:
        return Response(status_code=404, headers=PRIVATE_HEADERS)
    return _file(index, {"Cache-Control": "no-store", "Content-Security-Policy": OHIF_CSP, "X-Frame-Options": "DENY"})
