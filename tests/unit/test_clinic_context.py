"""A clinic's context is resolved once and is that clinic's: the steps of a publication get its clinic's PACS
and settings (not the default clinic's), the Storage SCP files an instance only into publications of the
storing PACS's clinic, and ``studypub clinic add/list/update`` manage the clinics."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import seed_publication


def _cli(*argv: str) -> tuple[int, dict[str, Any]]:
    from deployments.cli import build_parser

    out = io.StringIO()
    args = build_parser().parse_args(list(argv))
    from deployments.cli import COMMANDS

    code = COMMANDS[args.command](args, out)
    return code, json.loads(out.getvalue())


def test_clinic_commands_and_each_steps_context(db_url: str) -> None:
    code, added = _cli(
        "clinic", "add", " Branch-2 ", "--name", "en=Branch two", "--name", "ru=Филиал 2", "--phone", "+7 495 000",
        "--time-zone", "Asia/Yekaterinburg", "--languages", "en,ru",
        "--set", "pacs.host=10.0.0.7", "--set", "pacs.port=104", "--set", "pacs.called_ae=PACS2",
        "--set", "pacs.store_from_aes=PACS2,PACS2B", "--set", "links.default_retention_days=9",
    )  # fmt: skip
    assert code == 0 and added["clinic"]["code"] == "branch-2"
    assert added["clinic"]["settings"]["pacs.store_from_aes"] == ["PACS2", "PACS2B"]
    assert _cli("clinic", "add", "BRANCH-2")[0] == 1  # one spelling per clinic
    bad = _cli("clinic", "update", "branch-2", "--set", "pacs.port=0")
    assert bad[0] == 1 and "pacs.port" in bad[1]["reason"]
    assert _cli("clinic", "update", "branch-2", "--set", "pacs.port=11112")[0] == 0
    listed = {c["code"]: c for c in _cli("clinic", "list")[1]["clinics"]}
    assert {"default", "f_khimki", "f_other", "branch-2"} <= set(listed)
    assert listed["branch-2"]["settings"]["pacs.host"] == "10.0.0.7"  # an update keeps what it does not name

    from tasks.common import step_context

    theirs = seed_publication(status="QUEUED", clinic_code="Branch-2")
    ours = seed_publication(status="QUEUED", clinic_code="f_Khimki")
    with step_context(theirs.task_id) as ctx:
        pacs = ctx.settings.pacs
        assert (pacs.host, pacs.port, pacs.called_ae, pacs.store_from_aes) == (
            "10.0.0.7",
            11112,
            "PACS2",
            ["PACS2", "PACS2B"],
        )
        assert ctx.settings.links.time_zone == "Asia/Yekaterinburg" and ctx.settings.links.default_language == "en"
        assert ctx.clinic is not None and ctx.clinic.name("ru") == "Филиал 2" and ctx.clinic.phone == "+7 495 000"
    with step_context(ours.task_id) as ctx:
        assert (ctx.settings.pacs.host, ctx.settings.pacs.port) == ("127.0.0.1", 4242)  # the environment's

    from studypub.dicom.receiver import storing_aes
    from studypub.settings import get_settings

    assert {"ORTHANC", "PACS2", "PACS2B"} <= set(storing_aes(get_settings()))


def test_an_instance_is_filed_only_for_publications_of_its_pacs_clinic(tmp_path: Path) -> None:
    from studypub.dicom.receiver import Registry

    registry = Registry(tmp_path / "receiving", b"secret")
    registry.register("1.2.3", tmp_path / "a", "task-a", ["PACS_A"])
    registry.register("1.2.3", tmp_path / "b", "task-b", ["PACS_B"])
    assert registry.lookup("1.2.3", "PACS_A") == [tmp_path / "a"]
    assert registry.lookup("1.2.3", "PACS_B") == [tmp_path / "b"]
    assert registry.lookup("1.2.3", "ELSEWHERE") == []


@pytest.mark.parametrize("code", ["", " ", "x" * 65, "a\x01b"])
def test_bad_clinic_codes_are_refused(db_url: str, code: str) -> None:
    assert _cli("clinic", "add", code)[0] == 1


def test_mis_keys_for_one_clinic_a_list_or_every_clinic(db_url: str) -> None:
    from studypub.apikeys import authenticate
    from studypub.db import get_sessionmaker

    listed = _cli("create-api-key", "--name", "two-branches", "--clinic", "F_Khimki, f_other")
    assert listed[0] == 0 and listed[1]["clinic_codes"] == ["f_khimki", "f_other"]
    every = _cli("create-api-key", "--name", "every-branch")
    assert every[0] == 0 and every[1]["clinic_codes"] is None
    assert _cli("create-api-key", "--name", "nowhere", "--clinic", "nowhere")[0] == 1  # unknown clinic
    with get_sessionmaker()() as session:
        two = authenticate(session, listed[1]["api_key"])
        anyone = authenticate(session, every[1]["api_key"])
    assert two is not None and two.allows("f_other") and not two.allows("default")
    assert anyone is not None and anyone.allows("default")
