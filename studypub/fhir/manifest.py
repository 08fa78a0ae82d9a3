"""What the archive holds, series by series, with the anonymised study's new UIDs: recorded by the zip step so
that the FHIR ImagingStudy can list series and instances without opening the archive again."""

from __future__ import annotations

from typing import Any


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class Manifest:
    def __init__(self) -> None:
        self.study_uid: str | None = None
        self.series: dict[str, dict[str, Any]] = {}

    def add(self, ds: Any) -> None:
        self.study_uid = self.study_uid or str(ds.get("StudyInstanceUID") or "") or None
        uid = str(ds.get("SeriesInstanceUID") or "")
        series = self.series.setdefault(
            uid,
            {
                "uid": uid,
                "number": _int(ds.get("SeriesNumber")),
                "modality": str(ds.get("Modality") or "OT"),
                "instances": [],
            },
        )
        series["instances"].append(
            {
                "uid": str(ds.SOPInstanceUID),
                "sop_class": str(ds.get("SOPClassUID") or ""),
                "number": _int(ds.get("InstanceNumber")),
            }
        )

    def as_dict(self) -> dict[str, Any]:
        ordered = sorted(self.series.values(), key=lambda s: (s["number"] is None, s["number"] or 0, s["uid"]))
        for series in ordered:
            series["instances"].sort(key=lambda i: (i["number"] is None, i["number"] or 0, i["uid"]))
        return {"study_uid": self.study_uid, "series": ordered}
