"""Dagster entry point: `dagster job execute -m nomic_dagster.definitions -j nomic_cycle`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from nomic_dagster.orchestration.assets import cycle_records
from nomic_dagster.orchestration.jobs import nomic_cycle, track_jobs
from nomic_dagster.orchestration.resources import NomicResource


def build_defs(resource_overrides: Mapping[str, Any] | None = None) -> dg.Definitions:
    """All definitions; tests pass resource overrides (Definitions.merge cannot replace them)."""
    resources: dict[str, Any] = {"nomic": NomicResource()}
    resources.update(resource_overrides or {})
    return dg.Definitions(
        assets=[cycle_records],
        jobs=[nomic_cycle, *track_jobs],
        resources=resources,
    )


defs = build_defs()


def nomic_cycle_job() -> dg.JobDefinition:
    """Module-level factory so `reconstructable` (re-execution from Python) can find the job."""
    return defs.get_job_def("nomic_cycle")
