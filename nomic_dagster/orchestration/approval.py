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

from nomic_dagster.core.phases import resume_phases
from nomic_dagster.core.settings import CycleSettings, state_dir
from nomic_dagster.cycle.approvals import ApprovalStore, default_approver
from nomic_dagster.drivers.approval_flow import approved_state, rejected_state
from nomic_dagster.orchestration.ops import (
    CYCLE_ID_TAG,
    PHASE_OPS,
    PHASE_TAG,
    STATE_OUTS,
    TRACK_TAG,
    record_cycle_op,
)
from nomic_dagster.orchestration.phase_limits import run_limit_tags
from nomic_dagster.orchestration.resources import NomicResource

RESUMED = " → ".join(p.name for p in resume_phases())  # what an approved cycle runs
# Dagster+ sets this tag to the person who launched the run; open source Dagster does not.
USER_TAG = "dagster/user"


class ApprovalConfig(dg.Config):
    """Run config of `decide_op`: which cycle, which decision, who decides."""

    cycle_id: str = Field(description="The cycle awaiting approval (`nomic pending` lists them).")
    decision: Literal["approve", "reject"] = Field(
        default="approve", description=f"approve: run {RESUMED}; reject: end it."
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


@dg.graph(description=f"A person's decision on a paused cycle; approve runs {RESUMED}.")
def nomic_approve_graph():
    state, ended = decide_op()
    endings = [ended]
    for phase in resume_phases():  # the phases of the table that resume after approval
        state, ended = PHASE_OPS[phase](state)
        endings.append(ended)
    record_cycle_op(endings)


nomic_approve = nomic_approve_graph.to_job(
    name="nomic_approve",
    description="Approve or reject a cycle awaiting approval (config: cycle_id, decision, "
    f"who, note, expires_in_hours). An approval runs {RESUMED} on the stored design; same as "
    "`nomic approve <cycle>`.",
    executor_def=dg.in_process_executor,
    tags=run_limit_tags(resume_phases()),
)
