"""Dashboard settings: validated like the environment's, saved per instance, applied over the defaults."""

from __future__ import annotations

import pytest

from studypub.db import get_sessionmaker
from studypub.errors import ValidationError
from studypub.overrides import apply_overrides, effective_settings, save_overrides
from studypub.settings import get_settings


def test_overrides_are_validated() -> None:
    settings = get_settings()
    assert apply_overrides(settings, {"links.default_retention_days": 10}).links.default_retention_days == 10
    with pytest.raises(ValidationError, match=r"pacs\.port"):
        apply_overrides(settings, {"pacs.port": 70000})
    with pytest.raises(ValidationError, match=r"deid\.burned_in_policy"):
        apply_overrides(settings, {"deid.burned_in_policy": "ignore"})
    with pytest.raises(ValidationError, match="max_retention_days"):
        apply_overrides(settings, {"links.max_retention_days": 1})
    assert apply_overrides(settings, {"storage.secret_access_key": "x"}) == settings  # not overridable


def test_saved_values_apply_and_empty_ones_return_to_the_default(db_url: str) -> None:
    settings = get_settings()
    with get_sessionmaker()() as session:
        save_overrides(session, settings, {"pacs.host": "pacs.clinic", "pacs.port": "104"}, actor="admin")
        effective = effective_settings(session, settings)
        assert (effective.pacs.host, effective.pacs.port) == ("pacs.clinic", 104)
        assert settings.pacs.host == "127.0.0.1"  # the environment's object is untouched
        save_overrides(session, settings, {"pacs.host": "", "pacs.port": "104"}, actor="admin")
        effective = effective_settings(session, settings)
        assert (effective.pacs.host, effective.pacs.port) == ("127.0.0.1", 104)
        with pytest.raises(ValidationError):
            save_overrides(session, settings, {"pacs.port": "abc"}, actor="admin")
        assert effective_settings(session, settings).pacs.port == 104  # nothing stored by the refusal


def test_burned_in_text_policy_is_overridable_and_reaches_the_anonymiser(db_url: str) -> None:
    """deid.burned_in_text (mask / withhold / off, issue 11): saved in the dashboard, applied to the step's
    DeidOptions, and stated in the archive's note."""
    from studypub.notes import archive_note
    from tasks.anonymise import deid_options

    settings = get_settings()
    assert settings.deid.burned_in_text == "mask" and deid_options(settings).burned_in_text == "mask"
    with pytest.raises(ValidationError, match=r"deid\.burned_in_text"):
        apply_overrides(settings, {"deid.burned_in_text": "blur"})
    with get_sessionmaker()() as session:
        save_overrides(session, settings, {"deid.burned_in_text": "withhold"}, actor="admin")
        effective = effective_settings(session, settings)
        assert deid_options(effective).burned_in_text == "withhold"
        save_overrides(session, settings, {"deid.burned_in_text": ""}, actor="admin")
    note = archive_note(
        instances=3, series=1, withheld=0, withheld_reasons={}, first_locale="en", burned_in_text="mask"
    )
    assert "has been blacked out" in note and "закрашен" in note
    off = archive_note(instances=3, series=1, withheld=0, withheld_reasons={}, first_locale="en", burned_in_text="off")
    assert "were not checked for text" in off
