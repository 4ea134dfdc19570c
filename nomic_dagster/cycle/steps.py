"""One cycle as a sequence of steps over a `CycleState`.

Each step wraps one phase function: it reads what it needs from the state, calls the
phase, and returns a new state. A step that ends the cycle (a gate closed, bad input, an
error) sets `outcome`; later steps then pass the state through untouched. The Dagster
ops, the plain `run_cycle` driver and the CLI all call these same steps.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable

from nomic_dagster.agents import Agent, agent_for_role, build_panel, panel_names
from nomic_dagster.agents.cassette import cassette_link, cassette_writer, record_panel
from nomic_dagster.agents.replay import recorded_recent_cycles, replay_panel, replay_role
from nomic_dagster.core.errors import AgentError, BadInput, BudgetExhausted, ImplementationFailed
from nomic_dagster.core.events import EventType, bus, span, tracer
from nomic_dagster.core.records import (
    CycleRecord,
    Goal,
    Outcome,
    Phase,
    new_cycle_id,
    utcnow,
)
from nomic_dagster.core.settings import (
    DEFAULT_GOAL,
    CycleSettings,
    check_track_agents,
    state_dir,
)
from nomic_dagster.core.state import CycleState
from nomic_dagster.core.usage import Spend
from nomic_dagster.cycle.approvals import park, settle
from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster.infra.git import (
    close_workspace,
    open_workspace,
    reattach_workspace,
    reset_to_base,
    restore_changeset,
)
from nomic_dagster.infra.metrics import install as _install_metrics  # noqa: F401  (counts every cycle)
from nomic_dagster.infra.pricing import Budget, budget_from_env, cycle_budget, open_cycle_budget
from nomic_dagster.phases.commit import commit_change, commit_message
from nomic_dagster.phases.context import baseline_problem, gather_context
from nomic_dagster.phases.debate import run_debate
from nomic_dagster.phases.design import check_scope, design_change, winning_agent
from nomic_dagster.phases.implement import implement_design
from nomic_dagster.phases.verify import verify_change
from nomic_dagster.planning.cycle_store import store_cycle

log = logging.getLogger("nomic_dagster.cycle.steps")


def start_cycle(
    settings: CycleSettings, cycle_id: str | None = None, run_id: str | None = None
) -> CycleState:
    goal = Goal(
        text=settings.goal,
        track=settings.track_enum,
        source="default" if settings.goal == DEFAULT_GOAL else "user",
    )
    state = CycleState(
        cycle_id=cycle_id or new_cycle_id(),
        run_id=run_id,
        settings=settings,
        goal=goal,
        started_at=utcnow(),
    )
    bus.emit(
        EventType.CYCLE_STARTED,
        state.cycle_id,
        goal=goal.text,
        track=goal.track.value,
        agents=list(settings.agents),
        run_id=run_id,
    )
    return state


def budget_key(state: CycleState) -> str:
    """What keys the cycle's budget: its worktree (what agents see as `context.root`)."""
    if state.context is not None:
        return state.context.root
    return state.workspace.worktree if state.workspace else f"cycle:{state.cycle_id}"


def budget_limit(settings: CycleSettings) -> float | None:
    return settings.budget_usd if settings.budget_usd is not None else budget_from_env()


def _panel(state: CycleState) -> list[Agent]:
    # The budget `run_phase` opened for this phase: every agent of the panel draws on it.
    budget = cycle_budget(budget_key(state))
    settings = state.settings
    if settings.replay_from:  # LLM agents answer from the recorded cassette, offline
        panel = replay_panel(settings, budget)
    else:
        panel = build_panel(settings.agents, budget=budget)
    return _recorded(state, panel)


def _recorded(state: CycleState, agents: list[Agent]) -> list[Agent]:
    """`agents`, their LLM calls recorded in the cycle's cassette when the settings ask."""
    if state.settings.record_cassette:
        recent = state.context.recent_cycles if state.context else []
        writer = cassette_writer(state.settings, state.cycle_id, state.started_at, recent)
        record_panel(agents, writer)
    return agents


# ---------------------------------------------------------------- phase bodies


