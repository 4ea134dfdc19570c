"""Human approval as a driver: record a decision, then run the approved cycle to its end.

The parked states and decisions live in the approval store (`cycle.approvals`); this
module claims an approved cycle, puts its worktree back at the base commit, runs
IMPLEMENT -> VERIFY -> COMMIT with the same steps every driver uses, and finishes it like
any other cycle. A rejection ends the parked cycle `rejected_by_human`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.events import EventType, bus
from nomic_dagster.core.phases import resume_phases
from nomic_dagster.core.records import CycleRecord, Outcome, Phase
from nomic_dagster.core.state import CycleState
from nomic_dagster.cycle.approvals import ApprovalDecision, ApprovalStore, default_approver
from nomic_dagster.cycle.finish import finish_cycle
from nomic_dagster.cycle.runtime import CycleRuntime
from nomic_dagster.cycle.steps import prepare_workspace, run_phase

log = logging.getLogger(__name__)


def approved_state(
    cycle_id: str, run_id: str | None = None, root: Path | str | None = None
) -> CycleState:
    """The approved cycle, claimed and ready for IMPLEMENT: its stored state with the pause
    cleared and its worktree back at the base commit."""
    store = ApprovalStore(root)
    parked, decision = store.claim(cycle_id)
    state = parked.model_copy(
        update={
            "outcome": None,
            "reason": "",
            "ended_in": None,
            "run_id": run_id or parked.run_id,
        }
    )
    ws = state.workspace
    if ws is None or not Path(ws.source_repo).is_dir():
        where = ws.source_repo if ws else "(none)"
        ended = state.end(
            Outcome.BAD_INPUT,
            f"the repository of cycle {cycle_id} is gone ({where}): nothing to implement in",
            resume_phases()[0],
        )
        return ended
    try:
        prepare_workspace(resume_phases()[0], state)  # the worktree, detached at the base again
    except BaseException:
        store.release(cycle_id)
        raise
    bus.emit(
        EventType.RESUMED,
        cycle_id,
        phase=resume_phases()[0].value,
        approved_by=decision.who,
        design_hash=decision.design_hash,
    )
    log.info("cycle %s: approved by %s, resuming at %s", cycle_id, decision.who, resume_phases()[0])
    return state


def rejected_state(cycle_id: str, root: Path | str | None = None) -> CycleState:
    """The rejected cycle's stored state, ended rejected_by_human with who and why."""
    store = ApprovalStore(root)
    decisions = store.decisions(cycle_id)
    latest = decisions[-1] if decisions else None
    if latest is None or latest.decision != "reject":
        raise BadInput(f"cycle {cycle_id} was not rejected", f"nomic reject {cycle_id}")
    note = f": {latest.note}" if latest.note else ""
    return store.state(cycle_id).end(
        Outcome.REJECTED_BY_HUMAN,
        f"design {latest.design_hash[:12]} rejected by {latest.who} at "
        f"{latest.decided_at:%Y-%m-%d %H:%M} UTC{note}",
        Phase.DESIGN,
    )


def resume_approved(
    cycle_id: str,
    run_id: str | None = None,
    root: Path | str | None = None,
    runtime: CycleRuntime | None = None,
) -> CycleRecord:
    """Run an approved cycle to its end (IMPLEMENT → VERIFY → COMMIT) in this process, with
    `runtime` (default: one for the parked cycle's settings, backends from the
    environment)."""
    state = approved_state(cycle_id, run_id, root)
    runtime = runtime if runtime is not None else CycleRuntime.for_settings(state.settings)
    try:
        for phase in resume_phases():
            state = run_phase(phase, state, runtime)
    except BaseException:  # Ctrl-C mid-run: the cycle stays approved, not stuck running
        ApprovalStore(root).release(cycle_id)
        raise
    return finish_cycle(state)


def approve(
    cycle_id: str,
    who: str | None = None,
    note: str = "",
    expires_in_hours: float | None = None,
    expected_hash: str | None = None,
    root: Path | str | None = None,
    run: bool = True,
    runtime: CycleRuntime | None = None,
) -> tuple[ApprovalDecision, CycleRecord | None]:
    """Record an approval and (unless `run=False`) run the cycle to its end."""
    decision = ApprovalStore(root).decide(
        cycle_id, "approve", who or default_approver(), note, expires_in_hours, expected_hash
    )
    return decision, resume_approved(cycle_id, root=root, runtime=runtime) if run else None


def reject(
    cycle_id: str,
    who: str | None = None,
    note: str = "",
    expected_hash: str | None = None,
    root: Path | str | None = None,
) -> tuple[ApprovalDecision, CycleRecord]:
    """Record a rejection and end the cycle rejected_by_human (its record in the history)."""
    decision = ApprovalStore(root).decide(
        cycle_id, "reject", who or default_approver(), note, None, expected_hash
    )
    return decision, finish_cycle(rejected_state(cycle_id, root))
