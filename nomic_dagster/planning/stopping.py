"""Stopping rules for autonomous launches (the planner sensor and the schedules).

They answer one question: may the system start another cycle *by itself*? A goal a
person asked for is never stopped by them (W6: the original ran its stopping rules before
every goal, explicit user goals included). Checked in order:

1. budget spent: the USD the autonomous cycles cost (the cycle store's records of the
   cycles those launches started) reached `budget_usd` (≤ 0: no budget rule);
2. cycle limit: `max_cycles` autonomous launches were made (≤ 0: no limit);
3. diminishing returns: the last `diminishing_window` finished autonomous cycles all
   ended without a commit (≤ 0: off).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nomic_dagster.core.records import Record
from nomic_dagster.planning.cycle_store import CycleStore

Rule = Literal["budget_spent", "cycle_limit", "diminishing_returns"]


class StoppingRules(Record):
    budget_usd: float = 10.0
    max_cycles: int = 50
    diminishing_window: int = Field(3, ge=0)


class StopDecision(Record):
    rule: Rule
    detail: str


def applies_to(source: str) -> bool:
    """Stopping rules govern autonomous launches only, never a goal a person asked for."""
    return source != "user"


def should_stop(store: CycleStore, rules: StoppingRules, pending: int = 0) -> StopDecision | None:
    """Why autonomy must stop now, or None. `pending`: launches already decided this tick."""
    if rules.budget_usd > 0:
        spent = store.autonomous_spend()
        if spent >= rules.budget_usd:
            return StopDecision(
                rule="budget_spent",
                detail=f"autonomous cycles spent ${spent:.4f} of the ${rules.budget_usd:.2f} budget",
            )
    if rules.max_cycles > 0:
        launched = store.autonomous_launch_count() + pending
        if launched >= rules.max_cycles:
            return StopDecision(
                rule="cycle_limit",
                detail=f"{launched} autonomous cycles launched (limit {rules.max_cycles})",
            )
    if rules.diminishing_window > 0:
        last = store.autonomous_cycles(rules.diminishing_window)
        if len(last) >= rules.diminishing_window and not any(r.success for r in last):
            outcomes = ", ".join(r.outcome.value for r in last)
            return StopDecision(
                rule="diminishing_returns",
                detail=f"the last {len(last)} autonomous cycles landed nothing ({outcomes})",
            )
    return None
