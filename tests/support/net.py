"""Network helpers for tests: free ports and readiness polling (shared with studypub.demo)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from studypub.demo.net import LOOPBACK, ManagedProcess, free_port, port_open, wait_until

__all__ = ["LOOPBACK", "ManagedProcess", "free_port", "port_open", "wait_for", "wait_until"]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until ``predicate`` returns something truthy and return it; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
