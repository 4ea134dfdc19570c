"""The cycle's ops: one thin op per phase over `nomic_dagster.cycle.steps.run_phase`.

Every phase op has two optional outputs: `state` when the cycle goes on, `ended` when a
gate closed (no consensus, scope rejection, failed verification, ...). Everything
downstream of a closed gate is skipped and the run still succeeds; `record_cycle_op`
fans in the `ended` outputs, removes the worktree and materializes `cycle_records`.
Except: a cycle that fails in IMPLEMENT, VERIFY or COMMIT (implementation_failed,
verification_failed, error) is recorded by that op, which then fails, so "re-execute from
failure" runs that phase again on its stored input, without context, debate or design.

No `from __future__ import annotations` here: Dagster reads the op annotations at runtime.
"""

import os
from collections.abc import Iterator
from typing import Any

import dagster as dg

from nomic_dagster.agents.llm.agent import provider_slots
from nomic_dagster.core.events import ProgressTicker
from nomic_dagster.core.records import CycleRecord, Outcome, Phase, Track
from nomic_dagster.core.state import CycleState
from nomic_dagster.core.usage import LLMCall, Spend
from nomic_dagster.cycle.approvals import approval_hint, design_hash
from nomic_dagster.cycle.steps import (
    REEXECUTABLE,
    finish_cycle,
    prepare_workspace,
    run_phase,
    start_cycle,
    with_earlier_attempts,
)
from nomic_dagster.orchestration.assets import CYCLE_RECORDS
from nomic_dagster.orchestration.config import CycleConfig
from nomic_dagster.orchestration.partitions import cycles_partitions
from nomic_dagster.orchestration.provider_pools import InstanceProviderSlots
from nomic_dagster.orchestration.resources import (
    AGENT_RESOURCE_KEYS,
    NomicResource,
    agent_backends,
)
from nomic_dagster.phases.debate import counterfactual_markdown, rounds_markdown

CYCLE_ID_TAG = "nomic/cycle_id"
TRACK_TAG = "nomic/track"
PHASE_TAG = "nomic/phase"
# Steps that may call a model share this Dagster pool: `dagster instance concurrency set
# nomic_llm 2` keeps at most two such steps, hence two concurrent model calls (a step makes
# its calls one at a time), running across all runs.
LLM_POOL = "nomic_llm"
LLM_PHASES = (Phase.DEBATE, Phase.DESIGN, Phase.IMPLEMENT)
# A cycle that fails in these phases fails their step (after its record is written), so
# "re-execute from failure" re-runs the phase on its stored input state.
REEXECUTABLE_PHASES = (Phase.IMPLEMENT, Phase.VERIFY, Phase.COMMIT)

STATE_OUTS = {
    "state": dg.Out(CycleState, is_required=False, description="the cycle goes on"),
    "ended": dg.Out(
        CycleState, is_required=False, description="a gate closed: the cycle ends here"
    ),
}


