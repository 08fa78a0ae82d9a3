"""prefect.yaml must not drift from the code: every entrypoint imports and is a flow."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import yaml
from prefect import Flow

ROOT = Path(__file__).parents[2]


def _deployments() -> list[dict]:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def test_every_entrypoint_imports_and_is_a_flow() -> None:
    deployments = _deployments()
    assert {d["name"] for d in deployments} >= {"publish"}
    for d in deployments:
        path, _, name = d["entrypoint"].partition(":")
        spec = importlib.util.spec_from_file_location(f"_entry_{d['name']}", ROOT / path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        flow = getattr(module, name)
        assert isinstance(flow, Flow), d["entrypoint"]
        declared = set((d.get("parameters") or {}).keys())
        accepted = set(inspect.signature(flow.fn).parameters)
        assert declared <= accepted


def test_publish_flow_takes_only_the_task_id() -> None:
    """Prefect never sees identifiers: the PID and accession stay in the app's database."""
    from flows.publish import publish_study

    assert list(inspect.signature(publish_study.fn).parameters) == ["task_id"]


def test_publish_and_retention_are_declared_with_their_entrypoints() -> None:
    by_name = {d["name"]: d for d in _deployments()}
    assert set(by_name) == {"publish", "retention", "notify"}
    assert by_name["notify"]["entrypoint"] == "flows/notify.py:deliver_messages"
    assert by_name["publish"]["entrypoint"] == "flows/publish.py:publish_study"
    assert by_name["retention"]["entrypoint"] == "flows/retention.py:retention"
    assert not by_name["publish"].get("schedules")  # runs are started per request, never on a schedule


def test_retention_runs_on_its_cron_schedule_one_run_at_a_time() -> None:
    """The schedule is the setting's default, valid for Prefect; a run due while one is going is cancelled."""
    from prefect.cli.deploy._models import PrefectYamlModel  # the model `prefect deploy` reads the file with
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule

    from studypub.settings import RetentionSettings

    PrefectYamlModel.model_validate(yaml.safe_load((ROOT / "prefect.yaml").read_text()))
    retention = next(d for d in _deployments() if d["name"] == "retention")
    [schedule] = retention["schedules"]
    assert schedule["cron"] == RetentionSettings().cron == "0 * * * *"
    assert schedule.get("active", True) is True
    CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))  # raises on a bad expression
    limit = retention["concurrency_limit"]
    assert limit["limit"] == 1
    assert ConcurrencyLimitStrategy(limit["collision_strategy"]) is ConcurrencyLimitStrategy.CANCEL_NEW


def test_worker_serves_the_same_deployments_as_prefect_yaml() -> None:
    """`studypub worker` builds its deployments in code; they must match the file (names, flows, schedule)."""
    from deployments.worker import runner_deployments
    from studypub.settings import Settings

    served = {d.name: d for d in runner_deployments(Settings(retention={"cron": "*/5 * * * *"}))}
    declared = {d["name"]: d for d in _deployments()}
    assert set(served) == set(declared)
    for name, d in declared.items():  # entrypoints are relative to the working directory, absolute elsewhere
        assert served[name].entrypoint.endswith(d["entrypoint"]), (served[name].entrypoint, d["entrypoint"])
    [schedule] = served["retention"].schedules
    assert schedule.schedule.cron == "*/5 * * * *"  # the setting, not the file's default
    assert served["retention"].concurrency_limit == 1
    assert served["retention"].concurrency_options.collision_strategy == "CANCEL_NEW"
    assert not served["publish"].schedules
