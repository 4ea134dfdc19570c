"""`CycleState`: everything a cycle has decided so far, passed from phase to phase.

It is the one record every driver hands on (op outputs, the state machine's child
processes, checkpoints, parked approvals), so it lives at the bottom of the house.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from nomic_dagster.core.records import (
    ChangeSet,
    CommitResult,
    DebateResult,
    Design,
    Goal,
    Outcome,
    Phase,
    Record,
    RepoContext,
    ScopeDecision,
    VerificationReport,
    Workspace,
)
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.core.usage import LLMCall


class CycleState(Record):
    """Everything a cycle has decided so far; passed from phase to phase."""

    cycle_id: str
    run_id: str | None = None
    settings: CycleSettings
    goal: Goal
    started_at: datetime
    workspace: Workspace | None = None
    context: RepoContext | None = None
    debate: DebateResult | None = None
    design: Design | None = None
    scope: ScopeDecision | None = None
    changeset: ChangeSet | None = None
    verification: VerificationReport | None = None
    commit: CommitResult | None = None
    outcome: Outcome | None = None
    reason: str = ""
    ended_in: Phase | None = None
    phase_durations: dict[str, float] = Field(default_factory=dict)
    # Every model call the cycle paid for, tagged with its phase. The state carries them
    # (not the process) so that cost and the budget survive the multiprocess executor,
    # the state machine's child processes, re-execution and resumption.
    llm_calls: list[LLMCall] = Field(default_factory=list)
    # What failed attempts of a re-executed phase spent: Dagster re-runs the phase on its
    # stored input state, which cannot hold them (see `with_earlier_attempts`).
    earlier_attempts_usd: float = 0.0

    @property
    def spent_usd(self) -> float:
        return round(sum(c.usage.usd for c in self.llm_calls) + self.earlier_attempts_usd, 8)

    @property
    def ended(self) -> bool:
        return self.outcome is not None

    def end(self, outcome: Outcome, reason: str, phase: Phase) -> CycleState:
        return self.model_copy(update={"outcome": outcome, "reason": reason, "ended_in": phase})
