"""Dagster entry point: `dagster job execute -m nomic_dagster.definitions -j nomic_cycle`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from nomic_dagster.infra.metrics import install as install_metrics
from nomic_dagster.orchestration.approval import nomic_approve
from nomic_dagster.orchestration.assets import cycle_records, learning_assets, learning_checks
from nomic_dagster.orchestration.autonomy import PlannerResource
from nomic_dagster.orchestration.jobs import nomic_cycle, track_jobs
from nomic_dagster.orchestration.resources import NomicResource, default_agent_resources
from nomic_dagster.orchestration.schedules import track_schedules
from nomic_dagster.orchestration.sensors import (
    learning_automation_sensor,
    planner_sensor,
    refresh_learning_job,
    reset_track_job,
    track_failure_sensor,
)


def build_defs(resource_overrides: Mapping[str, Any] | None = None) -> dg.Definitions:
    """All definitions; tests pass resource overrides (Definitions.merge cannot replace them)."""
    install_metrics(serve_from_env=True)  # $NOMIC_METRICS_PORT: serve /metrics from here
    resources: dict[str, Any] = {"nomic": NomicResource(), "planner": PlannerResource()}
    # claude, gpt, openai_compatible, claude_code, codex: all fields empty = the environment,
    # so these defaults need no key (a key is only looked for when its agent is in the panel)
    resources.update(default_agent_resources())
    resources.update(resource_overrides or {})
    return dg.Definitions(
        assets=[cycle_records, *learning_assets],
        asset_checks=learning_checks,
        jobs=[nomic_cycle, *track_jobs, reset_track_job, nomic_approve, refresh_learning_job],
        sensors=[planner_sensor, track_failure_sensor, learning_automation_sensor],
        schedules=track_schedules,
        resources=resources,
    )


defs = build_defs()


def nomic_cycle_job() -> dg.JobDefinition:
    """Module-level factory so `reconstructable` (re-execution from Python) can find the job."""
    return defs.get_job_def("nomic_cycle")


def nomic_approve_job() -> dg.JobDefinition:
    """The approval job for `reconstructable` (re-execution from failure from Python)."""
    return defs.get_job_def("nomic_approve")
