"""The viewer's routes over real HTTP (``studypub api`` in its own process, local storage, SQLite): the link
page offers View images only when the viewer is installed and the archive has an index; the manifests list
exactly the archive's instances; an image is the archive's entry byte for byte, signed for one image,
cacheable privately; the per-link image budget answers 429; retention deletes the archive and its index, and
everything answers 410. (The browsers and the real publication path: tests/browser/test_viewer.py.)"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy import select

from studypub.db import get_sessionmaker, migrate
from studypub.models import AuditEvent, ViewerIndex
from studypub.settings import get_settings
from studypub.storage import open_storage
from studypub.viewer.index import Entry, build_index, instance_metadata, save_index
from tasks.archive import AppendOnlyWriter
from tests.support.api import past, seed_publication
from tests.unit.test_viewer_index import _instance


def _archive(count: int) -> tuple[bytes, dict[str, Any], list[bytes]]:
    blobs = [_instance(n) for n in range(1, count + 1)]
    raw = io.BytesIO()
    indexed = []
    with zipfile.ZipFile(AppendOnlyWriter(raw), "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for n, blob in enumerate(blobs):
            with zf.open(f"PT000000/ST000000/SE000000/IM{n:06d}", "w") as fout:
                fout.write(blob)
            indexed.append((Entry.from_zipinfo(zf.filelist[-1]), instance_metadata(dcmread(io.BytesIO(blob)))))
        zf.writestr("README.txt", b"note")
    return raw.getvalue(), build_index(indexed), blobs


def _fake_assets(root: Path) -> Path:
    (root / "phone").mkdir(parents=True)
    (root / "phone" / "viewer.js").write_text("// a stand-in: these tests are about the server side\n")
    return root


def _published(count: int = 4) -> tuple[Any, list[bytes]]:
    data, index, blobs = _archive(count)
    seeded = seed_publication(archive=data)
    with get_sessionmaker(get_settings())() as session:
        save_index(session, seeded.task_id, seeded.object_key, index)
        session.commit()
    return seeded, blobs


def test_without_the_viewer_installed_links_offer_the_download_only(api_server: Any, tmp_path: Path) -> None:
    migrate()
    seeded, _blobs = _published(2)
    empty = tmp_path / "no-assets"
    empty.mkdir()
    api = api_server(STUDYPUB_API__VIEWER_ASSETS_DIR=str(empty))
    with api.client() as http:
        page = http.get(f"/s/{seeded.link_key}")
        assert page.status_code == 200 and 'id="download"' in page.text and 'id="view"' not in page.text
        assert http.get(f"/s/{seeded.link_key}/view").status_code == 404
    assert "No in-browser viewer installed" in api.log_text()


def test_viewer_routes_serve_the_archive_and_obey_the_link(api_server: Any, tmp_path: Path) -> None:
    migrate()
    seeded, blobs = _published()
    unindexed = seed_publication()
    api = api_server(
        STUDYPUB_API__VIEWER_ASSETS_DIR=str(_fake_assets(tmp_path / "assets")),
        STUDYPUB_LINKS__VIEWER_RATE_LIMIT="12/minute",
    )
    with api.client() as http:
        page = http.get(f"/s/{seeded.link_key}")
        assert f'href="/s/{seeded.link_key}/view"' in page.text and 'id="view"' in page.text
        assert 'id="view"' not in http.get(f"/s/{unindexed.link_key}").text  # no index: download only
        assert http.get(f"/s/{unindexed.link_key}/view").status_code == 404

        view = http.get(f"/s/{seeded.link_key}/view")
        assert view.status_code == 200 and view.headers["cache-control"] == "no-store"
        assert "script-src 'self' 'wasm-unsafe-eval'" in view.headers["content-security-policy"]
        assert view.headers["referrer-policy"] == "no-referrer" and "noindex" in view.headers["x-robots-tag"]
        assert "data-desk=" not in view.text  # OHIF is not installed here: the touch viewer for everyone

        manifest = http.get(f"/s/{seeded.link_key}/view/manifest.json")
        assert manifest.headers["cache-control"] == "no-store"
        [study] = manifest.json()["studies"]
        instances = [i for s in study["series"] for i in s["instances"]]
        assert len(instances) == study["NumInstances"] == len(blobs)
        assert [i["metadata"]["InstanceNumber"] for i in instances] == [1, 2, 3, 4]
        assert all(i["metadata"]["PatientName"] == "" for i in instances)
        assert "DOE" not in manifest.text and "PID-1" not in manifest.text

        compact = http.get(f"/s/{seeded.link_key}/view/study.json").json()
        urls = [i["url"] for i in compact["series"][0]["instances"]]
        assert len(urls) == len(blobs)
        for url, blob in zip(urls, blobs, strict=True):
            answer = http.get(url)
            assert answer.status_code == 200 and answer.content == blob
            assert answer.headers["content-encoding"] == "deflate"  # the archive's own stream, inflated by the client
            assert answer.headers["cache-control"].startswith("private, max-age=")
        plain = http.get(urls[0], headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers and plain.content == blobs[0]
        assert http.get(urls[0].replace("s=", "s=x")).status_code == 403
        assert http.get(urls[0].split("?")[0]).status_code == 403

        # The per-link budget (12 a minute here): 4 + 1 plain + 2 refused-signature requests used, then 429.
        codes = [http.get(urls[1]).status_code for _ in range(8)]
        assert codes.count(429) >= 1 and codes[0] == 200, codes

    with get_sessionmaker(get_settings())() as session:
        viewed = session.scalars(
            select(AuditEvent).where(
                AuditEvent.task_id == seeded.task_id, AuditEvent.action == "link.viewed_in_browser"
            )
        ).all()
        assert len(viewed) == 1

    # Retention deletes the archive and its index; the viewer, its manifests and the images answer 410.
    from studypub.models import Task
    from studypub.retention import delete_expired

    with get_sessionmaker(get_settings())() as session:
        session.execute(Task.__table__.update().where(Task.id == seeded.task_id).values(save_till=past(1)))
        session.commit()
        outcome = delete_expired(session, open_storage(get_settings()))
        assert seeded.task_id in outcome.deleted
        assert session.scalar(select(ViewerIndex).where(ViewerIndex.task_id == seeded.task_id)) is None
    with api.client() as http:
        for path in ("/view", "/view/manifest.json", "/view/study.json"):
            assert http.get(f"/s/{seeded.link_key}{path}").status_code == 410, path
        assert http.get(urls[2]).status_code == 410
