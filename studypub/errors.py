"""Typed errors under one root. Each carries a reason a registrator can read (never PHI) and says whether
retrying the step can help; the API maps them to HTTP responses in one place."""

from __future__ import annotations


class StudyPubError(Exception):
    """Root of the service's own errors."""

    http_status = 500
    retryable = False
    code = "internal_error"

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


class ConfigurationError(StudyPubError):
    """The settings cannot work (missing secret, bad URL...)."""

    code = "configuration_error"


class ValidationError(StudyPubError):
    """Bad input. ``field`` names the field at fault, when there is one (the API lists it in ``errors``)."""

    http_status = 422
    code = "invalid_request"

    def __init__(self, reason: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(reason, code=code)
        self.field = field


class NotFound(StudyPubError):
    http_status = 404
    code = "not_found"


class Unauthorized(StudyPubError):
    http_status = 401
    code = "unauthorized"


class Forbidden(StudyPubError):
    http_status = 403
    code = "forbidden"


class Conflict(StudyPubError):
    """The request cannot apply to the publication's current state (e.g. extending a deleted one)."""

    http_status = 409
    code = "conflict"


class Gone(StudyPubError):
    http_status = 410
    code = "gone"


class PublicationError(StudyPubError):
    """A publication step failed for a reason that retrying will not change."""

    http_status = 409
    code = "publication_failed"


class StudyNotFound(PublicationError):
    """The PACS has no study with the accession number (yet): retried a few times, then final."""

    code = "study_not_found"


class AmbiguousStudy(PublicationError):
    code = "ambiguous_study"


class PatientMismatch(PublicationError):
    code = "patient_mismatch"


class InsufficientDiskSpace(PublicationError):
    code = "insufficient_disk_space"


class IncompleteRetrieval(PublicationError):
    """Fewer instances arrived than the PACS announced; a PACS under load may do better next time."""

    code = "incomplete_retrieval"
    retryable = True


class AnonymisationFailed(PublicationError):
    code = "anonymisation_failed"


class Aborted(PublicationError):
    """A step stopped because another step of the same publication failed."""

    code = "aborted"


class TransientError(StudyPubError):
    """Network or storage trouble; retrying later may succeed."""

    retryable = True
    http_status = 503
    code = "unavailable"


class PacsUnavailable(TransientError):
    code = "pacs_unavailable"


class StorageUnavailable(TransientError):
    code = "storage_unavailable"


class DatabaseUnavailable(TransientError):
    code = "database_unavailable"


def is_retryable(exc: BaseException) -> bool:
    """Typed errors say themselves; unknown exceptions (OSError, network) are assumed transient."""
    if isinstance(exc, StudyPubError):
        return exc.retryable
    return not isinstance(exc, (TypeError, ValueError, KeyError, AttributeError, AssertionError))
