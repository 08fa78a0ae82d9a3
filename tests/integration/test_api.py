"""The MIS API over real HTTP against ``studypub api``: auth, validation, idempotency, status, extension."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import make_api_key, seed_publication

BODY: dict[str, Any] = {
    "patient_id": "1000001158664",
    "accession_number": "KP125706548L",
    "emk_record_id": "123456",
    "clinic_code": "f_Khimki",
    "service_code": "A01.201.405.002",
    "service_title": "МРТ суставов",
    "study_date": "2025-02-01T16:18:02+03:00",
}


def test_smoke(db_url: str, api_server: Any) -> None:
    key = make_api_key()
    seeded = seed_publication()
    api = api_server(PREFECT_API_URL="http://127.0.0.1:9/api")
    with api.client(headers={"X-API-Key": key}) as c:
        r = c.post("/publish", json=BODY)
        assert r.status_code == 202, r.text
        r = c.get(f"/publish/{seeded.task_id}")
        assert r.status_code == 200 and r.json()["status"] == "COMPLETED"
