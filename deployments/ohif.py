"""Install OHIF for the desk viewer at set-up: the prebuilt ``@ohif/app`` dist from the npm registry (fetched
with ``npm pack``, checked against the pinned integrity), trimmed to what is served, moved from ``/`` to
``/ohif/`` and configured by us (``viewer/ohif-config.js``: the DICOM JSON data source only, no study list,
no upload, no telemetry, no service worker).

The prebuilt OHIF assumes it is served at ``/``: its index page names every asset from the root and sets
``window.PUBLIC_URL = "/"``, and its webpack runtime loads chunks from ``__webpack_require__.p = "/"``. Both
are rewritten here, once; the router's base is the config's ``routerBasename``.

    python -m deployments.ohif viewer/dist/ohif      (deployments/setup.sh runs it; idempotent)
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "3.13.2"
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
BASE = "/ohif/"
CONFIG = Path(__file__).parents[1] / "viewer" / "ohif-config.js"
STAMP = ".studypub-ohif"

# Not served: onnx runtime (segmentation models), the microscopy viewer, source maps, the service worker
# (it would cache patients' images beyond the link's life), Google's and OIDC's helpers, the demo's files.
SKIP_DIRS = ("ort/", "dicom-microscopy-viewer/", "customizations/")
SKIP_NAMES = re.compile(
    r"(\.map$|^sw\.js$|^init-service-worker\.js$|^google\.js$|^oidc-client\.min\.js$|^silent-refresh\.html$|"
    r"^_headers$|^_redirects$|^serve\.json$|^app-config\.js$|^assets/apple-touch-startup-image)"
)


def _check_integrity(tarball: Path) -> None:
    algorithm, expected = INTEGRITY.split("-", 1)
    digest = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if digest != expected:
        raise SystemExit(f"@ohif/app {VERSION}: the package's {algorithm} differs from the pinned one")


def _rewrite_index(html: str) -> str:
    html = html.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{BASE}"')
    # Every root-relative asset reference (href="/x", src="/x", content="/x") moves under BASE.
    html = re.sub(r'((?:href|src|content)=")/(?!/)', rf"\1{BASE}", html)
    html = re.sub(r'<script[^>]*init-service-worker\.js"></script>', "", html)
    return html


def install(target: Path) -> None:
    if (target / STAMP).is_file() and (target / STAMP).read_text().strip() == f"{VERSION} {_config_hash()}":
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", f"@ohif/app@{VERSION}", "--pack-destination", tmp, "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        [tarball] = Path(tmp).glob("*.tgz")
        _check_integrity(tarball)
        staging = Path(tmp) / "ohif"
        with tarfile.open(tarball) as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("package/dist/")
                if member.name == name or not member.isfile() or name.startswith(SKIP_DIRS):
                    continue
                if SKIP_NAMES.search(name):
                    continue
                dest = staging / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                data = source.read()
                if name.endswith(".js"):
                    data = data.replace(b'__webpack_require__.p = "/";', f'__webpack_require__.p = "{BASE}";'.encode())
                if name == "index.html":
                    data = _rewrite_index(data.decode()).encode()
                dest.write_bytes(data)
                if name.endswith((".js", ".css", ".wasm")) and len(data) > 1024:  # served to gzip-taking browsers
                    dest.with_name(dest.name + ".gz").write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
        shutil.copyfile(CONFIG, staging / "app-config.js")
        (staging / STAMP).write_text(f"{VERSION} {_config_hash()}\n")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), target)


def _config_hash() -> str:
    return hashlib.sha256(CONFIG.read_bytes() + Path(__file__).read_bytes()).hexdigest()[:12]


if __name__ == "__main__":
    install(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "viewer" / "dist" / "ohif"))
