"""Chaos: the faults a small clinic's machine meets, on a whole real stack (its own Prefect server, PostgreSQL,
``studypub worker``, Orthanc as the PACS, the moto S3 server), with no operator: every publication completes
by itself, with the link it was given, one object in the bucket, no object nobody references, no pending
multipart upload and no raw (identifiable) instance left on disk.

- the worker's whole process group SIGKILLed (OOM, ``docker kill``) during retrieve, anonymise/zip and upload,
  started again 1 s later: the publication completes within 2 minutes of the worker being back;
- the Prefect server restarted while two retrievals hold the PACS's slots: they and two new publications
  complete (no retrieval slot leaks);
- the PACS stopped for 15 s during a retrieve, S3 unreachable for 15 s during an upload: the publication says
  what it waits for (``waiting_for``) meanwhile, never fails, and completes when it is back.

The publications are recorded as the MIS's requests are (``request_publication(..., dispatch=True)``); the
worker alone starts them. One stack for the module (lease 15 s, watchdog 2 s); the timeline of each
publication (status/step/waiting_for/reason, the harness's actions) is in failure messages and in
tests/artifacts/chaos-timeline.log, the worker's and Prefect server's logs beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from studypub.demo.orthanc import OrthancServer
from studypub.demo.studies import GeneratedStudy, SeriesSpec
from tests.support.chaos import (
    MOMENTS,
    ChaosStack,
    StackConfig,
    create_pg_database,
    drop_pg_database,
    raw_files,
)

pytestmark = pytest.mark.slow

STUDY_IMAGES = 120  # 256x256 16-bit: ~15 MiB raw, a ~7 MiB archive (two parts of a multipart upload)
HEAL_SECONDS = 120  # the proof: completed within 2 minutes of the worker (or the fault's cause) being back
REACH_SECONDS = 90  # from the request to the moment of the fault (dispatch, run start, the steps before)
OUTAGE_SECONDS = 15


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, orthanc: OrthancServer, s3_server: Any, studypub_scp_port: int
) -> Iterator[ChaosStack]:
    if not s3_server.running():
        s3_server.start()
    db_url = create_pg_database()
    chaos = ChaosStack(
        tmp_path_factory.mktemp("chaos"),
        orthanc=orthanc,
        s3_server=s3_server,
        scp_port=studypub_scp_port,
        db_url=db_url,
        name="chaos",
        config=StackConfig(lease_seconds=15, watchdog_seconds=2, dispatch_interval=1),
    )
    try:
        chaos.start()
        yield chaos
    finally:
        chaos.stop()
        drop_pg_database(db_url)


@pytest.fixture
def chaos(stack: ChaosStack) -> ChaosStack:
    """The module's stack, everything up and at full speed."""
    stack.healthy()
    return stack


@pytest.fixture
def big_study(study_factory: Callable[..., GeneratedStudy], orthanc: OrthancServer) -> Callable[[], GeneratedStudy]:
    """A study in the PACS big enough to act in the middle of any step."""

    def make() -> GeneratedStudy:
        study = study_factory(series=[SeriesSpec(images=STUDY_IMAGES, rows=256, cols=256, description="Axial")])
        orthanc.upload(study.paths)
        return study

    return make


@pytest.fixture
def small_study(study_factory: Callable[..., GeneratedStudy], orthanc: OrthancServer) -> Callable[[], GeneratedStudy]:
    def make() -> GeneratedStudy:
        study = study_factory()
        orthanc.upload(study.paths)
        return study

    return make


class Baseline:
    """What the bucket held before the test (earlier tests of the module share it): the checks look at what
    this test's publications added."""

    def __init__(self, chaos: ChaosStack) -> None:
        self.chaos = chaos
        left = chaos.leftovers([])
        self.orphans = set(left["orphans"])
        self.uploads = {u["UploadId"] for u in left["pending_uploads"]}


def wait_completed(chaos: ChaosStack, task_ids: list[str], since: float, what: str) -> None:
    """Each publication final within HEAL_SECONDS of ``since`` (monotonic), and COMPLETED."""
    for task_id in task_ids:
        left = max(1.0, HEAL_SECONDS - (time.monotonic() - since))
        try:
            row = chaos.db.wait_final(task_id, left)  # type: ignore[union-attr]
        except AssertionError as exc:
            pytest.fail(f"{what}: not finished within {HEAL_SECONDS} s: {exc}\n{chaos.report(task_ids)}")
        assert row["status"] == "COMPLETED", f"{what}: {row['status']}: {row['reason']}\n{chaos.report(task_ids)}"


