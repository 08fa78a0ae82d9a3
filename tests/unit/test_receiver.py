"""The Storage SCP over a real association: who may store, where instances go."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts

from studypub.demo.studies import SeriesSpec, StudySpec, generate_study
from studypub.dicom.receiver import Registry, registry_for, start_receiver
from studypub.settings import Settings
from tests.support.net import free_port


def test_two_publications_of_one_study_each_have_their_registration(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "receiving", b"s" * 32)
    registry.register("1.2.3", tmp_path / "a", "task-a")
    registry.register("1.2.3", tmp_path / "b", "task-b")
    assert registry.lookup("1.2.3") == [tmp_path / "a", tmp_path / "b"]
    registry.unregister("1.2.3", "task-a")
    assert registry.lookup("1.2.3") == [tmp_path / "b"]
    assert registry.active(60) == 1
    registry.unregister("1.2.3", "task-b")
    assert registry.lookup("1.2.3") == [] and registry.active(60) == 0


@pytest.fixture
def receiver(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(
        work_dir=tmp_path / "work",
        secret_key="k" * 64,
        pacs={"called_ae": "ORTHANC", "scp_port": free_port(), "scp_bind": "127.0.0.1"},
    )
    server = start_receiver(settings)
    yield settings
    server.shutdown()


def _store(settings: Settings, calling_ae: str, paths: list[Path]) -> list[int] | None:
    ae = AE(ae_title=calling_ae)
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", settings.pacs.scp_port, ae_title=settings.pacs.calling_ae)
    if not assoc.is_established:
        return None
    try:
        return [int(assoc.send_c_store(dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def test_only_the_pacs_may_store_and_only_for_a_registered_study(receiver: Settings, tmp_path: Path) -> None:
    study = generate_study(
        tmp_path / "s", StudySpec(patient_id="P", accession_number="A", series=[SeriesSpec(images=2, rows=16, cols=16)])
    )
    assert _store(receiver, "INTRUDER", study.paths) is None  # association rejected
    assert _store(receiver, "ORTHANC", study.paths) == [0x0124, 0x0124]  # nobody retrieves this study
    spools = [tmp_path / "spool-a", tmp_path / "spool-b"]
    registry = registry_for(receiver)
    registry.register(study.study_instance_uid, spools[0], "a")
    registry.register(study.study_instance_uid, spools[1], "b")
    assert _store(receiver, "ORTHANC", study.paths) == [0, 0]
    for spool in spools:
        names = sorted(p.name for p in spool.iterdir())
        assert len(names) == 2 and all(study.patient_id not in n for n in names)
        assert {dcmread(p).SOPInstanceUID for p in spool.iterdir()} == {dcmread(p).SOPInstanceUID for p in study.paths}
