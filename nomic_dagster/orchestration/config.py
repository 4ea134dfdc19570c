"""Dagster run config: the domain's CycleSettings, exposed as a Dagster Config class.

The fields are declared once, in `nomic_dagster.core.settings.CycleSettings`; the launchpad,
`-c run_config.yaml` and the Python API all validate against the same model.
"""

from __future__ import annotations

import dagster as dg

from nomic_dagster.core.settings import CycleSettings


class CycleConfig(dg.Config, CycleSettings):
    """Run config of `context_op`: what the cycle should improve, where, and how."""

    def to_settings(self, state_dir: str | None = None) -> CycleSettings:
        settings = CycleSettings.model_validate(self.model_dump())
        if state_dir and not settings.state_dir:
            settings = settings.model_copy(update={"state_dir": state_dir})
        return settings
