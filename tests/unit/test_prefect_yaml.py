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
