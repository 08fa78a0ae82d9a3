"""The pure mapper: a published study's facts → a validated FHIR ImagingStudy (R5 or R4B), as JSON.

What it says: the anonymised study (its new Study/Series/SOP Instance UIDs, modalities, counts), the study
date the MIS gave, the accession number as the MIS knows it (``identifier``), the MIS's patient as a logical
reference (``subject.identifier``, no Patient resource), and an Endpoint (contained) to the patient's link.
No name, birth date or anything else from the images."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

DCM = "http://dicom.nema.org/resources/ontology/DCM"
URI = "urn:ietf:rfc:3986"
CONNECTION = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
PAYLOAD = "http://terminology.hl7.org/CodeSystem/endpoint-payload-type"
ACCESSION_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
Version = Literal["R4", "R5"]


@dataclass(frozen=True)
class StudyFacts:
    task_id: str
    status: str  # the publication's status (only a published study is mapped)
    link: str
    study_uid: str | None
    series: list[dict[str, Any]] = field(default_factory=list)  # the archive's manifest
    accession_number: str | None = None
    patient_id: str | None = None
    study_date: datetime | None = None
    service_title: str | None = None
    patient_system: str = "urn:studypub:mis:patient"
    accession_system: str = "urn:studypub:mis:accession"


def _modality(code: str, version: Version) -> dict[str, Any]:
    coding = {"system": DCM, "code": code}
    return {"coding": [coding]} if version == "R5" else coding


def _endpoint(facts: StudyFacts, version: Version) -> dict[str, Any]:
    connection = {"system": CONNECTION, "code": "ihe-iid", "display": "IHE IID"}
    payload = {"coding": [{"system": PAYLOAD, "code": "none"}], "text": "Patient's link to the anonymised study"}
    common = {"resourceType": "Endpoint", "id": "patient-link", "status": "active", "address": facts.link}
    if version == "R5":
        return {**common, "connectionType": [{"coding": [connection]}], "payload": [{"type": [payload]}]}
    return {**common, "connectionType": connection, "payloadType": [payload]}


def imaging_study(facts: StudyFacts, version: Version) -> dict[str, Any]:
    """The ImagingStudy as a JSON-ready dict, validated by fhir.resources (raises pydantic's error if not)."""
    if version == "R5":
        from fhir.resources.imagingstudy import ImagingStudy
    else:
        from fhir.resources.R4B.imagingstudy import ImagingStudy  # type: ignore[assignment]

    series = []
    modalities: list[str] = []
    for s in facts.series:
        if s["modality"] not in modalities:
            modalities.append(s["modality"])
        entry: dict[str, Any] = {
            "uid": s["uid"],
            "modality": _modality(s["modality"], version),
            "numberOfInstances": len(s["instances"]),
            "instance": [
                {
                    "uid": i["uid"],
                    "sopClass": {"system": URI, "code": f"urn:oid:{i['sop_class']}"},
                    **({"number": i["number"]} if i["number"] is not None and i["number"] >= 0 else {}),
                }
                for i in s["instances"]
            ],
        }
        if s.get("number") is not None and s["number"] >= 0:
            entry["number"] = s["number"]
        series.append(entry)
    identifiers: list[dict[str, Any]] = []
    if facts.study_uid:
        identifiers.append({"system": "urn:dicom:uid", "value": f"urn:oid:{facts.study_uid}"})
    if facts.accession_number:
        identifiers.append({"type": ACCESSION_TYPE, "system": facts.accession_system, "value": facts.accession_number})
    subject: dict[str, Any] = {"type": "Patient"}
    if facts.patient_id:
        subject["identifier"] = {"system": facts.patient_system, "value": facts.patient_id}
    else:
        subject["display"] = "erased"
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": facts.task_id,
        "contained": [_endpoint(facts, version)],
        "identifier": identifiers,
        "status": "available",
        "modality": [_modality(m, version) for m in modalities],
        "subject": subject,
        "endpoint": [{"reference": "#patient-link"}],
        "numberOfSeries": len(series),
        "numberOfInstances": sum(len(s["instances"]) for s in facts.series),
        "series": series,
    }
    if facts.study_date is not None:
        resource["started"] = facts.study_date.isoformat()
    if facts.service_title:
        resource["description"] = facts.service_title
    model = ImagingStudy.model_validate(resource)
    return dict(model.model_dump(mode="json", exclude_none=True))
