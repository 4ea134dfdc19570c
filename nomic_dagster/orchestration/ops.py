"""The cycle's ops: one thin op per phase over `nomic_dagster.cycle.steps.run_phase`.

Every phase op has two optional outputs: `state` when the cycle goes on, `ended` when a
gate closed (no consensus, scope rejection, failed verification, ...). Everything
downstream of a closed gate is skipped and the run still succeeds; `record_cycle_op`
fans in the `ended` outputs, removes the worktree and materializes `cycle_records`.
Except: a cycle that fails in IMPLEMENT, VERIFY or COMMIT (implementation_failed,
verification_failed, error) is recorded by that op, which then fails, so "re-execute from
failure" runs that phase again on its stored input, without context, debate or design.

Each op's description, pool, retry policy and time limit come from the phase table
(`core.phases.PHASES`, held in the run by `phase_limits`).

No `from __future__ import annotations` here: Dagster reads the op annotations at runtime.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg

from nomic_dagster.core.events import ProgressTicker
from nomic_dagster.core.phases import PHASES, REEXECUTABLE_OUTCOMES, PhaseSpec
from nomic_dagster.core.records import CycleRecord, Outcome, Phase, Track
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.core.state import CycleState
from nomic_dagster.core.usage import LLMCall, Spend
from nomic_dagster.cycle.approvals import approval_hint, design_hash
from nomic_dagster.cycle.finish import finish_cycle
from nomic_dagster.cycle.runtime import CycleRuntime
from nomic_dagster.cycle.steps import (
    prepare_workspace,
    run_phase,
    start_cycle,
    with_earlier_attempts,
)
from nomic_dagster.orchestration.config import CycleConfig
from nomic_dagster.orchestration.phase_limits import (
    final_step,
    finished_earlier,
    lost_output,
    op_tags,
    refuse_retry_of_a_stopping_run,
    retry_policy,
    run_limited,
)
from nomic_dagster.orchestration.provider_pools import InstanceProviderSlots
from nomic_dagster.orchestration.record_sink import RunRecordSink, record_metadata
from nomic_dagster.orchestration.resources import (
    AGENT_RESOURCE_KEYS,
    NomicResource,
    backend_settings,
)
from nomic_dagster.phases.debate import counterfactual_markdown, rounds_markdown

CYCLE_ID_TAG = "nomic/cycle_id"
TRACK_TAG = "nomic/track"
PHASE_TAG = "nomic/phase"
# Steps that may call a model share this Dagster pool: `dagster instance concurrency set
# nomic_llm 2` keeps at most two such steps, hence two concurrent model calls (a step makes
# its calls one at a time), running across all runs.
LLM_POOL = "nomic_llm"

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
    if PHASES[phase].calls_models:  # what its model calls cost (0 for offline agents)
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


def _context(context: dg.OpExecutionContext, config: CycleConfig, spec: PhaseSpec):
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
    _not_twice(context, Phase.CONTEXT, state)
    # the agent resources, for this phase's panel; progress lines every few seconds
    with (
        op_runtime(context, settings, calls_models=spec.calls_models) as runtime,
        ProgressTicker(context.log.info),
    ):
        new = run_limited(context, spec, state, lambda s: run_phase(Phase.CONTEXT, s, runtime))
    with final_step(f"reporting context of cycle {new.cycle_id}"):
        outputs = list(_emit(Phase.CONTEXT, new))
    yield from outputs


@contextmanager
def op_runtime(
    context: dg.OpExecutionContext, settings: CycleSettings, calls_models: bool = False
) -> Iterator[CycleRuntime]:
    """The runtime of one step: the agent resources' backends, in this step's process; for a
    step that calls models, a slot of its provider's pool (nomic_llm_<provider>) held across
    runs by every call; the agents' breakers carried between steps and runs in the state
    folder (steps may run in processes of their own)."""
    runtime = CycleRuntime.for_settings(
        settings,
        backends=backend_settings(context.resources),
        provider_slots=InstanceProviderSlots(context) if calls_models else None,
    )
    with runtime.persisted_breakers():
        yield runtime


def phase_op(phase: Phase, spec: PhaseSpec | None = None) -> dg.OpDefinition:
    """The op of `phase`, built from its row of the phase table (or from `spec`, e.g. a
    shorter timeout in a test)."""
    spec = spec or PHASES[phase]
    if phase is Phase.CONTEXT:  # the first op: its input is the run config, not a state

        @dg.op(
            name="context_op",
            out=STATE_OUTS,
            tags=op_tags(spec, PHASE_TAG),
            description=spec.description,
            pool=LLM_POOL if spec.calls_models else None,
            retry_policy=retry_policy(spec),
            required_resource_keys={"nomic", *AGENT_RESOURCE_KEYS},
        )
        def context_op(context: dg.OpExecutionContext, config: CycleConfig):
            yield from _context(context, config, spec)

        return context_op

    @dg.op(
        name=f"{phase.value}_op",
        out=STATE_OUTS,
        tags=op_tags(spec, PHASE_TAG),
        description=spec.description,
        pool=LLM_POOL if spec.calls_models else None,
        retry_policy=retry_policy(spec),
        required_resource_keys=set(AGENT_RESOURCE_KEYS),
    )
    def _op(context: dg.OpExecutionContext, state: CycleState):
        _not_twice(context, phase, state)
        if context.retry_number and state.workspace is not None and not spec.reexecutable:
            prepare_workspace(phase, state)  # a retry starts where the failed attempt did
        if spec.reexecutable and state.workspace is not None:
            # A re-execution from failure (or an approved cycle) may find the worktree gone:
            # put it back the way this phase's first run found it.
            first = not context.retry_number and not context.run.parent_run_id
            if not first or not os.path.isdir(state.workspace.worktree):
                prepare_workspace(phase, state)
            if context.run.parent_run_id and state.run_id != context.run_id:
                # the input comes from an earlier run: what its failed attempts paid counts
                state = with_earlier_attempts(state)
            state = state.model_copy(update={"run_id": context.run_id})
        # run_phase logs start, duration and outcome through the managed nomic_dagster logger
        # ... and while it runs, what it is doing (tests, which agent), every few seconds
        with (
            op_runtime(context, state.settings, calls_models=spec.calls_models) as runtime,
            ProgressTicker(context.log.info),
        ):
            new = run_limited(context, spec, state, lambda s: run_phase(phase, s, runtime))
        if spec.reexecutable and new.outcome in REEXECUTABLE_OUTCOMES:
            # This step is the failed one, so Dagster's "re-execute from failure" runs it
            # again on its stored input: context, debate and design are not repeated. Its
            # retry policy must not: the cycle is recorded.
            with final_step(f"recording cycle {new.cycle_id}"):
                record = record_cycle(context, new)
            raise dg.Failure(
                description=f"cycle {record.cycle_id} ended with {record.outcome.value}: "
                f"{record.reason}"[:4000]
                + " (re-execute from failure to run this phase again)",
                metadata={**_phase_metadata(phase, new), "outcome": record.outcome.value},
                allow_retries=False,
            )
        with final_step(f"reporting {phase.value} of cycle {new.cycle_id}"):
            outputs = list(_emit(phase, new))
        yield from outputs

    return _op


context_op = phase_op(Phase.CONTEXT)
debate_op = phase_op(Phase.DEBATE)
design_op = phase_op(Phase.DESIGN)
implement_op = phase_op(Phase.IMPLEMENT)
verify_op = phase_op(Phase.VERIFY)
commit_op = phase_op(Phase.COMMIT)
# Every phase's op, in the table's order: the cycle and approval graphs are built from it.
PHASE_OPS: dict[Phase, dg.OpDefinition] = {
    Phase.CONTEXT: context_op,
    Phase.DEBATE: debate_op,
    Phase.DESIGN: design_op,
    Phase.IMPLEMENT: implement_op,
    Phase.VERIFY: verify_op,
    Phase.COMMIT: commit_op,
}
if list(PHASE_OPS) != list(PHASES):
    raise ImportError(f"orchestration.ops.PHASE_OPS {list(PHASE_OPS)} does not match PHASES")


def _not_twice(context: dg.OpExecutionContext, phase: Phase, state: CycleState) -> None:
    """A retry of a step whose phase already ran (its output could not be stored; the
    downstream steps would wait for it) records the cycle once, as an error, and fails for
    good instead of running the phase again. No retry starts in a run being stopped."""
    refuse_retry_of_a_stopping_run(context)
    if not finished_earlier(context):
        return
    with final_step(f"recording cycle {state.cycle_id}"):
        record = record_cycle(context, lost_output(phase, state))
    raise dg.Failure(
        description=f"cycle {record.cycle_id} ended with {record.outcome.value}: {record.reason}",
        metadata={"outcome": record.outcome.value, "cycle_id": record.cycle_id},
        allow_retries=False,
    )


def record_cycle(context: dg.OpExecutionContext, state: CycleState) -> CycleRecord:
    """finish_cycle, its `cycle_records` materialization an event of this run (shared by
    record_cycle_op and a failing implement/verify/commit op)."""
    return finish_cycle(state, sinks=[RunRecordSink(context)])


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
            allow_retries=False,  # recorded: a retry (say, a job-wide policy) would record twice
        )
    return record
