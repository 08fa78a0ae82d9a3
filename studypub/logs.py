"""JSON logging in the spec's shape: {"timestamp", "level", "message", "details": {...}}.

Only the spec's identifiers (pid, acsn) and our own ids may appear in details; names, birth dates and DICOM
contents never do. Prefect's loggers use the same formatter through ``logging.yml``.
"""

from __future__ import annotations

import logging
import logging.config
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonFormatter

LOGGING_YAML = Path(__file__).with_name("logging.yml")

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
