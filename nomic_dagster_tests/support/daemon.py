"""Waiting for a real dagster-daemon to be seen dequeuing runs (its heartbeat)."""

from __future__ import annotations

import time

import dagster as dg

from nomic_dagster.orchestration.orchestrator import run_mode


def wait_for_queue_daemon(instance: dg.DagsterInstance, timeout_s: float = 120.0) -> None:
    """Until the orchestrator would queue runs (a daemon heartbeat): before it, it executes
    them in a child process instead, and the test would not exercise the queue."""
    deadline = time.monotonic() + timeout_s
    while run_mode(instance) != "queue" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run_mode(instance) == "queue", f"the daemon sent no heartbeat in {timeout_s:.0f} s"
