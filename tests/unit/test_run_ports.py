"""`studypub run` takes the default ports when they are free, free ones (said) when they are taken, and stops
with a message naming an explicitly set port that is taken; it never touches the process holding it."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from deployments.run import add_arguments, apply_ports, choose_ports, curl_example, port_free
from studypub.demo.studies import demo_studies
from studypub.settings import Settings


def run_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name in ("PREFECT_API_URL", "STUDYPUB_API__PORT", "STUDYPUB_PACS__PORT", "STUDYPUB_PACS__SCP_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("STUDYPUB_LINKS__PUBLIC_BASE_URL", raising=False)
    monkeypatch.delenv("STUDYPUB_DASHBOARD__PREFECT_UI_URL", raising=False)
    monkeypatch.setenv("STUDYPUB_WORK_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no .env of the checkout


def test_free_defaults_are_kept(clean_env: None) -> None:
    ports = choose_ports(Settings(), run_args(), free=lambda port: True)
    assert (ports.prefect, ports.api, ports.pacs, ports.pacs_http, ports.scp) == (4200, 8000, 4242, 8042, 11113)
    assert ports.notes == []


def test_taken_defaults_are_replaced_and_said(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = {4242, 8042, 8000, 11113}  # Debian's Orthanc, another web server, another studypub
    ports = choose_ports(Settings(), run_args(), free=lambda port: port not in taken)
    chosen = [ports.api, ports.pacs, ports.pacs_http, ports.scp]
    assert not set(chosen) & taken and len(set(chosen)) == 4 and ports.prefect == 4200
    assert len(ports.notes) == 4 and "port 4242 (demo PACS, DICOM) is taken: using" in ports.notes[0]
    settings = apply_ports(Settings(), ports)  # the children read them from the environment
    assert (settings.api.port, settings.pacs.port, settings.pacs.scp_port) == (ports.api, ports.pacs, ports.scp)
    assert settings.links.public_base_url == f"http://127.0.0.1:{ports.api}"


def test_a_taken_port_that_was_set_explicitly_stops_the_start(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYPUB_API__PORT", "8123")
    with pytest.raises(SystemExit, match=r"port 8123 \(API and dashboard\) is taken.*STUDYPUB_API__PORT"):
        choose_ports(Settings(), run_args(), free=lambda port: port != 8123)
    with pytest.raises(SystemExit, match="--prefect-port"):
        choose_ports(Settings(), run_args("--prefect-port", "4300"), free=lambda port: port != 4300)


def test_without_the_demo_the_storage_scp_port_is_not_moved(clean_env: None) -> None:
    # A real PACS sends the images to the port it knows.
    with pytest.raises(SystemExit, match="11113"):
        choose_ports(Settings(), run_args("--no-demo"), free=lambda port: port != 11113)


def test_port_free_sees_a_listener_on_any_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not port_free(s.getsockname()[1])


def test_the_demo_curl_matches_its_study() -> None:
    spec = demo_studies()[0]
    text = curl_example("http://127.0.0.1:8000", "sp_x", "default", spec)
    assert spec.modality == "CT" and '"service_title": "КТ органов' in text
    assert f'"accession_number": "{spec.accession_number}"' in text
    assert '"study_date": "2025-02-01T16:18:02+03:00"' in text


def test_stopping_a_child_stops_its_whole_process_group() -> None:
    import os
    import subprocess
    import time

    from deployments.run import stop_process

    # A child whose own child would outlive it if only the child were signalled.
    proc = subprocess.Popen(
        ["bash", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    stop_process(proc, 5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
            state = Path(f"/proc/{grandchild}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            break
        if state == "Z":
            break  # dead, waiting for its (init) parent to reap it
        time.sleep(0.1)
    else:
        raise AssertionError("the grandchild outlived stop_process")
    assert proc.returncode is not None
