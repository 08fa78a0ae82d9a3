"""The private Orthanc answers C-FIND by AccessionNumber and C-MOVEs a study to a pynetdicom Storage SCP."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from studypub.demo.orthanc import OrthancError, OrthancServer
from studypub.demo.studies import GeneratedStudy, SeriesSpec, transfer_syntax_unavailable_reason
from tests.support.dicom import StorageSCP, c_echo, c_find_studies, c_move_study
from tests.support.fixtures import STUDYPUB_AET
from tests.support.net import free_port


def _mixed(study_factory: Callable[..., GeneratedStudy]) -> GeneratedStudy:
    syntaxes = ["implicit", "explicit", "deflated", "jpeg-lossless", "jpeg-ls", "jpeg2000", "rle"]
    syntaxes = [ts for ts in syntaxes if transfer_syntax_unavailable_reason(ts) is None]
    series = [SeriesSpec(images=1, rows=96, cols=96, transfer_syntax=ts) for ts in syntaxes]
    series.append(
        SeriesSpec(modality="OT", images=1, frames=3, rows=64, cols=64, color=True, transfer_syntax="jpeg-baseline")
    )
    return study_factory(series=series, include_pdf=True)


def test_orthanc_rest_basics(orthanc: OrthancServer, study_factory: Callable[..., GeneratedStudy]) -> None:
    assert orthanc.system()["DicomAet"] == orthanc.aet
    before = orthanc.instance_count()
    study = study_factory()
    ids = orthanc.upload(study.paths)
    assert len(ids) == study.instance_count
    assert orthanc.instance_count() == before + study.instance_count
    assert len(orthanc.find_studies(AccessionNumber=study.accession_number)) == 1
    assert c_echo(orthanc.host, orthanc.dicom_port, orthanc.aet) == 0
    with pytest.raises(OrthancError):
        orthanc.request("GET", "/no-such-route")


def test_find_and_move_from_orthanc(
    orthanc: OrthancServer, study_factory: Callable[..., GeneratedStudy], storage_scp: StorageSCP
) -> None:
    study = _mixed(study_factory)
    orthanc.upload(study.paths)
    matches = c_find_studies(
        orthanc.host, orthanc.dicom_port, orthanc.aet, STUDYPUB_AET, AccessionNumber=study.accession_number
    )
    assert len(matches) == 1
    assert matches[0].StudyInstanceUID == study.study_instance_uid
    assert matches[0].PatientID == study.patient_id

    result = c_move_study(
        orthanc.host, orthanc.dicom_port, orthanc.aet, study.study_instance_uid, STUDYPUB_AET, STUDYPUB_AET
    )
    assert result.status == 0x0000, result
    got = storage_scp.for_study(study.study_instance_uid)
    assert len(got) == study.instance_count
    assert {r.sop_instance_uid for r in got} == {i.sop_instance_uid for i in study.instances}
    # Orthanc sends each instance in its stored transfer syntax when the SCP accepts it.
    assert {r.transfer_syntax_uid for r in got} == {i.transfer_syntax_uid for i in study.instances}


def test_modality_registered_at_run_time(orthanc: OrthancServer, study_factory: Callable[..., GeneratedStudy]) -> None:
    study = study_factory()
    orthanc.upload(study.paths)
    with StorageSCP(aet="LATECOMER", port=free_port()) as scp:
        # Unknown destination first: Orthanc refuses the move.
        refused = c_move_study(
            orthanc.host, orthanc.dicom_port, orthanc.aet, study.study_instance_uid, "LATECOMER", STUDYPUB_AET
        )
        assert refused.status != 0x0000
        orthanc.add_modality("latecomer", "LATECOMER", scp.host, scp.port)
        try:
            assert "latecomer" in orthanc.list_modalities()
            ok = c_move_study(
                orthanc.host,
                orthanc.dicom_port,
                orthanc.aet,
                study.study_instance_uid,
                "LATECOMER",
                STUDYPUB_AET,
            )
            assert ok.status == 0x0000
            assert len(scp.for_study(study.study_instance_uid)) == study.instance_count
        finally:
            orthanc.remove_modality("latecomer")


def test_orthanc_modality_fixture(
    orthanc: OrthancServer,
    orthanc_modality: Callable[..., None],
    study_factory: Callable[..., GeneratedStudy],
) -> None:
    study = study_factory()
    orthanc.upload(study.paths)
    with StorageSCP(aet="VIAFIXTURE") as scp:
        orthanc_modality("viafixture", "VIAFIXTURE", scp.port)
        # The registered peer may also query (Orthanc allows known AEs only).
        assert c_find_studies(
            orthanc.host,
            orthanc.dicom_port,
            orthanc.aet,
            "VIAFIXTURE",
            AccessionNumber=study.accession_number,
        )
        result = c_move_study(
            orthanc.host,
            orthanc.dicom_port,
            orthanc.aet,
            study.study_instance_uid,
            "VIAFIXTURE",
            "VIAFIXTURE",
        )
        assert result.status == 0 and len(scp.for_study(study.study_instance_uid)) == study.instance_count


def test_unknown_calling_aet_cannot_query(orthanc: OrthancServer) -> None:
    with pytest.raises((RuntimeError, ConnectionError)):
        c_find_studies(orthanc.host, orthanc.dicom_port, orthanc.aet, "STRANGER", AccessionNumber="X")


def test_private_orthanc_lifecycle(tmp_path, study_factory: Callable[..., GeneratedStudy]) -> None:
    with OrthancServer(tmp_path / "pacs", aet="PACS2", http_auth=True) as pacs:
        assert pacs.credentials is not None
        assert pacs.startup_seconds is not None and pacs.startup_seconds < 30
        pacs.upload(study_factory().paths)
        assert pacs.study_count() == 1
        pacs.delete_all()
        assert pacs.instance_count() == 0
        pid = pacs.pid
    assert not pacs.running() and pid is not None
    assert "HttpPort" in (tmp_path / "pacs" / "orthanc.json").read_text()
