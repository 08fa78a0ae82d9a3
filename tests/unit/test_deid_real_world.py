"""Real-world files other projects wrote (pydicom's bundled test files, from the installed wheel): every
storable instance is published or withheld with a reason a registrator can read, never refused, and no
identifying value of its source survives (the engine's own fail-closed verification runs on each)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files

from studypub.deid.engine import DeidOptions, StudyAnonymiser
from studypub.i18n.labels import WITHHELD

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


@cache
def storable_instances() -> list[Path]:
    """Part-10 files with a file meta, a SOP Class (not a DICOMDIR) and a SOP Instance UID."""
    out = []
    for name in sorted(get_testdata_files()):
        path = Path(name)
        if not path.is_file():
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        meta = getattr(ds, "file_meta", None)
        if not meta or "TransferSyntaxUID" not in meta or "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            continue
        if str(ds.SOPClassUID) == MEDIA_STORAGE_DIRECTORY:
            continue
        out.append(path)
    return out


def test_the_wheel_brings_enough_real_world_files() -> None:
    assert len(storable_instances()) >= 100


@pytest.mark.parametrize(
    "options", [DeidOptions(), DeidOptions(burned_in_policy="include")], ids=["withhold", "include"]
)
def test_every_real_world_instance_is_published_or_withheld_with_a_reason(tmp_path: Path, options: DeidOptions) -> None:
    anonymiser = StudyAnonymiser(bytes(range(32)), options)
    published = withheld = 0
    for i, src in enumerate(storable_instances()):
        dst = tmp_path / f"{i}.dcm"
        outcome = anonymiser.anonymise_file(src, dst)  # a DeidError here is a refusal: the test fails
        if outcome.withheld:
            assert outcome.withheld_reason in WITHHELD.names, (src.name, outcome.withheld_reason)
            assert not dst.exists()
            withheld += 1
        else:
            assert dst.exists()
            published += 1
    assert published > withheld > 0


def test_local_codes_of_a_real_structured_report_are_not_kept(tmp_path: Path) -> None:
    """pydicom's test-SR uses the local scheme 99_OFFIS_DCMTK in its content tree (and in the verifying
    observer's identification code): inside the Content Sequence those codes are free text, so dummy."""
    src = next(p for p in storable_instances() if p.name == "test-SR.dcm")
    StudyAnonymiser(bytes(range(32))).anonymise_file(src, tmp_path / "sr.dcm")
    out = dcmread(tmp_path / "sr.dcm")
    schemes: set[str] = set()

    def walk(ds: object) -> None:
        for elem in ds:  # type: ignore[attr-defined]
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
            elif elem.keyword == "CodingSchemeDesignator":
                schemes.add(str(elem.value))

    walk(out)
    assert "99_OFFIS_DCMTK" not in schemes and "TEST" not in schemes
    assert b"offis" not in (tmp_path / "sr.dcm").read_bytes().lower()
