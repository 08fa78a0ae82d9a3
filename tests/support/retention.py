"""What a retention run reports, shared by the tests that run it: one place to update when the flow gains a
step, so every test compares the whole report (a count that appears unexpectedly fails them)."""

from __future__ import annotations

ZERO = {
    "archives_deleted": 0,
    "deletions_failed": 0,
    "uploads_aborted": 0,
    "orphans_deleted": 0,
    "work_folders_removed": 0,
    "result_files_removed": 0,
    "identifiers_erased": 0,
    "steps_failed": 0,
}


def counts(**values: int) -> dict[str, int]:
    """The report of a run that did exactly ``values`` (the rest zero)."""
    unknown = set(values) - set(ZERO)
    assert not unknown, f"not in a retention report: {sorted(unknown)}"
    return dict(ZERO, **values)
