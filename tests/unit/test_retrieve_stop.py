"""A retrieval stops within a second once its publication is aborted, even while the PACS sends nothing
(a large instance on its way, a stalled PACS: the next C-MOVE/C-GET response may be minutes away, up to
``pacs.dimse_timeout``). The PACS here is a pynetdicom Q/R SCP over a real association whose C-MOVE and C-GET
handlers stall for a minute before their first response."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from studypub.dicom import scu
from studypub.errors import Aborted
from studypub.settings import Settings
from tests.support.net import free_port

STALL_SECONDS = 60.0


@pytest.fixture
def stalling_pacs() -> Iterator[tuple[int, threading.Event]]:
    released = threading.Event()
    destination = AE(ae_title="STUDYPUB")  # where the C-MOVE would send its instances (it never does)
    destination.add_supported_context(CTImageStorage)
    destination_port = free_port()
    dest_server = destination.start_server(("127.0.0.1", destination_port), block=False)

    def stall(event: evt.Event):  # type: ignore[no-untyped-def]
        if event.event == evt.EVT_C_MOVE:
            yield "127.0.0.1", destination_port  # the move destination, asked for first
        yield 1  # one sub-operation
        released.wait(STALL_SECONDS)  # ... which never comes while the test runs
        yield 0xA702, None

    ae = AE(ae_title="STALLING")
    ae.add_requested_context(CTImageStorage)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_MOVE, stall), (evt.EVT_C_GET, stall)]
    )
    yield port, released
    released.set()
    server.shutdown()
    dest_server.shutdown()


@pytest.mark.parametrize("method", ["move", "get"])
def test_an_aborted_retrieval_ends_within_a_second_while_the_pacs_stalls(
    tmp_path: Path, stalling_pacs: tuple[int, threading.Event], method: str
) -> None:
    port, _released = stalling_pacs
    settings = Settings(
        work_dir=tmp_path / "work",
        secret_key="k" * 64,
        pacs={"host": "127.0.0.1", "port": port, "called_ae": "STALLING", "dimse_timeout": 600},
    )
    abort = tmp_path / "abort"
    threading.Timer(1.0, abort.touch).start()  # another step fails one second in
    started = time.monotonic()
    with pytest.raises(Aborted):
        if method == "move":
            scu.move_study(settings, "1.2.3.4", stop=abort.exists)
        else:
            scu.get_study(settings, "1.2.3.4", ["1.2.840.10008.5.1.4.1.1.2"], tmp_path / "raw", stop=abort.exists)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 3.0, elapsed  # not the minute the PACS stalls, nor the 600 s DIMSE timeout