def _role(state: CycleState, role: str, panel: list[Agent]) -> Agent | None:
    """The agent the settings name for `role` (judge, designer, implementer); None when
    unset. It may be outside the panel (e.g. codex implements without debating); an LLM
    agent outside it is recorded in the cassette, or answers from it in a replay."""
    name = getattr(state.settings, role).strip()
    if not name:
        return None
    budget = cycle_budget(budget_key(state))
    if state.settings.replay_from and all(a.name != name for a in panel):
        return replay_role(role, name, state.settings, budget)
    agent = agent_for_role(role, name, panel, budget=budget)
    return agent if agent in panel else _recorded(state, [agent])[0]


def _context(state: CycleState) -> CycleState:
    # The panel: the settings' agents, else $NOMIC_AGENTS, else the offline three (run config
    # wins); resolved once here so that every later phase and the record name the same one.
    agents = panel_names(state.settings.agents)
    check_track_agents(state.settings, agents)  # e.g. track core: Claude only
    state = state.model_copy(
        update={"settings": state.settings.model_copy(update={"agents": agents})}
    )
    panel = _panel(state)  # fail on unknown agents before any git work
    for role in ("judge", "designer", "implementer"):
        _role(state, role, panel)
    history = CycleHistory(state_dir(state.settings))
    ws = open_workspace(state.settings, state.cycle_id)
    try:
        earlier = [r.summary() for r in history.recent(origin=ws.origin)]
        if state.settings.replay_from:  # what the recorded cycle saw, not what came since
            earlier = recorded_recent_cycles(state.settings)
        ctx = gather_context(ws, state.settings, earlier)
    except BaseException:
        close_workspace(ws)  # the state that would carry `ws` to finish_cycle is lost
        raise
    state = state.model_copy(update={"workspace": ws, "context": ctx})
    problem = baseline_problem(ctx.tests, state.settings)
    if problem:
        return state.end(Outcome.BASELINE_RED, problem, Phase.CONTEXT)
    return state


def _debate(state: CycleState) -> CycleState:
    assert state.context is not None
    panel = _panel(state)
    judge = _role(state, "judge", panel)  # None: a failed consensus stays failed
    result = run_debate(
        state.context, state.goal, panel, state.settings.rule, state.settings, judge=judge
    )
    state = state.model_copy(update={"debate": result})
    for agent, failure in result.agent_failures.items():
        bus.emit(
            EventType.AGENT_FAILURE, state.cycle_id, error=failure, agent=agent, phase="debate"
        )
    if not result.proposals:
        failed = f" ({len(result.agent_failures)} agent(s) failed)" if result.agent_failures else ""
        return state.end(
            Outcome.NO_PROPOSALS, f"no agent found an improvement to propose{failed}", Phase.DEBATE
        )
    c = result.consensus
    if not c.reached:
        return state.end(
            Outcome.NO_CONSENSUS,
            c.reason
            or f"no proposal reached {c.rule.value} ({c.votes_for_winner}/{c.voters} votes; tally {c.tally})",
            Phase.DEBATE,
        )
    return state


def _design(state: CycleState) -> CycleState:
    assert state.debate is not None and state.context is not None
    panel = _panel(state)
    designer = _role(state, "designer", panel)  # None: the winning proposal's agent designs
    design = design_change(state.debate, panel, state.context, state.settings, designer)
    scope = check_scope(design, state.settings)
    state = state.model_copy(update={"design": design, "scope": scope})
    bus.emit(
        EventType.GATE_DECISION,
        state.cycle_id,
        gate="scope",
        passed=scope.allowed,
        detail="; ".join(scope.reasons),
    )
    if not scope.allowed:
        return state.end(Outcome.REJECTED_BY_SCOPE, "; ".join(scope.reasons), Phase.DESIGN)
    if state.settings.require_approval:
        # A pause, not a verdict: finish_cycle stores this state for `nomic approve`.
        return state.end(
            Outcome.AWAITING_APPROVAL,
            f"design awaits a person's approval: nomic approve {state.cycle_id} "
            f"(or nomic reject {state.cycle_id})",
            Phase.DESIGN,
        )
    return state