def assert_published_cleanly(chaos: ChaosStack, links: dict[str, str], before: Baseline) -> None:
    """Same link as requested, exactly one object (the publication's own key, the size published), no new
    orphan object, no new pending multipart upload, no raw file of these publications on disk."""
    assert chaos.db is not None
    task_ids = list(links)
    report = chaos.report(task_ids)
    rows = chaos.db.tasks(task_ids)
    published = chaos.db.published()
    left = chaos.leftovers(task_ids)
    for task_id in task_ids:
        row = rows[task_id]
        assert row["link_key"] == links[task_id], f"the link changed\n{report}"
        key = chaos.bucket.key_for(row["object_key"])
        assert task_id in published, f"{task_id} COMPLETED without a published_studies row\n{report}"
        assert left["objects"][task_id] == {key: published[task_id]["size_bytes"]}, (
            f"{task_id}: objects {left['objects'][task_id]}, expected {key} of {published[task_id]['size_bytes']} B"
        )
        assert left["raw_files"][task_id] == [], f"raw instances left on disk: {left['raw_files'][task_id][:5]}"
    new_orphans = sorted(set(left["orphans"]) - before.orphans)
    assert new_orphans == [], f"objects no publication references: {new_orphans}\n{report}"
    new_uploads = [u for u in left["pending_uploads"] if u["UploadId"] not in before.uploads]
    assert new_uploads == [], f"pending multipart uploads: {new_uploads}\n{report}"


class OutageWatch:
    """What the publication said during an outage of ``seconds`` (polled every 0.2 s until it ends): when it
    first said ``waiting_for == code``, and every later sample that said something else (it must keep saying
    why it does not progress until the cause is back)."""

    def __init__(self, chaos: ChaosStack, task_id: str, code: str, seconds: float) -> None:
        assert chaos.db is not None
        ends = time.monotonic() + seconds
        began = time.monotonic()
        self.code = code
        self.first_seen: float | None = None
        self.lapses: list[str] = []
        while (now := time.monotonic()) < ends:
            row = chaos.db.task(task_id)
            if row.get("waiting_for") == code:
                self.first_seen = self.first_seen if self.first_seen is not None else now - began
            elif self.first_seen is not None:
                self.lapses.append(f"+{now - began:.1f}s waiting_for={row.get('waiting_for')!r} step={row['step']}")
            time.sleep(0.2)

    def problem(self) -> str | None:
        if self.first_seen is None:
            return f"waiting_for never said {self.code!r} during the outage"
        if self.lapses:
            return f"waiting_for said {self.code!r} from +{self.first_seen:.1f}s, then: {self.lapses[:5]}"
        return None


# ------------------------------------------------------------------------------------------------ crashes


@pytest.mark.parametrize("point", ["retrieve", "anonymise-zip", "upload"])
def test_worker_process_group_killed_then_restarted(
    chaos: ChaosStack, big_study: Callable[[], GeneratedStudy], point: str
) -> None:
    assert chaos.db is not None and chaos.timeline is not None
    moment = MOMENTS[point]
    before = Baseline(chaos)
    study = big_study()
    chaos.slow_down(moment)
    task_id = chaos.publish(study, f"kill@{point}")
    link = chaos.db.task(task_id)["link_key"]
    try:
        at_kill = chaos.wait_moment(task_id, moment, REACH_SECONDS)
    except AssertionError as exc:
        pytest.fail(f"the publication never got to {point}: {exc}\n{chaos.report([task_id])}")
    if point == "retrieve":  # the kill lands with identifiable instances on disk
        assert raw_files(chaos.work_dir, task_id), "no raw instance on disk at the kill"
    killed_run = at_kill.get("flow_run_id")
    chaos.kill_worker(task_id)
    chaos.full_speed()
    time.sleep(1)  # the machine/orchestrator brings the worker back 1 s later
    back = chaos.start_worker()

    wait_completed(chaos, [task_id], back, f"killed during {point}")
    if killed_run:
        states = chaos.prefect.flow_run_states([str(killed_run)])
        chaos.timeline.mark(f"the killed flow run is now {states.get(str(killed_run))} in Prefect", task_id)
    assert_published_cleanly(chaos, {task_id: link}, before)


# ------------------------------------------------------------------------------------------------ Prefect


