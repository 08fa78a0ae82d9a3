"""The patient's contact is checked (E.164 by phonenumbers, an address, a language); the second factor keeps
only a slow hash, counts wrong answers to a lock, and its cookie is bound to one link and one answer; messages
say the clinic, the link and the date in each language, and nothing about the study unless allowed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from studypub.contacts import birth_date_text, mask_phone, normalise_email, normalise_phone
from studypub.errors import ValidationError
from studypub.factor import normalise_answer, remember_token, token_valid
from studypub.i18n import LOCALES
from studypub.notify import compose
from studypub.settings import Settings


@pytest.mark.parametrize("raw", ["+7 916 123-45-67", "+79161234567", " +7 (916) 123 45 67 "])
def test_phone_numbers_are_kept_in_e164(raw: str) -> None:
    assert normalise_phone(raw) == "+79161234567"


@pytest.mark.parametrize("raw", ["89161234567", "+7916", "+1 555 0100", "+79161234567 ext", "tel: none"])
def test_bad_phone_numbers_are_refused_without_repeating_them(raw: str) -> None:
    with pytest.raises(ValidationError) as err:
        normalise_phone(raw)
    assert "patient_phone" in err.value.reason and raw.strip() not in err.value.reason


@pytest.mark.parametrize("raw", ["a@b", "no-at.example.org", "two@@example.org", "sp ace@example.org", "x@-a.org"])
def test_bad_addresses_are_refused(raw: str) -> None:
    with pytest.raises(ValidationError):
        normalise_email(raw)


def test_dates_and_masks() -> None:
    assert birth_date_text("19800421") == "1980-04-21" == birth_date_text("1980-04-21")
    assert birth_date_text("1980-02-30") is None
    assert normalise_answer("birth_date", "21.04.1980") == "1980-04-21"
    assert normalise_answer("pin", " 123 456 ") == "123456" and normalise_answer("pin", "12a") is None
    assert mask_phone("+79161234567") == "+7••••••••67"


def test_the_remember_cookie_is_bound_to_the_link_the_answer_and_time() -> None:
    secret = b"s" * 32
    token = remember_token(secret, "KEY-A", "hash-1", 30, now=1000.0)
    assert token_valid(secret, "KEY-A", "hash-1", token, now=1000.0 + 29 * 60)
    assert not token_valid(secret, "KEY-A", "hash-1", token, now=1000.0 + 31 * 60)  # expired
    assert not token_valid(secret, "KEY-B", "hash-1", token, now=1000.0)  # another link
    assert not token_valid(secret, "KEY-A", "hash-2", token, now=1000.0)  # a new PIN
    assert not token_valid(b"t" * 32, "KEY-A", "hash-1", token, now=1000.0)  # another service secret
    expires, mac = token.split(".")
    assert not token_valid(secret, "KEY-A", "hash-1", f"{int(expires) + 3600}.{mac}", now=1000.0)  # extended by hand


def _facts(locale: str, **kw: object) -> compose.Facts:
    return compose.Facts(
        clinic="Клиника Химки",
        link="https://studies.example/s/AbCdEfGhIjKlMnOpQrStUv",
        kept_until=datetime(2026, 3, 1, 12, tzinfo=UTC),
        locale=locale,
        service_title="МРТ суставов",
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("locale", LOCALES)
def test_messages_in_every_language_say_clinic_link_and_date_and_no_study_content(locale: str) -> None:
    settings = Settings()
    email = compose.email(settings, _facts(locale))
    sms = compose.sms_link(settings, _facts(locale))
    for text in (email.subject, email.text, email.html, sms):
        assert "Клиника Химки" in text
        assert "МРТ" not in text  # not allowed by default
    for text in (email.text, email.html, sms):
        assert "https://studies.example/s/AbCdEfGhIjKlMnOpQrStUv" in text
        assert "2026" in text
    if locale != "en":  # translated, not the English source
        assert "Hello," not in email.text and "your study" not in sms
    assert len(sms) <= 160 or locale == "ru"  # one SMS in Latin alphabets (Cyrillic is billed by 70 anyway)


def test_service_title_only_where_allowed() -> None:
    allowed = Settings(notify={"include_service_title": True})
    assert "МРТ суставов" in compose.email(allowed, _facts("ru")).text
    assert "МРТ" not in compose.sms_link(allowed, _facts("ru"))  # SMS has its own switch, off
    both = Settings(notify={"include_service_title": True, "sms_include_service_title": True})
    assert "МРТ суставов" in compose.sms_link(both, _facts("ru"))


def test_a_clinic_template_folder_replaces_a_built_in_template(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path)) / "tpl"
    folder.mkdir()
    (folder / "sms_link.txt").write_text("{{ clinic }}: {{ link }}")
    settings = Settings(notify={"template_dir": str(folder)})
    assert compose.sms_link(settings, _facts("ru")) == "Клиника Химки: https://studies.example/s/AbCdEfGhIjKlMnOpQrStUv"
    assert "Здравствуйте" in compose.email(settings, _facts("ru")).text  # the others stay built in


@pytest.mark.parametrize(
    ("enabled", "planned", "pin_handed_over"),
    [
        ({}, [("email", "link"), ("sms", "pin")], False),  # two channels: the PIN by the other one
        ({"sms_enabled": False}, [("email", "link")], True),  # one channel: the PIN to the MIS / registrator
        ({"email_enabled": False}, [("sms", "link")], True),
    ],
)
def test_the_pin_goes_by_sms_only_when_both_channels_can_be_used(
    enabled: dict[str, bool], planned: list[tuple[str, str]], pin_handed_over: bool
) -> None:
    """Both contacts given but SMS (or email) switched off for the clinic: the PIN is handed over, else it would
    never reach the patient (or would travel beside the link)."""
    from studypub.factor import pin_goes_by_sms
    from studypub.models import Task
    from studypub.notify.outbox import planned as planned_messages

    settings = Settings(notify=enabled)
    task = Task(patient_email="p@example.org", patient_phone="+79161234567", second_factor="pin")
    assert planned_messages(settings, task) == planned
    assert pin_goes_by_sms(settings, task) is not pin_handed_over
