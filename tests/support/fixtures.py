"""pytest plugin with the project's test servers and data (load with ``-p tests.support.fixtures`` or
``pytest_plugins = ["tests.support.fixtures"]``).

Session-scoped servers (each in its own tmp dir, on free loopback ports, stopped at session end even when
tests fail; Linux also SIGTERMs them if the test process dies):

- ``orthanc``: :class:`studypub.demo.orthanc.OrthancServer` (AE ``ORTHANC``) that knows the modality
  ``STUDYPUB`` -> (``STUDYPUB``, 127.0.0.1, ``studypub_scp_port``); register more with
  ``orthanc.add_modality(name, aet, host, port)`` or, undone after the test, ``orthanc_modality(name, aet,
  port)``. C-FIND/C-MOVE are accepted only from known AEs.
- ``dcmqrscp`` / ``dcmqrscp_factory(peer_aet, peer_port, ...)``: dcmtk's dcmqrscp
  (:class:`tests.support.dcmqrscp.DcmQrScp`), a second independent Q/R SCP.
- ``s3_server``: moto's S3 server (:class:`tests.support.s3.S3Server`, ``stop()``/``start()`` on the same
  port; state is lost on stop). ``s3_bucket``: a fresh private bucket per test.

``studypub_scp_port`` is the port every PACS is told the ``STUDYPUB`` Storage SCP listens on; override the
fixture to match a Storage SCP started elsewhere. ``storage_scp`` starts a pynetdicom Storage SCP there
for one test. ``study_factory(**overrides)`` generates a small study with a unique patient ID/accession.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from studypub.demo.orthanc import OrthancServer, orthanc_available
from studypub.demo.studies import GeneratedStudy, SeriesSpec, StudySpec, generate_study
from tests.support.dcmqrscp import DcmQrScp, dcmqrscp_available
from tests.support.dicom import StorageSCP
from tests.support.net import LOOPBACK, free_port
from tests.support.s3 import S3Server

STUDYPUB_AET = "STUDYPUB"
ORTHANC_AET = "ORTHANC"
DCMQRSCP_AET = "DCMQRSCP"

__all__ = [
    "DCMQRSCP_AET",
    "ORTHANC_AET",
    "STUDYPUB_AET",
    "dcmqrscp",
    "dcmqrscp_factory",
    "orthanc",
    "orthanc_modality",
    "s3_bucket",
    "s3_server",
    "small_study_spec",
    "storage_scp",
    "study_factory",
    "studypub_scp_port",
]


@pytest.fixture(scope="session")
def studypub_scp_port() -> int:
    """The port of the ``STUDYPUB`` Storage SCP (C-MOVE destination) for this test session."""
    return free_port()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory, studypub_scp_port: int) -> Iterator[OrthancServer]:
    reason = orthanc_available()
    if reason:
        pytest.skip(reason)
    server = OrthancServer(
        tmp_path_factory.mktemp("orthanc"),
        aet=ORTHANC_AET,
        modalities={STUDYPUB_AET: (STUDYPUB_AET, LOOPBACK, studypub_scp_port)},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def orthanc_modality(orthanc: OrthancServer) -> Iterator[Callable[..., None]]:
    """``register(name, aet, port, host="127.0.0.1")``: make a DICOM peer known to ``orthanc`` for this
    test (C-MOVE destination / allowed caller); removed again afterwards."""
    added: list[str] = []

    def register(name: str, aet: str, port: int, host: str = LOOPBACK) -> None:
        orthanc.add_modality(name, aet, host, port)
        added.append(name)

    try:
        yield register
    finally:
        for name in added:
            with contextlib.suppress(Exception):
                orthanc.remove_modality(name)


@pytest.fixture(scope="session")
def dcmqrscp_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., DcmQrScp]]:
    """``make(peer_aet="STUDYPUB", peer_port=..., peer_host="127.0.0.1", *, aet="DCMQRSCP", propose="-x=",
    peers=None)`` -> a started :class:`DcmQrScp` (one per distinct arguments, reused, stopped at the end)."""
    reason = dcmqrscp_available()
    servers: dict[tuple[Any, ...], DcmQrScp] = {}

    def make(
        peer_aet: str = STUDYPUB_AET,
        peer_port: int | None = None,
        peer_host: str = LOOPBACK,
        *,
        aet: str = DCMQRSCP_AET,
        propose: str = "-x=",
        peers: dict[str, tuple[str, str, int]] | None = None,
    ) -> DcmQrScp:
        if reason:
            pytest.skip(reason)
        table = dict(peers or {})
        if peer_port is not None:
            table.setdefault(peer_aet.lower(), (peer_aet, peer_host, peer_port))
        if not table:
            raise ValueError("dcmqrscp needs at least one peer (peer_port or peers)")
        key = (aet, propose, tuple(sorted(table.items())))
        if key not in servers:
            server = DcmQrScp(tmp_path_factory.mktemp("dcmqrscp"), table, aet=aet, propose=propose)
            server.start()
            servers[key] = server
        return servers[key]

    try:
        yield make
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def dcmqrscp(dcmqrscp_factory: Callable[..., DcmQrScp], studypub_scp_port: int) -> DcmQrScp:
    """dcmqrscp (AE ``DCMQRSCP``) that knows ``STUDYPUB`` at 127.0.0.1:``studypub_scp_port``."""
    return dcmqrscp_factory(STUDYPUB_AET, studypub_scp_port)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, empty, private bucket on ``s3_server`` (restarted first if a test left it stopped)."""
    if not s3_server.running():
        s3_server.start()
    name = s3_server.create_bucket()
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            s3_server.delete_bucket(name)