def _implement(state: CycleState) -> CycleState:
    assert state.debate and state.design and state.workspace and state.context
    panel = _panel(state)
    agent = (  # the implementer, else the designer, else the winning proposal's agent
        _role(state, "implementer", panel)
        or _role(state, "designer", panel)
        or winning_agent(state.debate, panel)
    )
    try:
        changes = implement_design(
            state.design, agent, state.workspace, state.context, state.settings
        )
    except ImplementationFailed as exc:
        return state.end(Outcome.IMPLEMENTATION_FAILED, str(exc), Phase.IMPLEMENT)
    return state.model_copy(update={"changeset": changes})


def _verify(state: CycleState) -> CycleState:
    assert state.changeset and state.workspace
    report = verify_change(state.changeset, state.workspace, state.settings)
    state = state.model_copy(update={"verification": report})
    for gate in report.gates:
        bus.emit(
            EventType.GATE_DECISION,
            state.cycle_id,
            gate=gate.name,
            passed=gate.passed,
            detail=gate.detail,
        )
    if not report.passed:
        failed = ", ".join(f"{g.name} ({g.detail})" for g in report.failed_gates)
        return state.end(
            Outcome.VERIFICATION_FAILED, f"failed gates: {failed}"[:2000], Phase.VERIFY
        )
    return state


def _commit(state: CycleState) -> CycleState:
    assert state.design and state.changeset and state.workspace
    message = commit_message(
        design=state.design,
        changeset=state.changeset,
        debate=state.debate,
        cycle_id=state.cycle_id,
        track=state.settings.track_enum.value,
        agents=list(state.settings.agents),
        run_id=state.run_id,
        verification=state.verification,
        designer=state.design.agent,
        implementer=state.settings.implementer or state.design.agent,
    )
    result = commit_change(state.workspace, state.changeset, message, state.settings.auto_merge)
    state = state.model_copy(update={"commit": result})
    merged = " and fast-forwarded " + state.workspace.base_branch if result.merged else ""
    return state.end(
        Outcome.COMMITTED, f"committed {result.sha[:12]} on {result.branch}{merged}", Phase.COMMIT
    )


STEPS: dict[Phase, Callable[[CycleState], CycleState]] = {
    Phase.CONTEXT: _context,
    Phase.DEBATE: _debate,
    Phase.DESIGN: _design,
    Phase.IMPLEMENT: _implement,
    Phase.VERIFY: _verify,
    Phase.COMMIT: _commit,
}


def run_phase(phase: Phase, state: CycleState) -> CycleState:
    """Run one phase unless the cycle already ended; never raises for a cycle-level failure."""
    if state.ended:
        return state
    log.info("cycle %s: %s started", state.cycle_id, phase.value)
    started = time.perf_counter()
    budget: Budget | None = None
    error: str | None = None
    with span(
        f"nomic.phase.{phase.value}",
        cycle_id=state.cycle_id,
        phase=phase.value,
        track=state.settings.track_enum.value,
    ) as current:
        bus.emit(EventType.PHASE_STARTED, state.cycle_id, phase=phase.value)
        try:
            # the phase's budget, seeded with what the cycle already spent (BadInput for
            # a bad $NOMIC_BUDGET_USD ends the cycle like any bad input)
            limit = budget_limit(state.settings)
            budget = open_cycle_budget(budget_key(state), limit, state.spent_usd)
            new = STEPS[phase](state)
        except BadInput as exc:
            new = state.end(Outcome.BAD_INPUT, str(exc), phase)
        except BudgetExhausted as exc:
            new = state.end(Outcome.BUDGET_EXHAUSTED, str(exc), phase)
        except AgentError as exc:
            outcome = Outcome.IMPLEMENTATION_FAILED if phase is Phase.DESIGN else Outcome.ERROR
            new = state.end(outcome, str(exc), phase)
            bus.emit(
                EventType.AGENT_FAILURE,
                state.cycle_id,
                error=str(exc),
                agent=exc.agent,
                phase=phase.value,
            )
        except Exception as exc:  # the record must say what broke, whatever broke
            log.error(
                "cycle %s: %s crashed\n%s", state.cycle_id, phase.value, traceback.format_exc()
            )
            error = f"{phase.value} crashed: {type(exc).__name__}: {exc}"
            new = state.end(Outcome.ERROR, error, phase)
            bus.emit(EventType.ERROR, state.cycle_id, error=error, phase=phase.value)
        if new.outcome is not None:
            current.set_attribute("nomic.outcome", new.outcome.value)
    elapsed = round(time.perf_counter() - started, 3)
    # The calls this phase made (CONTEXT makes none, so the key its new worktree brings
    # does not matter).
    made = budget.calls if budget is not None else []
    calls = [c.model_copy(update={"phase": phase.value}) for c in made]
    new = new.model_copy(
        update={
            "phase_durations": {**new.phase_durations, phase.value: elapsed},
            "llm_calls": [*new.llm_calls, *calls],
        }
    )
    bus.emit(
        EventType.PHASE_FINISHED,
        state.cycle_id,
        error=error,
        phase=phase.value,
        duration_s=elapsed,
        outcome=new.outcome.value if new.outcome else None,
    )
    suffix = f" -> {new.outcome.value}: {new.reason}" if new.ended else ""
    log.info("cycle %s: %s finished in %.2fs%s", state.cycle_id, phase.value, elapsed, suffix)
    return new


