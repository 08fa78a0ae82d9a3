"""Coded entries: kept only from public coding schemes, and a public code's meaning only when it is the
dictionary's or holds no removed value; a local or unknown scheme's code is free text (hostile files)."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage

from studypub.deid.codes import dictionary_meaning, is_public_scheme, matches_dictionary
from studypub.deid.engine import StudyAnonymiser
from tests.unit import deid_hostile as H


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _content(value_type: str, concept: Dataset, **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", value_type
    item.ConceptNameCodeSequence = [concept]
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _codes(ds: Dataset) -> list[tuple[str, str, str]]:
    out = []
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                if "CodingSchemeDesignator" in item:
                    out.append((str(item.get("CodeValue")), str(item.CodingSchemeDesignator), str(item.CodeMeaning)))
                out.extend(_codes(item))
    return out


def test_public_schemes_and_the_shipped_dictionary() -> None:
    assert is_public_scheme("DCM") and is_public_scheme("SCT") and is_public_scheme("LN")
    assert not is_public_scheme("99_OFFIS_DCMTK") and not is_public_scheme("L") and not is_public_scheme("")
    assert dictionary_meaning("DCM", "121071") == "Finding"
    assert matches_dictionary("SCT", "69536005", "HEAD") and not matches_dictionary("SCT", "69536005", "Head of X")
    assert dictionary_meaning("99LOCAL", "121071") is None


def test_local_codes_carrying_identity_never_reach_the_output(tmp_path: Path) -> None:
    ds = H.base_dataset(H.ORIG_ROOT + "900", sop_class=ComprehensiveSRStorage)
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    ds.ContentSequence = [
        # a local concept name that is the patient's name, in a scheme named after the institution
        _content("TEXT", _code("ZQXC1", "99ZQXHOSP", "ZQXPATIENT follow-up"), TextValue="ZQXNOTE"),
        # a local code value in a CODE item
        _content("CODE", _code("121071", "DCM", "Finding"), ConceptCodeSequence=[_code("ZQXPID0001", "L", "x")]),
        # a public code whose meaning was rewritten to carry a name: the dictionary's meaning comes back
        _content(
            "CODE", _code("121071", "DCM", "Finding"), ConceptCodeSequence=[_code("69536005", "SCT", "zqxgiven head")]
        ),
        # a public code with its dictionary meaning: kept as it is
        _content("CODE", _code("121071", "DCM", "Finding"), ConceptCodeSequence=[_code("T-D1100", "SRT", "Head")]),
    ]
    # a local code outside the Content Sequence (kept attribute): free text, cleaned when it names the patient
    ds.AnatomicRegionSequence = [_code("A1", "99LOCAL", "scan of ZQXPATIENT")]
    src = H.write(ds, tmp_path / "in" / "sr.dcm")
    dst = tmp_path / "out" / "sr.dcm"
    outcome = StudyAnonymiser(H.KEY).anonymise_file(src, dst)
    assert not outcome.withheld
    assert H.MARKER not in dst.read_bytes().lower()
    codes = _codes(dcmread(dst))
    assert ("121071", "DCM", "Finding") in codes and ("T-D1100", "SRT", "Head") in codes
    assert ("69536005", "SCT", "Head") in codes  # the meaning the dictionary gives SCT 69536005
    # inside the Content Sequence the local codes became the dummy; outside it only the value naming the patient
    assert {scheme for _v, scheme, _m in codes} == {"DCM", "SCT", "SRT", "ANONYMOUS", "99LOCAL"}
    assert ("A1", "99LOCAL", "ANONYMOUS") in codes