@pytest.fixture
def storage_scp(studypub_scp_port: int) -> Iterator[StorageSCP]:
    """A pynetdicom Storage SCP as ``STUDYPUB`` on ``studypub_scp_port`` for one test."""
    with StorageSCP(aet=STUDYPUB_AET, port=studypub_scp_port) as scp:
        yield scp


def small_study_spec(**overrides: Any) -> StudySpec:
    """A small CT (3 explicit-LE + 2 JPEG-lossless 128x128 slices, PHI everywhere), unique IDs."""
    token = uuid.uuid4().hex[:10].upper()
    spec = StudySpec(
        patient_id=f"PT{token}",
        accession_number=f"AC{token}",
        patient_name=f"TESTOVA^ANNA^{token[:4]}",
        study_description="Test CT",
        modality="CT",
        series=[
            SeriesSpec(images=3, rows=128, cols=128, transfer_syntax="explicit", description="Axial"),
            SeriesSpec(images=2, rows=128, cols=128, transfer_syntax="jpeg-lossless", description="Thick"),
        ],
        phi_rich=True,
    )
    return dataclasses.replace(spec, **overrides)


@pytest.fixture
def study_factory(tmp_path: Path) -> Callable[..., GeneratedStudy]:
    """``make(**StudySpec overrides)`` -> :class:`GeneratedStudy` under ``tmp_path`` with a unique
    patient ID and accession number per call (unless overridden)."""
    counter = itertools.count(1)

    def make(**overrides: Any) -> GeneratedStudy:
        spec = small_study_spec(**overrides)
        return generate_study(tmp_path / f"study-{next(counter)}", spec)

    return make


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``api_server(**env)`` starts ``studypub api`` (tests.support.api.ApiServer) with the test's
    environment plus ``env``; stopped after the test."""
    from tests.support.api import ApiServer

    started: list[Any] = []

    def start(**env: str) -> Any:
        from tests.support.api import ensure_test_clinics

        if not env.get("STUDYPUB_DATABASE__URL"):  # a database of the test's own environment
            ensure_test_clinics()
        server = ApiServer(tmp_path / f"api-{len(started)}.log", env=env).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