def prepare_workspace(phase: Phase, state: CycleState) -> None:
    """Before a phase runs again (retry, rollback, resume): put the worktree back the way
    the phase's first run found it."""
    ws = state.workspace
    if ws is None or phase is Phase.CONTEXT:
        return  # CONTEXT (re)opens the workspace itself, replacing a stale one
    if phase in (Phase.DEBATE, Phase.DESIGN):
        reset_to_base(ws)
    elif phase is Phase.IMPLEMENT:
        reattach_workspace(ws)  # start_branch resets the worktree onto the branch
    elif state.changeset is not None:
        restore_changeset(ws, state.changeset)


def to_record(state: CycleState) -> CycleRecord:
    ws, debate, cs, report = state.workspace, state.debate, state.changeset, state.verification
    winner = debate.winner if debate else None
    tests = (
        report.tests
        if report and report.tests
        else (state.context.tests if state.context else None)
    )
    return CycleRecord(
        cycle_id=state.cycle_id,
        run_id=state.run_id,
        track=state.settings.track_enum,
        goal=state.goal,
        origin=ws.origin if ws else (state.settings.repo or "demo"),
        repo=ws.source_repo if ws else (state.settings.repo or ""),
        base_branch=ws.base_branch if ws else state.settings.base_branch,
        base_sha=ws.base_sha if ws else None,
        outcome=state.outcome or Outcome.ERROR,
        reason=state.reason,
        agents=list(state.settings.agents),
        winner=winner.id if winner else None,
        winner_agent=winner.agent if winner else None,
        winner_kind=winner.kind if winner else None,
        first_round_winner=debate.consensus.first_round_winner_id if debate else None,
        changed_by_debate=debate.consensus.changed_by_debate if debate else False,
        proposals=len(debate.proposals) if debate else 0,
        files=cs.paths if cs else [],
        lines_added=cs.lines_added if cs else 0,
        lines_removed=cs.lines_removed if cs else 0,
        tests_passed=tests.passed if tests else None,
        tests_collected=tests.collected if tests else None,
        failed_gates=[g.name for g in report.failed_gates] if report else [],
        branch=state.commit.branch if state.commit else None,
        commit_sha=state.commit.sha if state.commit else None,
        merged=state.commit.merged if state.commit else False,
        **_spend(state).model_dump(),
        phase_durations=state.phase_durations,
        cassette=cassette_link(state.settings, state.cycle_id),
        started_at=state.started_at,
        finished_at=utcnow(),
    )


# Outcomes a cycle can be re-executed from (Dagster "re-execute from failure", or a
# resumed approval): the phase's inputs are stored, so it runs again without the others.
REEXECUTABLE = frozenset(
    {Outcome.IMPLEMENTATION_FAILED, Outcome.VERIFICATION_FAILED, Outcome.ERROR}
)


