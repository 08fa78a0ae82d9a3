"""No hang, ever (issue 11): a step that fails ends the run promptly with its reason, whatever the other steps
are doing. Here anonymise fails at the first instance (the burned-in policy ``fail`` and flagged slices)
while the retrieval of a large study is still under way, three times in a row; each run ends within
seconds of the failure, FAILED at anonymise with its reason, long before the retrieval could have finished."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from pydicom import dcmread

from studypub.demo.orthanc import OrthancServer
from studypub.demo.studies import GeneratedStudy, SeriesSpec
from tests.integration.test_publish_e2e import base_env, orthanc_env, run_publish  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

SLICES = 400
ENDS_WITHIN_SECONDS = 10.0


def _log_times(stderr: str, needle: str) -> list[datetime]:
    times = []
    for line in stderr.splitlines():
        if needle in line:
            try:
                times.append(datetime.fromisoformat(json.loads(line)["timestamp"]))
            except (ValueError, KeyError):
                continue
    return times


def test_anonymise_failing_during_a_large_retrieve_ends_the_run_promptly(
    orthanc_env: dict[str, str],  # noqa: F811
    orthanc: OrthancServer,
    study_factory: Callable[..., GeneratedStudy],
) -> None:
    study = study_factory(
        series=[SeriesSpec(images=SLICES, rows=512, cols=512, transfer_syntax="explicit", description="Axial")],
    )
    for path in study.paths:  # every slice flagged: the first one anonymised fails the step
        ds = dcmread(path)
        ds.BurnedInAnnotation = "YES"
        ds.save_as(path, enforce_file_format=True)
    orthanc.upload(study.paths)
    storage = Path(orthanc_env["STUDYPUB_WORK_DIR"]).parent / "published"
    env = dict(
        orthanc_env,
        STUDYPUB_STORAGE__URL=storage.as_uri(),
        STUDYPUB_DEID__BURNED_IN_POLICY="fail",
        STUDYPUB_DEID__BURNED_IN_TEXT="off",
    )
    for attempt in range(3):
        started = time.monotonic()
        code, result, stderr = run_publish(env, study, timeout=300)
        elapsed = time.monotonic() - started
        assert code == 1 and result["status"] == "FAILED", (attempt, result)
        assert result["step"] == "anonymise" and "burned_in" in (result["reason"] or ""), (attempt, result)
        failed_at = _log_times(stderr, "Task run failed with exception: AnonymisationFailed")
        ended_at = _log_times(stderr, f"Study {study.accession_number} failed")
        assert failed_at and ended_at, (attempt, stderr[-3000:])
        gap = (ended_at[-1] - failed_at[0]).total_seconds()
        assert gap < ENDS_WITHIN_SECONDS, (attempt, gap, elapsed)
        raw = Path(orthanc_env["STUDYPUB_WORK_DIR"]) / "tasks" / result["task_id"] / "raw"
        assert not raw.exists() or not any(raw.iterdir())  # nothing identifiable left behind
