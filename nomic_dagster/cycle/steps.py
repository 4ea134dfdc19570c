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
from dataclasses import dataclass

from nomic_dagster.agents import Agent, agent_for_role, panel_names
from nomic_dagster.agents.cassette import cassette_writer, record_panel
from nomic_dagster.agents.replay import recorded_recent_cycles, replay_panel, replay_role
from nomic_dagster.core.errors import AgentFault, CycleEnded
from nomic_dagster.core.events import EventType, bus, span
from nomic_dagster.core.phases import PHASES, REEXECUTABLE_OUTCOMES
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
from nomic_dagster.cycle.finish import finish_cycle
from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster.cycle.runtime import CycleRuntime
from nomic_dagster.infra.git import (
    close_workspace,
    open_workspace,
    reattach_workspace,
    reset_to_base,
    restore_changeset,
)
from nomic_dagster.infra.metrics import install as _install_metrics  # noqa: F401  (counts every cycle)
from nomic_dagster.infra.pricing import Budget, budget_from_env
from nomic_dagster.phases.commit import commit_change, commit_message
from nomic_dagster.phases.context import baseline_problem, gather_context
from nomic_dagster.phases.debate import run_debate
from nomic_dagster.phases.design import check_scope, design_change, winning_agent
from nomic_dagster.phases.implement import implement_design
from nomic_dagster.phases.verify import verify_change

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


def budget_limit(settings: CycleSettings) -> float | None:
    return settings.budget_usd if settings.budget_usd is not None else budget_from_env()


@dataclass(frozen=True)
class PhaseRun:
    """What one run of a phase works with: the driver's runtime and the phase's budget,
    which every agent built for the phase draws on."""

    runtime: CycleRuntime
    budget: Budget


def _panel(state: CycleState, run: PhaseRun) -> list[Agent]:
    settings = state.settings
    if settings.replay_from:  # LLM agents answer from the recorded cassette, offline
        panel = replay_panel(settings, run.budget)
    else:
        panel = run.runtime.panel(settings.agents, budget=run.budget)
    return _recorded(state, panel)


def _recorded(state: CycleState, agents: list[Agent]) -> list[Agent]:
    """`agents`, their LLM calls recorded in the cycle's cassette when the settings ask."""
    if state.settings.record_cassette:
        recent = state.context.recent_cycles if state.context else []
        writer = cassette_writer(state.settings, state.cycle_id, state.started_at, recent)
        record_panel(agents, writer)
    return agents


# ---------------------------------------------------------------- phase bodies


def _role(state: CycleState, run: PhaseRun, role: str, panel: list[Agent]) -> Agent | None:
    """The agent the settings name for `role` (judge, designer, implementer); None when
    unset. It may be outside the panel (e.g. codex implements without debating); an LLM
    agent outside it is recorded in the cassette, or answers from it in a replay."""
    name = getattr(state.settings, role).strip()
    if not name:
        return None
    if state.settings.replay_from and all(a.name != name for a in panel):
        return replay_role(role, name, state.settings, run.budget)
    runtime = run.runtime
    agent = agent_for_role(
        role,
        name,
        panel,
        budget=run.budget,
        backends=runtime.backends,
        slots=runtime.provider_slots,
    )
    return agent if agent in panel else _recorded(state, [agent])[0]


def _context(state: CycleState, run: PhaseRun) -> CycleState:
    # The panel: the settings' agents, else $NOMIC_AGENTS, else the offline three (run config
    # wins); resolved once here so that every later phase and the record name the same one.
    agents = panel_names(state.settings.agents, run.runtime.backends)
    check_track_agents(state.settings, agents)  # e.g. track core: Claude only
    state = state.model_copy(
        update={"settings": state.settings.model_copy(update={"agents": agents})}
    )
    panel = _panel(state, run)  # fail on unknown agents before any git work
    for role in ("judge", "designer", "implementer"):
        _role(state, run, role, panel)
    history = CycleHistory(run.runtime.state_dir)
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


