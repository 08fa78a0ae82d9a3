"""Debian's nginx running the project's configuration (deployments/nginx/studypub.conf.template) in a
private prefix, on free loopback ports, with a self-signed certificate: the compose file's reverse proxy,
without Docker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from studypub.tls import self_signed
from tests.support.net import LOOPBACK, free_port

ROOT = Path(__file__).parents[2]
TEMPLATE = ROOT / "deployments" / "nginx" / "studypub.conf.template"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def render(template: str, values: dict[str, str]) -> str:
    """What the nginx image's envsubst does: ${NAME} from ``values``; nginx's own $variables untouched."""
    missing = {m for m in re.findall(r"\$\{([A-Z0-9_]+)\}", template) if m not in values}
    if missing:
        raise KeyError(f"the template needs {sorted(missing)}")
    return re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: str(values[m.group(1)]), template)


class NginxServer:
    def __init__(self, prefix: Path, *, api: str, prefect: str, storage: str) -> None:
        self.prefix = prefix
        self.ports = {name: free_port() for name in ("HTTP_PORT", "HTTPS_PORT", "PREFECT_UI_PORT", "STORAGE_PORT")}
        self.upstreams = {"API_UPSTREAM": api, "PREFECT_UPSTREAM": prefect, "STORAGE_UPSTREAM": storage}
        self.certs = prefix / "certs"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "access.log"

    @property
    def cert(self) -> Path:
        return self.certs / "tls.crt"

    def url(self, port: str) -> str:
        scheme = "http" if port == "HTTP_PORT" else "https"
        return f"{scheme}://{LOOPBACK}:{self.ports[port]}"

    def write(self) -> Path:
        self_signed(self.certs, [LOOPBACK, "localhost"])
        for sub in ("logs", "temp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        values = {**self.ports, **self.upstreams, "TLS_DIR": str(self.certs), "ACCESS_LOG": str(self.access_log)}
        site = render(TEMPLATE.read_text(), values)
        site = site.replace("listen ", f"listen {LOOPBACK}:")
        (self.prefix / "studypub.conf").write_text(site)
        temp = self.prefix / "temp"
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers read the test's private folders
        main = self.prefix / "nginx.conf"
        main.write_text(
            f"{user}worker_processes 1;\npid {self.prefix}/nginx.pid;\nerror_log {self.prefix}/logs/error.log;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            "  include /etc/nginx/mime.types;\n"
            + "".join(f"  {kind}_temp_path {temp}/{kind};\n" for kind in TEMP_KINDS)
            + f"  include {self.prefix}/studypub.conf;\n}}\n"
        )
        return main

    def check(self) -> subprocess.CompletedProcess[str]:
        main = self.write()
        return subprocess.run(
            [NGINX, "-t", "-p", str(self.prefix), "-c", str(main)], capture_output=True, text=True, timeout=30
        )

    def start(self) -> NginxServer:
        main = self.write()
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.prefix), "-c", str(main), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=(self.prefix / "logs" / "stderr.log").open("wb"),
        )
        from studypub.demo.net import port_open

        deadline = time.monotonic() + 20
        while not port_open(self.ports["HTTPS_PORT"]):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {(self.prefix / 'logs' / 'error.log').read_text()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
