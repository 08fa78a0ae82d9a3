"""Coded entries (Code Sequence Macro items: concept names, codes of SR content items, anatomy, procedures).

A code from a public coding scheme names a concept, not a person; a code from a local or unknown scheme
(``99_OFFIS_DCMTK``, ``L``, a hospital's own) can carry anything, like free text. This module says which
schemes are public and what a public code's meaning is in the dictionary pydicom ships
(``pydicom.sr._concepts_dict``, with ``_snomed_dict`` for the legacy SNOMED designator SRT). The dictionary
is large (about 0.4 s to import): it is loaded only when a public code's meaning contains a removed value.
"""

from __future__ import annotations

import functools

# Designators of PS3.16 Table 8-1 (coding schemes the standard names) that occur in practice, plus every
# scheme of pydicom's concept dictionary. Compared exactly (designators are case-sensitive: "NCIt").
PUBLIC_SCHEMES: frozenset[str] = frozenset(
    {
        "ACR",
        "ASTM-sigpurpose",
        "BARI",
        "C4",
        "C5",
        "CD2",
        "DC",
        "DCM",
        "DCMUID",
        "FMA",
        "HPC",
        "I10",
        "I10P",
        "I9",
        "I9C",
        "IBSI",
        "ISO3166_1",
        "ISO639_1",
        "ISO639_2",
        "ITIS_TSN",
        "LN",
        "MDC",
        "MSH",
        "NCDR",
        "NCIt",
        "NDC",
        "NEU",
        "NICIP",
        "PUBCHEM_CID",
        "RADLEX",
        "RFC5646",
        "RXNORM",
        "SCT",
        "SNM3",
        "SRT",
        "UBERON",
        "UCUM",
        "UMLS",
        "UPC",
    }
)
CODE_VALUE = 0x00080100
CODING_SCHEME_DESIGNATOR = 0x00080102
CODE_MEANING = 0x00080104
LONG_CODE_VALUE = 0x00080119
URN_CODE_VALUE = 0x00080120


def is_public_scheme(designator: str) -> bool:
    return designator.strip() in PUBLIC_SCHEMES


@functools.cache
def _meanings() -> dict[tuple[str, str], tuple[str, ...]]:
    """(scheme, code value) -> its meanings (a code may have several, e.g. SCT 69536005 "Head" and "Head
    structure (body structure)"), the first the standard's, for every concept pydicom knows."""
    from pydicom.sr._concepts_dict import concepts
    from pydicom.sr._snomed_dict import mapping

    out: dict[tuple[str, str], tuple[str, ...]] = {}
    table: dict[str, dict[str, dict[str, tuple[str, list[int]]]]] = concepts  # type: ignore[assignment]
    for scheme, by_keyword in table.items():
        for codes in by_keyword.values():
            for value, (meaning, _cids) in codes.items():
                known = out.get((scheme, value), ())
                if meaning not in known:
                    out[(scheme, value)] = (*known, meaning)
    srt_to_sct: dict[str, str] = mapping.get("SRT", {})  # type: ignore[assignment]
    for srt, sct in srt_to_sct.items():  # legacy SNOMED RT ids of the same concepts
        meanings = out.get(("SCT", sct))
        if meanings is not None:
            out[("SRT", srt)] = meanings
    return out


def dictionary_meaning(scheme: str, value: str) -> str | None:
    """The meaning pydicom's dictionary gives a public code, or None when it does not know it."""
    if scheme not in PUBLIC_SCHEMES:
        return None
    meanings = _meanings().get((scheme, value))
    return meanings[0] if meanings else None


def matches_dictionary(scheme: str, value: str, meaning: str) -> bool:
    if scheme not in PUBLIC_SCHEMES:
        return False
    wanted = meaning.strip().casefold()
    return any(known.casefold() == wanted for known in _meanings().get((scheme, value), ()))