def test_prefect_server_restarted_during_retrieve(
    chaos: ChaosStack, big_study: Callable[[], GeneratedStudy], small_study: Callable[[], GeneratedStudy]
) -> None:
    """Two retrievals at once (every slot of the PACS taken, pacs.max_concurrent_retrievals is 2) when the
    Prefect server restarts: they and two new publications complete."""
    assert chaos.db is not None and chaos.timeline is not None
    before = Baseline(chaos)
    moment = MOMENTS["retrieve-slow"]  # each retrieval lasts ~15 s: the restart lands in their middle
    chaos.slow_down(moment)
    first = [chaos.publish(big_study(), f"prefect-{n}") for n in (1, 2)]
    links = {t: chaos.db.task(t)["link_key"] for t in first}
    for task_id in first:
        try:
            chaos.wait_moment(task_id, moment, REACH_SECONDS)
        except AssertionError as exc:
            pytest.fail(f"the publication never got to retrieve: {exc}\n{chaos.report(first)}")
    chaos.timeline.mark("Prefect server stopping")
    chaos.prefect.stop()
    during = chaos.db.tasks(first)
    chaos.prefect.start()
    back = time.monotonic()
    chaos.timeline.mark("Prefect server back")
    chaos.full_speed()
    for task_id, row in during.items():
        assert (row["status"], row["step"]) == ("RUNNING", "retrieve"), (
            f"the restart did not land during the retrieve of {task_id}: {row['status']} {row['step']}"
        )

    for n in (3, 4):
        task_id = chaos.publish(small_study(), f"prefect-{n}")
        links[task_id] = chaos.db.task(task_id)["link_key"]
    wait_completed(chaos, list(links), back, "Prefect server restarted during two retrievals")
    assert_published_cleanly(chaos, links, before)


# ------------------------------------------------------------------------------------------------ outages


def test_pacs_down_during_retrieve(chaos: ChaosStack, big_study: Callable[[], GeneratedStudy]) -> None:
    assert chaos.db is not None and chaos.timeline is not None
    before = Baseline(chaos)
    study = big_study()
    chaos.slow_down(MOMENTS["retrieve-slow"])
    task_id = chaos.publish(study, "pacs-down")
    link = chaos.db.task(task_id)["link_key"]
    try:
        chaos.wait_moment(task_id, MOMENTS["retrieve-slow"], REACH_SECONDS)
    except AssertionError as exc:
        pytest.fail(f"the publication never got to retrieve: {exc}\n{chaos.report([task_id])}")
    with chaos.pacs_down():
        chaos.timeline.mark(f"PACS stopped for {OUTAGE_SECONDS} s", task_id)
        landed = chaos.db.task(task_id)
        said = OutageWatch(chaos, task_id, "pacs", OUTAGE_SECONDS)  # the outage lasts its length
    back = time.monotonic()
    chaos.timeline.mark("PACS started again", task_id)
    chaos.full_speed()

    assert (landed["status"], landed["step"]) == ("RUNNING", "retrieve"), f"the outage missed the retrieve: {landed}"
    wait_completed(chaos, [task_id], back, "PACS down during the retrieve")
    if problem := said.problem():
        pytest.fail(f"while the PACS was down: {problem}\n{chaos.report([task_id])}")
    assert not chaos.timeline.saw(task_id, lambda r: r["status"] == "FAILED"), chaos.report([task_id])
    assert_published_cleanly(chaos, {task_id: link}, before)


def test_storage_unreachable_during_upload(chaos: ChaosStack, big_study: Callable[[], GeneratedStudy]) -> None:
    assert chaos.db is not None and chaos.timeline is not None
    before = Baseline(chaos)
    study = big_study()
    chaos.slow_down(MOMENTS["upload"])  # the upload lasts a few seconds: the outage cuts it in the middle
    task_id = chaos.publish(study, "s3-down")
    link = chaos.db.task(task_id)["link_key"]
    try:
        chaos.wait_moment(task_id, MOMENTS["upload"], REACH_SECONDS)
    except AssertionError as exc:
        pytest.fail(f"the publication never got to upload: {exc}\n{chaos.report([task_id])}")
    chaos.s3_proxy.stop()
    try:
        chaos.timeline.mark(f"S3 unreachable for {OUTAGE_SECONDS} s", task_id)
        landed = chaos.db.task(task_id)
        said = OutageWatch(chaos, task_id, "storage", OUTAGE_SECONDS)  # the outage lasts its length
    finally:
        chaos.full_speed()
        chaos.s3_proxy.start()
    back = time.monotonic()
    chaos.timeline.mark("S3 reachable again", task_id)

    assert (landed["status"], landed["step"]) == ("RUNNING", "upload"), f"the outage missed the upload: {landed}"
    wait_completed(chaos, [task_id], back, "S3 unreachable during the upload")
    if problem := said.problem():
        pytest.fail(f"while S3 was unreachable: {problem}\n{chaos.report([task_id])}")
    assert not chaos.timeline.saw(task_id, lambda r: r["status"] == "FAILED"), chaos.report([task_id])
    assert_published_cleanly(chaos, {task_id: link}, before)
