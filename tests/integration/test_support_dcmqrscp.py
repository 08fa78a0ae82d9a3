"""dcmtk's dcmqrscp, a second independent Q/R SCP: C-FIND by AccessionNumber and C-MOVE to STUDYPUB."""

from __future__ import annotations

from collections.abc import Callable

from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

from studypub.demo.studies import GeneratedStudy, SeriesSpec
from tests.support.dcmqrscp import DcmQrScp
from tests.support.dicom import StorageSCP, c_echo, c_find_studies, c_move_study
from tests.support.fixtures import STUDYPUB_AET
from tests.support.net import free_port


def _uncompressed(study_factory: Callable[..., GeneratedStudy]) -> GeneratedStudy:
    return study_factory(
        series=[
            SeriesSpec(images=2, rows=96, cols=96, transfer_syntax="explicit"),
            SeriesSpec(images=2, rows=96, cols=96, transfer_syntax="implicit"),
            SeriesSpec(modality="OT", images=1, rows=64, cols=64, transfer_syntax="deflated"),
        ],
        include_pdf=True,
    )


def test_find_and_move_from_dcmqrscp(
    dcmqrscp: DcmQrScp, study_factory: Callable[..., GeneratedStudy], storage_scp: StorageSCP
) -> None:
    study = _uncompressed(study_factory)
    assert dcmqrscp.load(study.paths) == study.instance_count
    assert c_echo(dcmqrscp.host, dcmqrscp.port, dcmqrscp.aet) == 0
    matches = c_find_studies(
        dcmqrscp.host, dcmqrscp.port, dcmqrscp.aet, STUDYPUB_AET, AccessionNumber=study.accession_number
    )
    assert [m.StudyInstanceUID for m in matches] == [study.study_instance_uid]
    assert matches[0].PatientID == study.patient_id

    result = c_move_study(
        dcmqrscp.host, dcmqrscp.port, dcmqrscp.aet, study.study_instance_uid, STUDYPUB_AET, STUDYPUB_AET
    )
    assert result.status == 0x0000, result
    assert result.completed == study.instance_count
    got = storage_scp.for_study(study.study_instance_uid)
    assert {r.sop_instance_uid for r in got} == {i.sop_instance_uid for i in study.instances}


def test_store_over_network_and_move_compressed(
    dcmqrscp_factory: Callable[..., DcmQrScp], study_factory: Callable[..., GeneratedStudy]
) -> None:
    port = free_port()
    # A dcmqrscp that proposes JPEG lossless on its outgoing (C-MOVE) associations.
    qr = dcmqrscp_factory("MOVEDEST", port, aet="QRJPEG", propose="-xs")
    plain = study_factory(series=[SeriesSpec(images=2, rows=64, cols=64, transfer_syntax="explicit")])
    qr.store(plain.paths)  # C-STORE with storescu (uncompressed)
    jpeg = study_factory(series=[SeriesSpec(images=3, rows=64, cols=64, transfer_syntax="jpeg-lossless")])
    qr.load(jpeg.paths)
    # dcmqrscp sends a SOP class in one syntax per association: the receiver must choose JPEG lossless.
    prefer = [JPEGLosslessSV1, ExplicitVRLittleEndian]
    with StorageSCP(aet="MOVEDEST", port=port, transfer_syntaxes=prefer) as scp:
        assert c_find_studies(qr.host, qr.port, qr.aet, AccessionNumber=plain.accession_number)
        result = c_move_study(qr.host, qr.port, qr.aet, jpeg.study_instance_uid, "MOVEDEST")
        assert result.status == 0x0000 and result.completed == 3
        got = scp.for_study(jpeg.study_instance_uid)
        assert {r.transfer_syntax_uid for r in got} == {"1.2.840.10008.1.2.4.70"}
        # Unknown destination: refused.
        assert c_move_study(qr.host, qr.port, qr.aet, jpeg.study_instance_uid, "NOBODY").status != 0
