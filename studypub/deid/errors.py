"""Errors of the de-identification engine.

Under the app's root error. Each carries a short ``reason`` and a machine ``code``; neither ever contains a
value read from a DICOM file (no PHI), only tags, keywords and reason codes.
"""

from __future__ import annotations

from studypub.errors import StudyPubError


class DeidError(StudyPubError):
    """Root of the de-identification errors: final (retrying the same file gives the same verdict)."""

    http_status = 422
    code = "deid_error"
    retryable = False


class UnreadableDicomError(DeidError):
    """The source is not a DICOM Part-10 file the engine can read (or lacks SOP Class/Instance UIDs)."""

    code = "unreadable_dicom"


class BurnedInPolicyError(DeidError):
    """The instance may show identity in its pixels/document and the policy is ``fail``."""

    code = "burned_in_identity"


class DeidVerificationError(DeidError):
    """The written output still holds something the profile does not keep. Fail closed: no output is left."""

    code = "deid_verification_failed"