def _phase_metadata(phase: Phase, s: CycleState) -> dict[str, Any]:
    """What the UI shows for each phase step."""
    md: dict[str, Any] = {
        "cycle_id": s.cycle_id,
        "duration_s": s.phase_durations.get(phase.value, 0.0),
    }
    if s.ended:
        md["outcome"] = s.outcome.value if s.outcome else ""
        md["reason"] = s.reason
    if phase in LLM_PHASES:  # what this phase's model calls cost (0 for offline agents)
        calls = [c for c in s.llm_calls if c.phase == phase.value]
        spend = Spend.of(calls)
        md |= {"cost_usd": spend.cost_usd, "tokens": spend.tokens, "llm_calls": spend.llm_calls}
        md["cycle_cost_usd"] = s.spent_usd
        if calls:
            md["calls"] = dg.MetadataValue.md(calls_table(calls))
    if phase is Phase.CONTEXT and s.context:
        c = s.context
        md |= {
            "repo": s.workspace.origin if s.workspace else "",
            "base": f"{s.workspace.base_branch}@{s.workspace.base_sha[:12]}" if s.workspace else "",
            "files": len(c.files),
            "ruff_findings": len(c.findings),
            "tests_collected": c.tests.collected if c.tests.collected is not None else -1,
            "baseline_green": bool(c.tests.passed),
            "context_chars": c.size_chars,
        }
    elif phase is Phase.DEBATE and s.debate:
        d = s.debate
        md |= {
            "proposals": dg.MetadataValue.md(
                "\n".join(f"- **{p.id}**: {p.title} ({', '.join(p.files)})" for p in d.proposals)
                or "none"
            ),
            "tally": dg.MetadataValue.json(d.consensus.tally),
            "weighted_tally": dg.MetadataValue.json(d.consensus.weighted_tally),
            "winner": d.consensus.winner_id or "",
            "vote_only_winner": d.consensus.vote_only_winner_id or "",
            "changed_by_debate": d.consensus.changed_by_debate,
            "rounds": dg.MetadataValue.md(rounds_markdown(d)),
            "vote_only_counterfactual": dg.MetadataValue.md(counterfactual_markdown(d)),
            "agent_failures": dg.MetadataValue.json(d.agent_failures),
        }
    elif phase is Phase.DESIGN and s.design:
        md |= {
            "design": dg.MetadataValue.md(
                f"**{s.design.title}** (risk {s.design.risk})\n\nFiles: {', '.join(s.design.files)}\n\n"
                + "\n".join(f"1. {step}" for step in s.design.steps)
                + f"\n\nTest plan: {s.design.test_plan}"
            ),
            "scope_allowed": bool(s.scope and s.scope.allowed),
        }
        if s.outcome is Outcome.AWAITING_APPROVAL:  # what the person approves, and how
            md |= {
                "design_hash": design_hash(s.design),
                "planned_files": dg.MetadataValue.json(list(s.design.files)),
                "approve_with": approval_hint(s.cycle_id),
            }
    elif phase is Phase.IMPLEMENT and s.changeset:
        cs = s.changeset
        md |= {
            "files_changed": len(cs.files),
            "lines_added": cs.lines_added,
            "lines_removed": cs.lines_removed,
            "summary": cs.summary,
            "diff": dg.MetadataValue.md(f"```diff\n{cs.diff[:20000]}\n```"),
        }
    elif phase is Phase.VERIFY and s.verification:
        md["gates"] = dg.MetadataValue.md(
            "\n".join(
                f"- {'✅' if g.passed else '❌'} **{g.name}** {g.detail}"
                for g in s.verification.gates
            )
        )
    elif phase is Phase.COMMIT and s.commit:
        md |= {"commit": s.commit.sha, "branch": s.commit.branch, "merged": s.commit.merged}
    return md


