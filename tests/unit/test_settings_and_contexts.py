from __future__ import annotations

import pytest
from pydantic import ValidationError
from pynetdicom import AllStoragePresentationContexts

from studypub.dicom.contexts import MAX_CONTEXTS, TRANSFER_SYNTAXES, get_contexts
from studypub.settings import Settings


def test_nested_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYPUB_PACS__HOST", "pacs.clinic.local")
    monkeypatch.setenv("STUDYPUB_PACS__RETRIEVE_METHOD", "get")
    monkeypatch.setenv("STUDYPUB_STORAGE__URL", "s3://bucket/prefix")
    monkeypatch.setenv("STUDYPUB_LINKS__DEFAULT_RETENTION_DAYS", "14")
    s = Settings()
    assert (s.pacs.host, s.pacs.retrieve_method, s.pacs.calling_ae, s.pacs.scp_port) == (
        "pacs.clinic.local",
        "get",
        "STUDYPUB",
        11113,
    )
    assert s.storage_url_resolved == "s3://bucket/prefix" and s.links.default_retention_days == 14


def test_production_refuses_missing_and_placeholder_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYPUB_ENV", "production")
    monkeypatch.delenv("STUDYPUB_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="required in production"):
        Settings()
    monkeypatch.setenv("STUDYPUB_SECRET_KEY", "changeme")
    with pytest.raises(ValidationError, match="placeholder"):
        Settings()
    monkeypatch.setenv("STUDYPUB_SECRET_KEY", "x" * 40)
    monkeypatch.setenv("STUDYPUB_STORAGE__SECRET_ACCESS_KEY", "minioadmin")
    with pytest.raises(ValidationError, match="placeholder"):
        Settings()


def test_development_generates_and_keeps_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STUDYPUB_SECRET_KEY")
    s = Settings()
    assert s.secret_bytes() == s.secret_bytes() and len(s.secret_bytes()) == 64


def test_link_keys_are_at_least_128_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYPUB_LINKS__KEY_BYTES", "8")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize("n_classes", [1, 3, 9, 20, 60, 127])
def test_get_contexts_stay_within_the_cap(n_classes: int) -> None:
    classes = [cx.abstract_syntax for cx in AllStoragePresentationContexts[:n_classes]]
    contexts, roles = get_contexts(classes)
    assert len(contexts) <= MAX_CONTEXTS
    assert {c.abstract_syntax for c in contexts[1:]} == set(classes)
    assert len(roles) == n_classes
    if n_classes == 1:
        assert len(contexts) == 1 + len(TRANSFER_SYNTAXES)  # every syntax offered on its own


def test_get_contexts_refuses_beyond_the_cap() -> None:
    classes = [f"1.2.3.{i}" for i in range(MAX_CONTEXTS)]
    with pytest.raises(ValueError, match="cap"):
        get_contexts(classes)


def test_receiver_reads_the_study_of_every_transfer_syntax(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The Storage SCP routes by StudyInstanceUID, read from the instance as sent (deflated included)."""
    from pydicom import dcmread

    from studypub.demo.studies import SeriesSpec, StudySpec, generate_study
    from studypub.dicom.receiver import study_uid_of

    for ts in ("implicit", "explicit", "deflated", "rle"):
        study = generate_study(
            tmp_path / ts,
            StudySpec(patient_id="P", accession_number="A", series=[SeriesSpec(rows=16, cols=16, transfer_syntax=ts)]),
        )
        path = study.paths[0]
        assert study_uid_of(path.read_bytes()) == study.study_instance_uid == dcmread(path).StudyInstanceUID
