"""Network helpers for tests: free ports and readiness polling (shared with studypub.demo)."""

from __future__ import annotations

from studypub.demo.net import LOOPBACK, ManagedProcess, free_port, port_open, wait_until

__all__ = ["LOOPBACK", "ManagedProcess", "free_port", "port_open", "wait_until"]