def calls_table(calls: list[LLMCall]) -> str:
    """Every model call of a phase, as the UI shows it."""
    rows = [
        "| agent | step | model | input | cache read | cache write | output | USD | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in calls:
        u = c.usage
        rows.append(
            f"| {c.agent} | {c.step} | {c.model} | {u.input_tokens} | {u.cache_read_tokens} "
            f"| {u.cache_write_tokens} | {u.output_tokens} | {u.usd:.6f} | "
            f"{'yes' if c.ok else 'no: ' + c.error[:80].replace('|', '/')} |"
        )
    return "\n".join(rows)


def _emit(phase: Phase, state: CycleState) -> Iterator[dg.Output]:
    output = "ended" if state.ended else "state"
    yield dg.Output(state, output_name=output, metadata=_phase_metadata(phase, state))


@dg.op(
    out=STATE_OUTS,
    tags={PHASE_TAG: "context"},
    required_resource_keys={"nomic", *AGENT_RESOURCE_KEYS},
)
def context_op(context: dg.OpExecutionContext, config: CycleConfig):
    """Resolve and validate the target, add the cycle's worktree, read the repository's facts
    and run its tests once (a red baseline ends the cycle: nothing could be verified)."""
    nomic: NomicResource = context.resources.nomic
    tags = context.run_tags
    settings = config.to_settings(nomic.state_dir or None)
    if not settings.track:
        settings = settings.model_copy(
            update={"track": tags.get(TRACK_TAG) or Track.DEVELOPER.value}
        )
    elif tags.get(TRACK_TAG) and tags[TRACK_TAG] != settings.track:
        context.log.warning(
            f"config track={settings.track} differs from the run tag {TRACK_TAG}={tags[TRACK_TAG]}: "
            "the branch follows the config, run limits follow the tag"
        )
    cycle_id = tags.get(CYCLE_ID_TAG) or context.run_id[:8]
    state = start_cycle(settings, cycle_id=cycle_id, run_id=context.run_id)
    context.log.info(
        f"cycle {cycle_id}: goal {state.goal.text!r}, agents "
        f"{', '.join(config.agents) or '$NOMIC_AGENTS, else the offline three'}"
    )
    # the agent resources, for this phase's panel; progress lines every few seconds
    with agent_backends(context.resources), ProgressTicker(context.log.info):
        new = run_phase(Phase.CONTEXT, state)
    yield from _emit(Phase.CONTEXT, new)


def _phase_op(phase: Phase, doc: str) -> dg.OpDefinition:
    @dg.op(
        name=f"{phase.value}_op",
        out=STATE_OUTS,
        tags={PHASE_TAG: phase.value},
        description=doc,
        pool=LLM_POOL if phase in LLM_PHASES else None,
        required_resource_keys=set(AGENT_RESOURCE_KEYS),
    )
    def _op(context: dg.OpExecutionContext, state: CycleState):
        if phase in REEXECUTABLE_PHASES and state.workspace is not None:
            # A re-execution from failure (or an approved cycle) may find the worktree gone:
            # put it back the way this phase's first run found it.
            if context.run.parent_run_id or not os.path.isdir(state.workspace.worktree):
                prepare_workspace(phase, state)
            if context.run.parent_run_id and state.run_id != context.run_id:
                # the input comes from an earlier run: what its failed attempts paid counts
                state = with_earlier_attempts(state)
            state = state.model_copy(update={"run_id": context.run_id})
        # run_phase logs start, duration and outcome through the managed nomic_dagster logger
        # the agent resources, in this step's process; each model call holds a slot of its
        # provider's pool (nomic_llm_<provider>) across runs
        slots = InstanceProviderSlots(context) if phase in LLM_PHASES else None
        # ... and while it runs, what it is doing (tests, which agent), every few seconds
        with (
            agent_backends(context.resources),
            provider_slots(slots),
            ProgressTicker(context.log.info),
        ):
            new = run_phase(phase, state)
        if phase in REEXECUTABLE_PHASES and new.outcome in REEXECUTABLE:
            # This step is the failed one, so Dagster's "re-execute from failure" runs it
            # again on its stored input: context, debate and design are not repeated.
            record = record_cycle(context, new)
            raise dg.Failure(
                description=f"cycle {record.cycle_id} ended with {record.outcome.value}: "
                f"{record.reason}"[:4000]
                + " (re-execute from failure to run this phase again)",
                metadata={**_phase_metadata(phase, new), "outcome": record.outcome.value},
            )
        yield from _emit(phase, new)

    return _op


debate_op = _phase_op(
    Phase.DEBATE,
    "Every agent proposes; a vote-only ballot is recorded as the counterfactual; then up to "
    "critique_rounds rounds of critiques, revisions and votes (early stop when the leader is "
    "stable); the consensus rule (and an optional judge) picks the winner or ends the cycle "
    "with no_consensus.",
)
design_op = _phase_op(
    Phase.DESIGN,
    "The winner designs its proposal; the scope limiter rejects protected paths and designs "
    "over the file budget (rejected_by_scope).",
)
implement_op = _phase_op(
    Phase.IMPLEMENT,
    "The winner edits the cycle's worktree on branch nomic/<track>/<cycle_id>.",
)
verify_op = _phase_op(
    Phase.VERIFY,
    "Gates on the final diff: compiles, tests pass, no new ruff findings, no protected path, "
    "no deleted or skipped test, no weakened assertion, nothing outside the worktree.",
)
commit_op = _phase_op(
    Phase.COMMIT, "Commit the verified tree on the cycle branch, with provenance trailers."
)


def record_metadata(record: CycleRecord) -> dict[str, Any]:
    return {
        "outcome": record.outcome.value,
        "reason": record.reason,
        "goal": record.goal.text,
        "track": record.track.value,
        "repo": record.origin,
        "winner": record.winner or "",
        "winner_agent": record.winner_agent or "",
        "vote_only_winner": record.first_round_winner or "",
        "changed_by_debate": record.changed_by_debate,
        "files": dg.MetadataValue.json(record.files),
        "files_changed": len(record.files),
        "lines_added": record.lines_added,
        "lines_removed": record.lines_removed,
        "tests_passed": bool(record.tests_passed),
        "tests_collected": record.tests_collected if record.tests_collected is not None else -1,
        "failed_gates": dg.MetadataValue.json(record.failed_gates),
        "branch": record.branch or "",
        "commit_sha": record.commit_sha or "",
        "cost_usd": record.cost_usd,
        "tokens": record.tokens,
        "llm_calls": record.llm_calls,
        "cost_by_phase": dg.MetadataValue.json(record.cost_by_phase),
        "cost_by_agent": dg.MetadataValue.json(record.cost_by_agent),
        "tokens_by_phase": dg.MetadataValue.json(record.tokens_by_phase),
        "tokens_by_agent": dg.MetadataValue.json(record.tokens_by_agent),
        "cassette": dg.MetadataValue.path(record.cassette) if record.cassette else "",
        "phase_durations_s": dg.MetadataValue.json(record.phase_durations),
        "duration_s": round(record.duration_s, 3),
        "record": dg.MetadataValue.json(record.model_dump(mode="json")),
    } | (
        {"approve_with": approval_hint(record.cycle_id)}
        if record.outcome is Outcome.AWAITING_APPROVAL
        else {}
    )


def record_cycle(context: dg.OpExecutionContext, state: CycleState) -> CycleRecord:
    """finish_cycle, then the cycle's `cycles` partition and its `cycle_records`
    materialization (shared by record_cycle_op and a failing implement/verify/commit op)."""
    record = finish_cycle(state)
    context.instance.add_dynamic_partitions(cycles_partitions.name, [record.cycle_id])
    metadata = record_metadata(record)
    context.log_event(
        dg.AssetMaterialization(
            asset_key=CYCLE_RECORDS,
            partition=record.cycle_id,
            description=f"{record.outcome.value}: {record.reason}"[:1000],
            metadata=metadata,
        )
    )
    return record


@dg.op(tags={PHASE_TAG: "record"})
def record_cycle_op(context: dg.OpExecutionContext, ended: list[CycleState]):
    """Remove the worktree, store the cycle record and materialize its `cycle_records`
    partition — on every path through the cycle. Bad input and internal errors fail the run
    after the record is written, so the UI shows them as failures."""
    if len(ended) != 1:
        raise dg.Failure(f"expected exactly one ended cycle state, got {len(ended)}")
    record = record_cycle(context, ended[0])
    metadata = record_metadata(record)
    context.add_output_metadata(
        {k: metadata[k] for k in ("outcome", "reason", "branch", "commit_sha")}
    )
    if record.outcome.is_failure:
        raise dg.Failure(
            description=f"cycle {record.cycle_id} ended with {record.outcome.value}: {record.reason}",
            metadata={"outcome": record.outcome.value, "cycle_id": record.cycle_id},
        )
    return record
