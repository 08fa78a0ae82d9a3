"""The one place logging is set up: JSON lines in the spec's shape ({"timestamp", "level", "message",
"details": {...}}) for production and ELK, or one readable line per event for a person at a terminal.

``STUDYPUB_LOG_FORMAT`` chooses: ``json``, ``console``, or ``auto`` (the default): console when stderr is a
terminal (``studypub run`` sets console for itself and its children), JSON otherwise. Only the spec's
identifiers (pid, acsn) and our own ids may appear in details; names, birth dates and DICOM contents never do.
Prefect's loggers use the same formatter and filter through ``logging.yml``, uvicorn's through
:func:`uvicorn_log_config`.

An expected failure (one of the service's own errors: study not found, PACS refused...) is one line: its
traceback is dropped, and Prefect's engine lines that only repeat it ("Engine execution exited with unexpected
exception", "Encountered exception during execution") are not written, since the flow logs the failure itself.
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from studypub.errors import StudyPubError

LOGGING_YAML = Path(__file__).with_name("logging.yml")
LOG_FORMAT_ENV = "STUDYPUB_LOG_FORMAT"
LOG_FORMATS = ("auto", "console", "json")

# Attributes Prefect (and we) attach to records that belong in "details".
_DETAIL_ATTRS = ("flow_run_id", "flow_run_name", "flow_name", "task_run_id", "task_run_name", "task_name")


class SpecJsonFormatter(JsonFormatter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("json_ensure_ascii", False)
        super().__init__(*args, **kwargs)

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict) -> None:
        log_record["timestamp"] = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")
        log_record["level"] = record.levelname
        log_record["message"] = record.getMessage()
        details: dict[str, Any] = {"logger": record.name}
        extra = getattr(record, "details", None)
        if isinstance(extra, dict):
            details.update(extra)
        for attr in _DETAIL_ATTRS:
            value = getattr(record, attr, None)
            if value is not None:
                details[attr] = str(value)
        if record.exc_info:
            details["error"] = str(self.formatException(record.exc_info)).splitlines()[-1]
        log_record["details"] = details

    def process_log_record(self, log_record: dict[str, Any]) -> dict[str, Any]:
        # Keep only the spec's keys (drop python-json-logger's copies of the message and exc_info).
        return {k: log_record[k] for k in ("timestamp", "level", "message", "details") if k in log_record}


class ConsoleFormatter(logging.Formatter):
    """``14:02:03 WARNING  Study ACC-1 failed  step=find reason=…  (flows.publish)``: the time, the level, the
    message, then the details as key=value; a traceback only for an unexpected error."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        fields: dict[str, Any] = {}
        extra = getattr(record, "details", None)
        if isinstance(extra, dict):
            fields.update(extra)
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        where = record.name.removeprefix("studypub.")
        line = f"{when} {record.levelname:<8} {f'[{run}] ' if run else ''}{record.getMessage()}"
        if fields:
            line += "  " + " ".join(f"{k}={_console_value(v)}" for k, v in fields.items())
        line += f"  ({where})"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _console_value(value: Any) -> str:
    text = str(value)
    return repr(text) if (not text or any(c.isspace() for c in text)) else text


def log_format() -> str:
    """``console`` or ``json``, from ``STUDYPUB_LOG_FORMAT`` (auto: console when stderr is a terminal)."""
    chosen = os.environ.get(LOG_FORMAT_ENV, "auto").strip().lower() or "auto"
    if chosen not in LOG_FORMATS:
        chosen = "auto"
    if chosen == "auto":
        try:
            chosen = "console" if sys.stderr.isatty() else "json"
        except (AttributeError, ValueError):  # stderr closed or replaced
            chosen = "json"
    return chosen


def make_formatter() -> logging.Formatter:
    """The formatter ``logging.yml`` and :func:`uvicorn_log_config` use (``()`` factory)."""
    return ConsoleFormatter() if log_format() == "console" else SpecJsonFormatter()


# Prefect's engine lines that only repeat a failure the flow has logged itself.
_REPEATS = ("Engine execution exited with unexpected exception", "Encountered exception during execution")


class ExpectedFailures(logging.Filter):
    """One line per expected failure: no traceback for the service's own errors, and no repeat of them by
    Prefect's engine. Unexpected errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if not isinstance(exc, StudyPubError):
            return True
        if isinstance(record.msg, str) and record.msg.startswith(_REPEATS):
            return False
        record.exc_info = None
        record.exc_text = None
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """``studypub api``'s logging (uvicorn's dictConfig): the same formatter and filter as ``logging.yml``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"studypub": {"()": "studypub.logs.make_formatter"}},
        "filters": {"expected": {"()": "studypub.logs.ExpectedFailures"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "studypub",
                "filters": ["expected"],
            }
        },
        "loggers": {
            "studypub": {"level": "INFO"},
            "uvicorn": {"level": "INFO"},
            "uvicorn.error": {"level": "INFO"},
            "prefect": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},
        },
        "root": {"level": "WARNING", "handlers": ["stderr"]},
    }


def configure_env() -> None:
    """Point Prefect at our logging config. Must run before prefect is imported by an entry point."""
    os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(LOGGING_YAML))
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"studypub.{name}")


def details(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: ``log.info("...", extra=details(pid=..., acsn=...))``."""
    return {"details": {k: v for k, v in values.items() if v is not None}}
