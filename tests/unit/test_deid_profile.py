"""The profile data (Table E.1-1, 2026c) and what the engine says it does with it."""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys

import pytest

from studypub.deid.profile import (
    CSV_PATH,
    DEVICE_IDENTITY_KEEP,
    EDITION,
    PATIENT_CHARACTERISTICS_KEEP,
    PROFILE_VERSION,
    RESOLUTION,
    DeidOptions,
    Profile,
)
from tests.unit.deid_hostile import csv_rows

TABLE_ACTIONS = {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}


def test_csv_holds_the_whole_2026c_table() -> None:
    rows = csv_rows()
    assert len(rows) == 655
    assert {r["action"] for r in rows} <= TABLE_ACTIONS
    assert len({(r["group"], r["element"]) for r in rows}) == len(rows)
    by_tag = {(r["group"], r["element"]): r for r in rows}
    assert by_tag[("0010", "0010")]["action"] == "Z"  # Patient's Name
    assert by_tag[("0010", "0020")]["action"] == "Z/D"  # Patient ID
    assert by_tag[("0008", "0018")]["action"] == "U"  # SOP Instance UID
    assert by_tag[("0008", "0080")]["action"] == "X/Z/D"  # Institution Name
    assert by_tag[("0008", "1140")]["action"] == "X/Z/U*"  # Referenced Image Sequence
    assert by_tag[("50xx", "xxxx")]["action"] == "X"  # curves: a wildcard group
    assert by_tag[("60xx", "3000")]["action"] == "X"  # overlay data
    assert by_tag[("60xx", "4000")]["action"] == "X"  # overlay comments
    assert by_tag[("0008", "0012")]["keyword"] == "InstanceCreationDate"  # newer than Orthanc's 2021b table


def test_edition_and_version() -> None:
    profile = Profile.load()
    assert EDITION == "2026c" and "2026c" in CSV_PATH.name
    assert profile.version == PROFILE_VERSION == "PS3.15-2026c/E.1-1+studypub.1"
    assert Profile.load() is profile  # cached, immutable
    assert pickle.loads(pickle.dumps(profile)).exact == profile.exact


def test_masked_rows_match_groups() -> None:
    profile = Profile.load()
    assert profile.table_action(0x50020030) == "X"
    assert profile.table_action(0x60023000) == "X"
    assert profile.table_action(0x601E4000) == "X"
    assert profile.table_action(0x60000010) is None  # not in the table; the engine removes 60xx anyway
    assert profile.decide(0x60000010, DeidOptions()).kind == "remove"


@pytest.mark.parametrize(
    ("code", "applied"),
    [("X/Z", "Z"), ("X/D", "D"), ("X/Z/D", "Z"), ("Z/D", "D"), ("X/Z/U*", "U"), ("C", "D"), ("K", "K")],
)
def test_combined_actions_resolve_to_a_single_action(code: str, applied: str) -> None:
    assert RESOLUTION[code][0] == applied


def test_describe_covers_every_csv_row_and_the_rules_beyond() -> None:
    rows = Profile.load().describe()
    table = [r for r in rows if r["source"] == "table"]
    assert [(r["tag"], r["table_action"]) for r in table] == [
        (f"({r['group']},{r['element']})", r["action"]) for r in csv_rows()
    ]
    assert all(r["applied_action"] in {"X", "Z", "D", "U", "K"} and r["why"] for r in table)
    rules = " ".join(r["name"] + " " + r["why"] for r in rows if r["source"] == "rule")
    for needle in ("Private", "Overlay", "Curve", "unknown", "File Meta", "UID", "burned", "fails closed"):
        assert needle.lower() in rules.lower()
    by_tag = {r["tag"]: r for r in table}
    assert by_tag["(0010,0010)"]["applied_action"] == "Z"
    assert by_tag["(0008,0080)"]["applied_action"] == "Z"  # X/Z/D -> Z
    assert by_tag["(0008,0012)"]["applied_action"] == "D"  # X/D -> D
    assert by_tag["(0040,A730)"]["applied_action"] == "D"  # Content Sequence: kept, items cleaned
    additions = {r["tag"]: r for r in rows if r["source"] == "studypub"}
    assert additions["(0042,0010)"]["applied_action"] == "Z" and "addition" in additions["(0042,0010)"]["why"]
    assert additions["(0040,A160)"]["applied_action"] == "D"


def test_options_keep_lists_are_table_rows_and_change_the_description() -> None:
    exact = Profile.load().exact
    assert exact.keys() >= PATIENT_CHARACTERISTICS_KEEP
    assert exact.keys() >= DEVICE_IDENTITY_KEEP
    on = {r["tag"]: r for r in Profile.load().describe(DeidOptions(retain_patient_characteristics=True))}
    assert on["(0010,1010)"]["applied_action"] == "K"  # Patient's Age
    assert on["(0018,1000)"]["applied_action"] == "Z"  # Device Serial Number: other option
    dev = {r["tag"]: r for r in Profile.load().describe(DeidOptions(retain_device_identity=True))}
    assert dev["(0018,1000)"]["applied_action"] == "K"
    assert dev["(0018,1002)"]["applied_action"] == "U"  # Device UID: UIDs are always replaced


def test_options_validate_policy() -> None:
    with pytest.raises(ValueError):
        DeidOptions(burned_in_policy="maybe")  # type: ignore[arg-type]


@pytest.mark.skipif(
    importlib.util.find_spec("dicomanonymizer") is None, reason="dicom-anonymizer (build-time) not installed"
)
def test_checked_in_csv_is_what_the_generator_writes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "studypub.deid.build_profile", "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_cli_describe_prints_every_row() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "studypub.deid.engine", "--describe"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(result.stdout.splitlines()) == len(Profile.load().describe())


def test_the_cli_describes_cleaning_coded_entries_dates_and_iod_types() -> None:
    """`studypub deid-profile` prints every rule, the ones beyond Table E.1-1 included."""
    import argparse
    import io
    import json

    from deployments.cli import cmd_deid_profile

    out = io.StringIO()
    assert cmd_deid_profile(argparse.Namespace(format="json"), out) == 0
    rules = {row["tag"]: row for row in json.loads(out.getvalue())["rules"]}
    assert "dummy" in rules["cleaning"]["why"] and "withheld" in rules["cleaning"]["why"]
    assert "local or unknown scheme" in rules["coded entries"]["why"] and "SCT" in rules["coded entries"]["why"]
    assert "shift" in rules["dates"]["why"] and "113107" in rules["dates"]["why"]
    assert "Type 1 -> D, Type 2 -> Z" in rules["(0018,1000)"]["why"]  # Device Serial Number, X/Z/D
