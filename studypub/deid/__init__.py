"""DICOM de-identification: PS3.15 Table E.1-1 (2026c) as data, and an engine that verifies its output.

Public API::

    from studypub.deid import DeidOptions, StudyAnonymiser, Profile, verify_file
    anonymiser = StudyAnonymiser(uid_key, DeidOptions())       # one per study; picklable
    outcome = anonymiser.anonymise_file(src, dst)               # InstanceOutcome (no PHI)
    Profile.load().describe()                                   # what the engine does, row by row
"""

from typing import TYPE_CHECKING, Any

from studypub.deid.errors import BurnedInPolicyError, DeidError, DeidVerificationError, UnreadableDicomError
from studypub.deid.profile import EDITION, PROFILE_VERSION, DeidOptions, Profile

if TYPE_CHECKING:
    from studypub.deid.engine import (
        IMPLEMENTATION_CLASS_UID,
        IMPLEMENTATION_VERSION_NAME,
        InstanceOutcome,
        StudyAnonymiser,
        VerificationContext,
        burned_in_reason,
        is_well_known_uid,
        pixel_data_reason,
        verify_file,
    )

_ENGINE_NAMES = {
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "InstanceOutcome",
    "StudyAnonymiser",
    "VerificationContext",
    "burned_in_reason",
    "is_well_known_uid",
    "pixel_data_reason",
    "verify_file",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that ``python -m studypub.deid.engine`` does not import the engine twice.
    if name in _ENGINE_NAMES:
        from studypub.deid import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EDITION",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "PROFILE_VERSION",
    "BurnedInPolicyError",
    "DeidError",
    "DeidOptions",
    "DeidVerificationError",
    "InstanceOutcome",
    "Profile",
    "StudyAnonymiser",
    "UnreadableDicomError",
    "VerificationContext",
    "burned_in_reason",
    "is_well_known_uid",
    "pixel_data_reason",
    "verify_file",
]
