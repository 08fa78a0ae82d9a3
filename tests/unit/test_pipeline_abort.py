"""The pipeline stops the other steps when one fails, even while Prefect's API still shows the failed step as
Running (its state is written asynchronously; a loaded server lags). The full suite once hung here: the failed
anonymise step was read as Running once, dropped from the watched steps, and zip/upload waited for its output
forever."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from prefect.states import Completed, Failed, Running

import flows.publish as publish
from studypub.errors import Aborted
from studypub.models import Step
from studypub.settings import Settings
from studypub.spool import WorkPaths


class FakeFuture:
    """A finished step whose state the API reports as Running until the future itself is waited on."""

    def __init__(self, fails: bool, paths: WorkPaths, follower: bool) -> None:
        self.fails, self.paths, self.follower = fails, paths, follower
        self._final: Any = None
        self.finished = threading.Event()
        if not follower:
            self.finished.set()

    @property
    def state(self) -> Any:
        return self._final or Running()

    def wait(self, timeout: float | None = None) -> None:
        if self.finished.is_set():
            self._final = Failed() if self.fails else Completed()

    def result(self, raise_on_failure: bool = True) -> Any:
        if self.fails:
            raise RuntimeError("anonymise failed")
        if self.follower:
            raise Aborted("stopped because another step of this publication failed")
        return 1


def test_a_failure_the_api_shows_late_still_stops_the_other_steps(tmp_path: Path, monkeypatch: Any) -> None:
    paths = WorkPaths(tmp_path / "task")
    paths.create()
    futures = {
        Step.ANONYMISE: FakeFuture(fails=True, paths=paths, follower=False),
        Step.ZIP: FakeFuture(fails=False, paths=paths, follower=True),
    }

    class Submit:
        def __init__(self, step: Step) -> None:
            self.step = step

        def submit(self, task_id: str) -> FakeFuture:
            return futures[self.step]

    def fake_wait(pending: list[FakeFuture], timeout: float) -> Any:
        if paths.abort_marker.exists():  # the follower sees the abort and ends
            futures[Step.ZIP].finished.set()
        done = {f for f in pending if f.finished.is_set()}
        return type("Done", (), {"done": done})()

    monkeypatch.setattr(publish, "pipeline_tasks", lambda settings: {s: Submit(s) for s in futures})
    monkeypatch.setattr(publish, "wait", fake_wait)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            publish.run_pipeline(Settings(), "t", [Step.ANONYMISE, Step.ZIP], paths)
        except BaseException as exc:
            outcome["raised"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(timeout=10)
    assert not runner.is_alive(), "the pipeline waited forever for a step whose input never comes"
    assert isinstance(outcome.get("raised"), RuntimeError)
    assert getattr(outcome["raised"], "failed_step", None) == Step.ANONYMISE.value
