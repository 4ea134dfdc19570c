"""`nomic_approve`: a person's decision on a cycle awaiting approval, from the UI.

Launch it from the launchpad with the cycle id (the design op and the `cycle_records`
partition of a paused cycle show the design, its hash and the planned files). The first op
records the decision (who, when, the design hash, an optional expiry) in the approval store;
on approve, the cycle's stored post-design state goes through the same implement, verify,
commit and record ops as a cycle run, so context, debate and design are not run (nor paid)
again, and the `cycle_records` partition of the cycle gets its final materialization. A
failed IMPLEMENT or VERIFY can be re-executed from failure here too.

No `from __future__ import annotations` here: Dagster reads the annotations at runtime.
"""

from typing import Literal

import dagster as dg
from pydantic import Field

from nomic_dagster.core.settings import CycleSettings, state_dir
from nomic_dagster.cycle.approvals import ApprovalStore, default_approver
from nomic_dagster.drivers.approval_flow import approved_state, rejected_state
from nomic_dagster.orchestration.ops import (
    CYCLE_ID_TAG,
    PHASE_TAG,
    STATE_OUTS,
    TRACK_TAG,
    commit_op,
    implement_op,
    record_cycle_op,
    verify_op,
)
from nomic_dagster.orchestration.resources import NomicResource

# Dagster+ sets this tag to the person who launched the run; open source Dagster does not.
USER_TAG = "dagster/user"


class ApprovalConfig(dg.Config):
    """Run config of `decide_op`: which cycle, which decision, who decides."""

    cycle_id: str = Field(description="The cycle awaiting approval (`nomic pending` lists them).")
    decision: Literal["approve", "reject"] = Field(
        default="approve", description="approve: run IMPLEMENT → VERIFY → COMMIT; reject: end it."
    )
    who: str = Field(
        default="",
        description="Who decides. Empty: the run's dagster/user tag, else $NOMIC_APPROVER, "
        "$USER or git user.name of the code server.",
    )
    note: str = Field(default="", description="Why (stored with the decision).")
    expires_in_hours: float | None = Field(
        default=None,
        description="An approval not acted on within this many hours is refused. Empty: the "
        "cycle's approval_expiry_hours setting, else no expiry.",
    )
    design_hash: str = Field(
        default="",
        description="The design hash you reviewed (or a prefix): refused if the stored design "
        "differs. Empty: no check.",
    )


@dg.op(out=STATE_OUTS, tags={PHASE_TAG: "approval"})
def decide_op(context: dg.OpExecutionContext, config: ApprovalConfig, nomic: NomicResource):
    """Record the decision; on approve, hand the cycle's stored post-design state to IMPLEMENT
    (its worktree re-created at the base commit); on reject, end it rejected_by_human."""
    root = state_dir(CycleSettings(state_dir=nomic.state_dir or None))
    store = ApprovalStore(root)
    who = config.who or context.run_tags.get(USER_TAG) or default_approver()
    decision = store.decide(
        config.cycle_id,
        config.decision,
        who,
        config.note,
        config.expires_in_hours,
        config.design_hash or None,
    )
    if decision.decision == "approve":
        state = approved_state(config.cycle_id, context.run_id, root)
    else:
        state = rejected_state(config.cycle_id, root)
    # The approval run is found with the cycle's run (nomic/cycle_id) and filtered by track
    # in the UI. (Tags added now do not put it under the track's run-queue limit, and the
    # track-failure sensor watches the cycle jobs only.)
    context.instance.add_run_tags(
        context.run_id,
        {CYCLE_ID_TAG: state.cycle_id, TRACK_TAG: state.settings.track_enum.value},
    )
    context.log.info(
        f"cycle {state.cycle_id}: {decision.decision} by {decision.who} "
        f"(design {decision.design_hash[:12]})"
    )
    metadata = {
        "cycle_id": state.cycle_id,
        "decision": decision.decision,
        "who": decision.who,
        "decided_at": decision.decided_at.isoformat(),
        "design_hash": decision.design_hash,
        "expires_at": decision.expires_at.isoformat() if decision.expires_at else "",
        "note": decision.note,
    }
    yield dg.Output(state, output_name="ended" if state.ended else "state", metadata=metadata)


@dg.graph(description="A person's decision on a paused cycle; approve runs it from IMPLEMENT.")
def nomic_approve_graph():
    state, ended_decision = decide_op()
    state, ended_implement = implement_op(state)
    state, ended_verify = verify_op(state)
    _, ended_commit = commit_op(state)
    record_cycle_op([ended_decision, ended_implement, ended_verify, ended_commit])


nomic_approve = nomic_approve_graph.to_job(
    name="nomic_approve",
    description="Approve or reject a cycle awaiting approval (config: cycle_id, decision, "
    "who, note, expires_in_hours). An approval runs IMPLEMENT → VERIFY → COMMIT on the stored "
    "design; same as `nomic approve <cycle>`.",
    executor_def=dg.in_process_executor,
)
