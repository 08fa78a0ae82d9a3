"""Presentation contexts: the transfer syntaxes we accept without decompressing, and the storage contexts a
C-GET proposes (only the SOP classes of the study, within the 128-context cap).

The Storage SCP accepts every storage SOP class there is: pynetdicom's list and every other "Storage" SOP
class in pydicom's UID dictionary (retired ones such as the old Ultrasound Image Storage 1.2.840.10008.5.1.4.1.1.6
and trial ones included), in every transfer syntax pydicom knows, so a PACS can send whatever it holds.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.uid import (
    JPEG2000,
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    UID_dictionary,
)
from pydicom.uid import (
    JPEGLossless as JPEGLosslessP14,
)
from pynetdicom import AllStoragePresentationContexts, build_context, build_role
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet, register_uid, uid_to_service_class

MAX_CONTEXTS = 128

# Order matters for C-GET proposals: the first syntaxes are proposed for every SOP class when the cap bites.
TRANSFER_SYNTAXES: list[UID] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGBaseline8Bit,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    JPEG2000,
    JPEGLosslessP14,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    DeflatedExplicitVRLittleEndian,
    HTJ2KLossless,
    ExplicitVRBigEndian,
]


# As an acceptor, pynetdicom takes the first of *our* syntaxes that the sender offers. Lossless compressed
# first, so an instance stored that way arrives as stored (a sender that cannot transcode, like dcmtk's
# dcmqrscp, is never asked to); then uncompressed; lossy last, so a PACS able to transcode is never asked
# to lossy-compress an image it keeps losslessly (one stored lossy still arrives as stored when the PACS
# offers only that).
SCP_TRANSFER_SYNTAXES: list[UID] = [
    JPEGLosslessSV1,
    JPEGLosslessP14,
    JPEGLSLossless,
    JPEG2000Lossless,
    HTJ2KLossless,
    RLELossless,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
]


# Every other transfer syntax pydicom knows (video, HTJ2K, JPEG XL, deflated image frames...), accepted last:
# such an instance is received as sent; the anonymiser withholds it with a reason if it cannot be checked.
SCP_TRANSFER_SYNTAXES += [UID(ts) for ts in sorted(AllTransferSyntaxes) if UID(ts) not in SCP_TRANSFER_SYNTAXES]

_NOT_STORAGE = frozenset(
    {
        "1.2.840.10008.1.3.10",  # Media Storage Directory Storage (a DICOMDIR is never sent)
        "1.2.840.10008.1.20.1",  # Storage Commitment Push Model
        "1.2.840.10008.1.20.2",  # Storage Commitment Pull Model
    }
)


def storage_sop_classes() -> list[str]:
    """Every storage SOP class: pynetdicom's, then pydicom's other "... Storage" SOP classes (retired too),
    registered with pynetdicom's Storage service class so its SCP hands their C-STOREs to our handler."""
    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    known = set(classes)
    for uid, (name, kind, _info, _retired, keyword) in sorted(UID_dictionary.items()):
        if kind == "SOP Class" and "Storage" in name and uid not in known and uid not in _NOT_STORAGE:
            if uid_to_service_class(uid) is not StorageServiceClass:
                register_uid(uid, keyword or f"StorageClass_{uid.replace('.', '_')}", StorageServiceClass)
            classes.append(uid)
            known.add(uid)
    return classes


ACCEPTED_SOP_CLASSES = frozenset(storage_sop_classes())


def sop_class_name(uid: str) -> str:
    """A SOP class in words as DICOM names it ("Ultrasound Image Storage (Retired)"), or its UID."""
    entry = UID_dictionary.get(uid)
    if entry is None:
        return f"an unknown kind of object ({uid})"
    return entry[0] + (" (Retired)" if entry[3] == "Retired" and "Retired" not in entry[0] else "")


def storage_scp_contexts() -> list[PresentationContext]:
    """Every storage SOP class, with every syntax we keep as sent (for the Storage SCP)."""
    return [build_context(uid, SCP_TRANSFER_SYNTAXES) for uid in storage_sop_classes()]


def get_contexts(sop_classes: Iterable[str]) -> tuple[list[PresentationContext], list]:
    """Contexts and SCP/SCU role selections for a C-GET of a study with these SOP classes.

    One context per (SOP class, transfer syntax) so the PACS can send each instance as stored; when the
    study has many SOP classes, fewer syntaxes per class are proposed to stay within 128 contexts.
    """
    classes = sorted({str(c) for c in sop_classes if c})
    if not classes:
        raise ValueError("no SOP classes to retrieve")
    budget = MAX_CONTEXTS - 1  # one context for the Q/R GET model itself
    if len(classes) > budget:
        raise ValueError(f"{len(classes)} SOP classes exceed the {MAX_CONTEXTS}-context cap")
    per_class = max(1, min(len(TRANSFER_SYNTAXES), budget // len(classes)))
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
    roles = []
    for sop_class in classes:
        if per_class >= 3:
            for ts in TRANSFER_SYNTAXES[:per_class]:
                contexts.append(build_context(sop_class, [ts]))
        else:
            # Tight budget: one context with all syntaxes (the PACS picks one), plus the default.
            contexts.append(build_context(sop_class, TRANSFER_SYNTAXES))
            if per_class == 2:
                contexts.append(build_context(sop_class, [ImplicitVRLittleEndian]))
        roles.append(build_role(sop_class, scp_role=True))
    return contexts, roles
