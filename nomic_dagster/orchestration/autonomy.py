"""The planner resource: what autonomy plans for, and the rules it stops by.

One `PlannerResource` (resource key `planner`) configures the `meta_planner_priorities`
asset, the planner sensor and the schedules, so the UI shows the settings in one place
(change them in `definitions.build_defs` or in a run's resource config).
"""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field

from nomic_dagster.core.records import Track
from nomic_dagster.orchestration.resources import NomicResource
from nomic_dagster.planning.cycle_store import CycleStore, get_cycle_store
from nomic_dagster.planning.stopping import StoppingRules

TRIGGER_TAG = "nomic/trigger"
GOAL_SOURCE_TAG = "nomic/goal_source"
GOAL_ID_TAG = "nomic/goal_id"


class PlannerResource(dg.ConfigurableResource):
    """Targets, objective and tracks of the meta-planner; stopping rules and the failure
    pause of autonomous launches."""

    repo: str = Field(
        default="",
        description="Target to plan for (path or URL). Empty: the targets of the most recent "
        "cycles in the cycle store, else $NOMIC_REPO, else the demo.",
    )
    base_branch: str = Field(default="", description="Base branch. Empty: the checked-out one.")
    objective: str = Field(
        default="", description="Keep the goals on this objective (empty: self-directed)."
    )
    tracks: list[str] = Field(
        default_factory=list, description="Tracks the planner may plan for (empty: all)."
    )
    agents: list[str] = Field(
        default_factory=list,
        description="The panel the planner's goals start from (empty: $NOMIC_AGENTS, else "
        "the offline agents); agents that keep failing are left out of a goal's panel.",
    )
    test_command: str = Field(
        default="", description="The target's test command for launched cycles (empty: default)."
    )
    mode: Literal["scan", "debate"] = Field(
        default="scan",
        description="scan: rank the scan's goals by signals and the learning tables, no LLM. "
        "debate: the planner_agents also propose goals and vote on them; any failure (no "
        "key, budget, server errors, garbage) falls back to the scan, with the reason.",
    )
    planner_agents: list[str] = Field(
        default_factory=lambda: ["claude"],
        description="Agents that debate the goals in debate mode (LLM agents: claude, gpt, "
        "openai-compatible, or an import path); offline tools are skipped.",
    )
    planner_budget_usd: float = Field(
        default=0.5,
        description="Most the planner's LLM calls may cost per plan in debate mode (<=0: no "
        "limit); a call whose worst case could cross it is not made.",
    )
    max_goals: int = Field(default=5, ge=1, description="Most goals per plan.")
    max_targets: int = Field(default=3, ge=1, description="Most targets scanned per plan.")
    history: int = Field(default=1000, ge=1, description="Cycles the learning tables read.")
    budget_usd: float = Field(
        default=10.0, description="Stop autonomous launches once their cycles cost this (<=0: off)."
    )
    max_autonomous_cycles: int = Field(
        default=50, description="Stop autonomous launches after this many (<=0: off)."
    )
    diminishing_window: int = Field(
        default=3,
        ge=0,
        description="Stop when this many autonomous cycles in a row landed nothing (0: off).",
    )
    failure_threshold: int = Field(
        default=3, ge=1, description="Pause a track after this many failed runs in a row."
    )

    def track_list(self) -> list[Track]:
        known = {t.value for t in Track}
        unknown = [t for t in self.tracks if t not in known]
        if unknown:
            raise ValueError(f"planner.tracks names unknown tracks {unknown}; use {sorted(known)}")
        return [Track(t) for t in self.tracks] if self.tracks else list(Track)

    def rules(self) -> StoppingRules:
        return StoppingRules(
            budget_usd=self.budget_usd,
            max_cycles=self.max_autonomous_cycles,
            diminishing_window=self.diminishing_window,
        )


def store_for(nomic: NomicResource) -> CycleStore:
    """The cycle store the cycle jobs write (same state folder as the `nomic` resource)."""
    return get_cycle_store(nomic.state_dir or None)
