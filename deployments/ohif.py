"""Install OHIF for the desk viewer at set-up: the prebuilt ``@ohif/app`` dist from the npm registry (fetched
with ``npm pack``, checked against the pinned integrity), trimmed to what is served, moved from ``/`` to
``/ohif/`` and configured by us (``viewer/ohif-config.js``: the DICOM JSON data source only, no study list,
no upload, no telemetry, no service worker).

The prebuilt OHIF assumes it is served at ``/``: its index page names every asset from the root and sets
``window.PUBLIC_URL = "/"``, its webpack runtime loads chunks from ``__webpack_require__.p = "/"`` and its
style sheet takes its font from ``url(/...)``. All are rewritten here, once; the router's base is the
config's ``routerBasename``.

The time to the first image: OHIF starts with one 17 MiB script, then loads its plugins' chunks in four
waves (each wave asked for only after the previous one ran), then the manifest, then the first instance.
The index page here asks for all of them at once: ``<link rel="preload">`` for the chunks the basic
viewer loads before its first image (:data:`STARTUP_CHUNKS`, measured in Chromium for this version), a
prefetch for the image decoder's worker, and a small inline script that preloads the manifest named in
the address (same origin only), so the downloads run while the big script is parsed.

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

# Chunks the /viewer route loads before its first image, with the config's trimmed plugin lists (measured
# with Chromium on a CT for 3.13.2: every request before the first rendered image): scripts, style sheets,
# workers. A version bump re-measures them (install fails if one is gone).
STARTUP_CHUNKS = {
    "script": (
        *(1673, 6938, 6489, 6495, 8478, 89, 2623, 6749, 5696, 9383, 7248, 781, 9415, 3500, 9116, 100),
        *(5406, 3760, 9068, 899, 5910, 7463, 5448, 1206),
    ),
    "style": (6214, 2623, 3833, 781, 9415, 3760, 5910, 7463),
    "worker": (8097, 6915),  # the DICOM decoder, the histogram worker
}

# Preloads the manifest named in the address (?url=, same origin and the manifest's path only) while the
# app's script is still being parsed; OHIF's own fetch of it then takes the preloaded answer.
MANIFEST_PRELOAD = (
    "<script>(function(){try{var u=new URL(new URLSearchParams(location.search).get('url')||'',location.href);"
    "if(u.origin!==location.origin||!/^\\/s\\/[^/]+\\/view\\/manifest\\.json$/.test(u.pathname))return;"
    "var l=document.createElement('link');l.rel='preload';l.as='fetch';l.crossOrigin='anonymous';l.href=u.href;"
    "document.head.appendChild(l)}catch(e){}})()</script>"
)

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


def _rewrite_index(html: str, preloads: str = "") -> str:
    html = html.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{BASE}"')
    # Every root-relative asset reference (href="/x", src="/x", content="/x") moves under BASE.
    html = re.sub(r'((?:href|src|content)=")/(?!/)', rf"\1{BASE}", html)
    html = re.sub(r'<script[^>]*init-service-worker\.js"></script>', "", html)
    if preloads:
        html = html.replace("<script defer src=", MANIFEST_PRELOAD + "<script defer src=", 1)
        html = html.replace("</head>", preloads + "</head>", 1)
    return html


def _chunk_files(runtime: str) -> dict[int, str]:
    """Chunk id → file name, from the webpack runtime's ``__webpack_require__.u`` (named chunks, hashes)."""
    start = runtime.index("__webpack_require__.u = (chunkId)")
    body = runtime[start : runtime.index("\n}", start)]
    named_part, _, hashed_part = body.partition("}[chunkId] || chunkId)")
    names = {int(k): v for k, v in re.findall(r'(\d+): "([A-Za-z-]+)"', named_part)}
    hashes = {int(k): v for k, v in re.findall(r'(\d+): "([0-9a-f]{8,})"', hashed_part)}
    return {chunk: f"{names.get(chunk, chunk)}.bundle.{digest}.js" for chunk, digest in hashes.items()}


def _preloads(staging: Path) -> str:
    [app] = staging.glob("app.bundle.*.js")
    files = _chunk_files(app.read_text(encoding="utf-8"))
    links = []
    for kind, chunks in STARTUP_CHUNKS.items():
        for chunk in chunks:
            name = f"{chunk}.css" if kind == "style" else files.get(chunk, "")
            if not name or not (staging / name).is_file():
                raise SystemExit(f"@ohif/app {VERSION}: no startup chunk {chunk} ({kind}): re-measure STARTUP_CHUNKS")
            rel = 'rel="prefetch"' if kind == "worker" else f'rel="preload" as="{kind}"'
            links.append(f'<link {rel} href="{BASE}{name}">')
    return "".join(links)


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
                if name.endswith(".css"):  # fonts named from the root
                    data = re.sub(rb"url\(/(?!/)", b"url(" + BASE.encode(), data)
                dest.write_bytes(data)
                if name.endswith((".js", ".css", ".wasm")) and len(data) > 1024:  # served to gzip-taking browsers
                    dest.with_name(dest.name + ".gz").write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
        index = staging / "index.html"
        index.write_text(_rewrite_index(index.read_text(encoding="utf-8"), _preloads(staging)), encoding="utf-8")
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
