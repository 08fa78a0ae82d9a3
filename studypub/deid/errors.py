"""Errors of the de-identification engine.

``DeidError`` is a plain ``Exception`` for now (the lead re-parents it under the app's root error). Like
the app's errors, each carries a short ``reason`` and a machine ``code``; neither ever contains a value read
from a DICOM file (no PHI), only tags, keywords and reason codes.
"""

from __future__ import annotations


class DeidError(Exception):
    """Root of the de-identification errors."""

    code = "deid_error"
    retryable = False

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


class UnreadableDicomError(DeidError):
    """The source is not a DICOM Part-10 file the engine can read (or lacks SOP Class/Instance UIDs)."""

    code = "unreadable_dicom"


class BurnedInPolicyError(DeidError):
    """The instance may show identity in its pixels/document and the policy is ``fail``."""

    code = "burned_in_identity"


class DeidVerificationError(DeidError):
    """The written output still holds something the profile does not keep. Fail closed: no output is left."""

    code = "deid_verification_failed"
