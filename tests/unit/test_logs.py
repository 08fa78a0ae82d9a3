"""Logs for a person at a terminal and for ELK: the format setting, the readable console line, and one line
per expected failure (no traceback, no repeat by Prefect's engine) while unexpected errors keep theirs."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from studypub.errors import PacsUnavailable, StudyNotFound
from studypub.logs import (
    LOGGING_YAML,
    ConsoleFormatter,
    ExpectedFailures,
    SpecJsonFormatter,
    details,
    log_format,
    make_formatter,
    uvicorn_log_config,
)

ROOT = Path(__file__).parents[2]


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ExpectedFailures())
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_the_setting_chooses_the_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYPUB_LOG_FORMAT", "console")
    assert log_format() == "console" and isinstance(make_formatter(), ConsoleFormatter)
    monkeypatch.setenv("STUDYPUB_LOG_FORMAT", "json")
    assert log_format() == "json" and isinstance(make_formatter(), SpecJsonFormatter)
    monkeypatch.setenv("STUDYPUB_LOG_FORMAT", "auto")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert log_format() == "json"


def test_auto_is_console_on_a_terminal() -> None:
    # A real pseudo-terminal as the child's stderr.
    import pty

    leader, follower = pty.openpty()
    try:
        out = subprocess.run(
            [sys.executable, "-c", "from studypub.logs import log_format; print(log_format())"],
            stderr=follower,
            capture_output=False,
            stdout=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "STUDYPUB_LOG_FORMAT"},
            cwd=ROOT,
            check=True,
        )
    finally:
        os.close(leader)
        os.close(follower)
    assert out.stdout.strip() == "console"


def test_a_console_line_is_readable() -> None:
    logger, stream = capture(ConsoleFormatter())
    logger.info("Study found in PACS", extra=details(task_id="t-1", acsn="ACC 1", instances=40))
    line = stream.getvalue().strip()
    assert "\n" not in line and not line.startswith("{")
    assert "INFO" in line and "Study found in PACS  task_id=t-1 acsn='ACC 1' instances=40" in line


def test_an_expected_failure_is_one_line_without_traceback() -> None:
    for formatter in (ConsoleFormatter(), SpecJsonFormatter()):
        logger, stream = capture(formatter)
        exc = raised(StudyNotFound("study not found in PACS"))
        # What Prefect's task engine writes when a step fails, then its flow engine's repeats.
        logger.error(f"Task run failed with exception: {exc!r} - Retries are exhausted", exc_info=exc)
        logger.error("Encountered exception during execution: %r", exc, exc_info=exc)
        logger.error("Engine execution exited with unexpected exception", exc_info=exc)
        lines = stream.getvalue().strip().splitlines()
        assert len(lines) == 1, lines
        assert "Task run failed with exception: StudyNotFound" in lines[0] and "Traceback" not in lines[0]
        if isinstance(formatter, SpecJsonFormatter):
            assert "error" not in json.loads(lines[0])["details"]


def test_an_unexpected_error_keeps_its_traceback() -> None:
    logger, stream = capture(ConsoleFormatter())
    logger.error("Engine execution exited with unexpected exception", exc_info=raised(KeyError("boom")))
    text = stream.getvalue()
    assert "Engine execution exited" in text and "Traceback" in text and "KeyError" in text
    logger, stream = capture(SpecJsonFormatter())
    logger.error("Encountered exception during execution", exc_info=raised(ValueError("x")))
    assert json.loads(stream.getvalue())["details"]["error"] == "ValueError: x"


def test_a_transient_error_too_is_expected() -> None:
    logger, stream = capture(ConsoleFormatter())
    logger.warning("PACS unreachable", exc_info=raised(PacsUnavailable("The PACS at h:1 (X) is unreachable")))
    assert "Traceback" not in stream.getvalue()


def test_every_handler_uses_the_one_formatter_and_filter() -> None:
    config = yaml.safe_load(LOGGING_YAML.read_text())
    assert config["formatters"]["studypub"]["()"] == "studypub.logs.make_formatter"
    for name, handler in config["handlers"].items():
        assert handler.get("filters") == ["expected"], name
    assert config["handlers"]["stderr"]["formatter"] == "studypub"
    uvicorn = uvicorn_log_config()
    assert uvicorn["formatters"]["studypub"]["()"] == "studypub.logs.make_formatter"
    assert uvicorn["handlers"]["stderr"]["filters"] == ["expected"]
