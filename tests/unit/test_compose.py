"""docker-compose.yml stays true without Docker: every service has a health check and a restart policy, no
secret is written in it, every variable it needs is in .env.example, every command it runs is a real entry
point of the project, and the files it mounts exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
ONE_SHOT = {"demo-studies"}  # exits when done: restarted only on failure
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH_STRING|(?<!_ID)KEY$|TOKEN", re.IGNORECASE)
REFERENCE = re.compile(r"\$\{([A-Z0-9_]+)(:?-[^}]*)?\}")
PLACEHOLDERS = ("changeme", "change-me", "password", "secret", "minioadmin", "admin:")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def test_every_service_has_a_health_check_and_a_restart_policy(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        test = (service.get("healthcheck") or {}).get("test")
        assert test and test != ["NONE"], f"{name} has no health check"
        expected = "on-failure" if name in ONE_SHOT else "unless-stopped"
        assert service.get("restart") == expected, f"{name}: restart {service.get('restart')!r}"


def test_no_secret_is_written_in_the_file(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: environment as a mapping"
        for key, value in environment.items():
            value = str(value)
            if SECRET_NAME.search(key):
                assert REFERENCE.fullmatch(value), f"{name}.{key} must come from .env"
            assert REFERENCE.sub("", value).strip().lower() not in PLACEHOLDERS, f"{name}.{key}"
            for match in re.finditer(r"://[^:/@\s]+:([^@\s]+)@", value):  # credentials inside a URL
                assert REFERENCE.fullmatch(match.group(1)), f"{name}.{key}: a password in a URL"


def test_every_variable_it_needs_is_documented(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    needed = {m.group(1) for m in REFERENCE.finditer(text) if not m.group(2)}
    documented = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert needed - documented == set()


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"
    assert (ROOT / "Dockerfile").is_file()


def test_named_volumes_hold_the_state(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name in ("postgres", "minio", "prefect", "work", "certs"):
        assert name in declared
    for service_name, service in services(compose).items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if not source.startswith(("./", "/")):
                assert source in declared, f"{service_name}: {source} is not a named volume"


def _commands(compose: dict[str, Any]) -> list[tuple[str, list[str]]]:
    found = []
    for name, service in services(compose).items():
        command = service.get("command")
        if command:
            found.append((name, [str(c) for c in command]))
        test = (service.get("healthcheck") or {}).get("test") or []
        if test and test[0] == "CMD" and test[1] == "python":
            found.append((f"{name} healthcheck", [str(c) for c in test[1:]]))
    return found


def test_every_command_is_a_real_entry_point(compose: dict[str, Any]) -> None:
    bin_dir = Path(sys.executable).parent
    checked = 0
    for name, command in _commands(compose):
        if command[0] == "sh":  # a shell line: each `studypub …` in it
            lines = [part.strip().split() for part in command[-1].split("&&")]
            argvs = [[w for w in line if w != "exec"] for line in lines]
        else:
            argvs = [command]
        for argv in argvs:
            if argv[0] in ("studypub", "prefect"):
                # The subcommand exists: `<tool> <subcommand…> --help` exits 0.
                words = [w for w in argv[1:] if not w.startswith("-")][:2]
                if argv[0] == "studypub":
                    words = words[:1]
                run = [str(bin_dir / argv[0]), *words, "--help"]
            elif argv[0] == "python" and argv[1] == "-m":
                module = argv[2]
                run = [sys.executable, "-c", f"import importlib; importlib.import_module({module!r})"]
            else:
                continue
            result = subprocess.run(run, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, (name, run, result.stderr[-500:])
            checked += 1
    assert checked >= 7


def test_health_check_sees_a_listening_port_and_a_closed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from deployments.healthcheck import main

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    monkeypatch.setenv("STUDYPUB_PACS__SCP_PORT", str(port))
    assert main(["worker"]) == 0
    listener.close()
    assert main(["worker"]) == 1
    monkeypatch.setenv("STUDYPUB_API__PORT", str(port))
    assert main(["api"]) == 1
    with pytest.raises(SystemExit):
        main(["nonsense"])
