"""Dates a doctor can use: removed (the default), shifted by one offset per publication that keeps the
intervals (PS3.15 Modified Dates, DCM 113107) or kept (Full Dates, DCM 113106); the birth date always goes;
the archive's note says which, in every language."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import get_args

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from studypub.deid.engine import DeidOptions, StudyAnonymiser, shift_date
from studypub.deid.profile import DATES_POLICIES, Profile
from studypub.i18n.labels import DATES_POLICIES as DATES_LABELS
from studypub.notes import archive_note
from studypub.overrides import OVERRIDABLE, apply_overrides
from studypub.settings import DeidSettings, Settings
from tasks.anonymise import DATE_SHIFT_MAX_DAYS, DATE_SHIFT_MIN_DAYS, date_shift_days, deid_options
from tests.unit import deid_hostile as H


def _dated(tmp_path: Path) -> Path:
    ds = H.base_dataset(H.ORIG_ROOT + "70")  # PatientBirthDate 19330303, StudyDate 19330304
    ds.SeriesDate, ds.ContentDate, ds.AcquisitionDate = "19330304", "19330310", "19330304"
    ds.AcquisitionDateTime = "19330304101010.5+0300"
    ds.ContentTime = "111213"
    content = Dataset()
    content.RelationshipType, content.ValueType, content.Date = "CONTAINS", "DATE", "19330401"
    ds.ContentSequence = [content]
    return H.write(ds, tmp_path / "in" / "dated.dcm")


def _anonymise(tmp_path: Path, options: DeidOptions) -> tuple[Dataset, bytes]:
    dst = tmp_path / "out" / f"{options.dates}.dcm"
    StudyAnonymiser(H.KEY, options).anonymise_file(_dated(tmp_path), dst)
    return dcmread(dst), dst.read_bytes()


def _codes(out: Dataset) -> list[str]:
    return [item.CodeValue for item in out.DeidentificationMethodCodeSequence]


def test_remove_is_the_default(tmp_path: Path) -> None:
    assert DeidSettings().dates == "remove" and DeidOptions().dates == "remove"
    out, data = _anonymise(tmp_path, DeidOptions())
    assert out.StudyDate == out.ContentDate == ""  # as the table says (Z; Z/D, Type 2 in CT)
    assert out.ContentSequence[0].Date == "19000101"  # D
    assert out.LongitudinalTemporalInformationModified == "REMOVED" and _codes(out) == ["113100"]
    assert b"1933" not in data


def test_shift_moves_every_date_by_one_offset_and_keeps_intervals(tmp_path: Path) -> None:
    days = -1000
    out, data = _anonymise(tmp_path, DeidOptions(dates="shift", date_shift_days=days))

    def moved(value: str) -> str:
        return (dt.date(int(value[:4]), int(value[4:6]), int(value[6:8])) + dt.timedelta(days=days)).strftime("%Y%m%d")

    assert out.StudyDate == out.SeriesDate == out.AcquisitionDate == moved("19330304")
    assert out.ContentDate == moved("19330310")  # six days later, as in the source
    assert out.AcquisitionDateTime == moved("19330304") + "101010.5+0300"  # the date part only
    assert out.ContentSequence[0].Date == moved("19330401")  # dates inside content items too
    assert out.ContentTime == "111213"  # times kept
    assert out.PatientBirthDate == ""  # never kept or shifted
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert _codes(out) == ["113100", "113107"]
    assert b"1933" not in data and H.MARKER not in data.lower()


def test_keep_keeps_dates_but_not_the_birth_date(tmp_path: Path) -> None:
    out, data = _anonymise(tmp_path, DeidOptions(dates="keep"))
    assert (out.StudyDate, out.ContentDate, out.ContentSequence[0].Date) == ("19330304", "19330310", "19330401")
    assert out.PatientBirthDate == "" and b"19330303" not in data
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert _codes(out) == ["113100", "113106"]


def test_shift_date_values() -> None:
    assert shift_date("20000301", -1, "DA") == "20000229"
    assert shift_date("20000301120000.1", 1, "DT") == "20000302120000.1"
    assert shift_date("2000", 5, "DT") is None and shift_date("2000.03.01", 5, "DA") is None
    assert shift_date("20001341", 1, "DA") is None
    with pytest.raises(ValueError):
        DeidOptions(dates="shift")  # an offset of zero would keep the dates


def test_the_offset_is_per_publication_stable_and_needs_the_secret() -> None:
    settings = Settings(secret_key="a" * 40)
    other = Settings(secret_key="b" * 40)
    offsets = {date_shift_days(settings, f"salt{i}") for i in range(50)}
    assert len(offsets) > 40  # one per publication
    assert all(-DATE_SHIFT_MAX_DAYS <= d <= -DATE_SHIFT_MIN_DAYS for d in offsets)
    assert date_shift_days(settings, "salt1") == date_shift_days(settings, "salt1")  # every re-run
    assert date_shift_days(settings, "salt1") != date_shift_days(other, "salt1")  # not without the secret
    shifted = apply_overrides(settings, {"deid.dates": "shift"})
    assert deid_options(shifted, "salt1").date_shift_days == date_shift_days(settings, "salt1")
    assert deid_options(settings, "salt1").date_shift_days == 0


def test_the_setting_is_overridable_with_named_choices_and_described() -> None:
    assert "deid.dates" in OVERRIDABLE
    choices = set(get_args(DeidSettings.model_fields["dates"].annotation))
    assert choices == set(DATES_POLICIES) == set(DATES_LABELS.names)
    rows = {row["tag"]: row for row in Profile.load().describe(DeidOptions(dates="shift", date_shift_days=-9))}
    assert rows["dates"]["applied_action"] == "shift" and "113107" in rows["(0012,0064)"]["why"]


@pytest.mark.parametrize("dates", DATES_POLICIES)
def test_the_archive_note_states_the_dates_choice_in_every_language(dates: str) -> None:
    note = archive_note(instances=3, series=1, withheld=0, withheld_reasons={}, first_locale="en", dates=dates)
    english = {
        "remove": "Dates were removed from the images",
        "shift": "moved by the same number of days",
        "keep": "Dates in the images are the original ones.",
    }
    assert english[dates] in note
    russian = {"remove": "Даты удалены", "shift": "сдвинуты на одно и то же число дней", "keep": "исходные"}
    assert russian[dates] in note
    assert note.count("== ") == 5