def _spend(state: CycleState) -> Spend:
    spend = Spend.of(state.llm_calls)
    if not state.earlier_attempts_usd:
        return spend
    by_phase = {**spend.cost_by_phase, "earlier_attempts": state.earlier_attempts_usd}
    return spend.model_copy(update={"cost_usd": state.spent_usd, "cost_by_phase": by_phase})


def with_earlier_attempts(state: CycleState) -> CycleState:
    """`state`, the input of a phase run again after it failed, charged with what the failed
    attempts spent: their record (the cycle's, in the history) holds all the cycle paid,
    this state only what came before the phase. So the budget spans re-executions."""
    failed = CycleHistory(state_dir(state.settings)).get(state.cycle_id)
    if failed is None or failed.outcome not in REEXECUTABLE:
        return state
    before = sum(c.usage.usd for c in state.llm_calls)
    earlier = round(max(0.0, failed.cost_usd - before), 8)
    return state.model_copy(update={"earlier_attempts_usd": earlier})


def finish_cycle(state: CycleState) -> CycleRecord:
    """Remove the worktree (whatever the outcome), store and return the cycle record."""
    if state.workspace is not None:
        try:
            close_workspace(state.workspace)
        except Exception:  # cleanup trouble must not hide the cycle's outcome
            log.exception("cycle %s: could not remove the worktree", state.cycle_id)
    if state.outcome is None:
        state = state.end(
            Outcome.ERROR, "the cycle stopped before it reached an outcome", Phase.CONTEXT
        )
    if state.outcome is Outcome.AWAITING_APPROVAL:
        # Paused, not finished: the state waits in the approval store; the history and the
        # cycle store get the cycle's record when it ends (approved and run, or rejected).
        try:
            park(state)
            bus.emit(EventType.PAUSED, state.cycle_id, reason=state.reason, phase="design")
            log.info("cycle %s: %s", state.cycle_id, state.reason)
            return to_record(state)
        except Exception as exc:  # the design could not be kept: the cycle cannot go on
            log.exception("cycle %s: could not store the design for approval", state.cycle_id)
            state = state.end(
                Outcome.ERROR, f"could not store the design for approval: {exc}", Phase.DESIGN
            )
    record = to_record(state)
    # A cycle re-executed from failure (or resumed after approval) ends a second time: its
    # new record replaces the failed one, so the history holds one record per cycle.
    CycleHistory(state_dir(state.settings)).append(record, replace_outcomes=REEXECUTABLE)
    settle(state_dir(state.settings), record)  # an approved or rejected cycle is no longer pending
    if not state.settings.replay_from:  # a replay reproduces a cycle: it teaches nothing new
        store_cycle(state, record)  # the learning record for the cycle store; never raises
    cycle_span = tracer.start_span(
        "nomic.cycle",
        start_time=int(record.started_at.timestamp() * 1e9),
        attributes={
            "nomic.cycle_id": record.cycle_id,
            "nomic.track": record.track.value,
            "nomic.agents": ",".join(record.agents),
            "nomic.outcome": record.outcome.value,
        },
    )
    cycle_span.end(end_time=int(record.finished_at.timestamp() * 1e9))
    bus.emit(
        EventType.CYCLE_FINISHED,
        record.cycle_id,
        outcome=record.outcome.value,
        track=record.track.value,
        duration_s=round(record.duration_s, 3),
        commit_sha=record.commit_sha,
    )
    log.info("cycle %s: %s — %s", record.cycle_id, record.outcome.value, record.reason)
    return record


def run_cycle(
    settings: CycleSettings, cycle_id: str | None = None, run_id: str | None = None
) -> CycleRecord:
    """The plain driver: every phase in order, then finish. No Dagster involved."""
    return finish_cycle(drive_cycle(settings, cycle_id, run_id))


def drive_cycle(
    settings: CycleSettings, cycle_id: str | None = None, run_id: str | None = None
) -> CycleState:
    """Every phase in order; the final state, not yet finished (its worktree still there)."""
    state = start_cycle(settings, cycle_id, run_id)
    for phase in STEPS:
        state = run_phase(phase, state)
    return state