def _debate(state: CycleState, run: PhaseRun) -> CycleState:
    assert state.context is not None
    panel = _panel(state, run)
    judge = _role(state, run, "judge", panel)  # None: a failed consensus stays failed
    result = run_debate(
        state.context,
        state.goal,
        panel,
        state.settings.rule,
        state.settings,
        judge=judge,
        breakers=run.runtime.breakers,
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


def _design(state: CycleState, run: PhaseRun) -> CycleState:
    assert state.debate is not None and state.context is not None
    panel = _panel(state, run)
    designer = _role(state, run, "designer", panel)  # None: the winning proposal's agent
    design = design_change(
        state.debate, panel, state.context, state.settings, designer, run.runtime.breakers
    )
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


def _implement(state: CycleState, run: PhaseRun) -> CycleState:
    assert state.debate and state.design and state.workspace and state.context
    panel = _panel(state, run)
    agent = (  # the implementer, else the designer, else the winning proposal's agent
        _role(state, run, "implementer", panel)
        or _role(state, run, "designer", panel)
        or winning_agent(state.debate, panel)
    )
    changes = implement_design(  # ImplementationFailed ends the cycle in run_phase
        state.design, agent, state.workspace, state.context, state.settings, run.runtime.breakers
    )
    return state.model_copy(update={"changeset": changes})


def _verify(state: CycleState, run: PhaseRun) -> CycleState:
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


def _commit(state: CycleState, run: PhaseRun) -> CycleState:
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


STEPS: dict[Phase, Callable[[CycleState, PhaseRun], CycleState]] = {
    Phase.CONTEXT: _context,
    Phase.DEBATE: _debate,
    Phase.DESIGN: _design,
    Phase.IMPLEMENT: _implement,
    Phase.VERIFY: _verify,
    Phase.COMMIT: _commit,
}
if list(STEPS) != list(PHASES):  # one step per phase of the table, in its order
    raise ImportError(f"cycle.steps.STEPS {list(STEPS)} does not match core.phases.PHASES")


def run_phase(phase: Phase, state: CycleState, runtime: CycleRuntime) -> CycleState:
    """Run one phase unless the cycle already ended; never raises for a cycle-level failure.

    Errors sort into outcomes by their family (`core.errors`): a `CycleEnded` ends the cycle
    with its own outcome; an agent's fault ends it implementation_failed in DESIGN (no
    design, nothing to implement) and error elsewhere; anything else is a crash, error.
    """
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
            budget = Budget(budget_limit(state.settings), state.spent_usd)
            new = STEPS[phase](state, PhaseRun(runtime, budget))
        except CycleEnded as exc:
            new = state.end(exc.outcome, str(exc), phase)
        except AgentFault as exc:
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
    # The calls this phase made, as its budget recorded them.
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


def with_earlier_attempts(state: CycleState) -> CycleState:
    """`state`, the input of a phase run again after it failed, charged with what the failed
    attempts spent: their record (the cycle's, in the history) holds all the cycle paid,
    this state only what came before the phase. So the budget spans re-executions."""
    failed = CycleHistory(state_dir(state.settings)).get(state.cycle_id)
    if failed is None or failed.outcome not in REEXECUTABLE_OUTCOMES:
        return state
    before = sum(c.usage.usd for c in state.llm_calls)
    earlier = round(max(0.0, failed.cost_usd - before), 8)
    return state.model_copy(update={"earlier_attempts_usd": earlier})


def run_cycle(
    settings: CycleSettings,
    cycle_id: str | None = None,
    run_id: str | None = None,
    runtime: CycleRuntime | None = None,
) -> CycleRecord:
    """The plain driver: every phase in order, then finish. No Dagster involved."""
    return finish_cycle(drive_cycle(settings, cycle_id, run_id, runtime))


def drive_cycle(
    settings: CycleSettings,
    cycle_id: str | None = None,
    run_id: str | None = None,
    runtime: CycleRuntime | None = None,
) -> CycleState:
    """Every phase in order; the final state, not yet finished (its worktree still there).
    Without `runtime`, one for `settings` (backends from the environment)."""
    runtime = runtime if runtime is not None else CycleRuntime.for_settings(settings)
    state = start_cycle(settings, cycle_id, run_id)
    for phase in PHASES:
        state = run_phase(phase, state, runtime)
    return state
