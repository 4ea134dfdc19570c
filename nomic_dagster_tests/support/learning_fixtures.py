"""Builders shared by the learning, planner and autonomy tests.

`debate_state` builds a finished `CycleState` by hand (the debate, design, change and
gates a cycle would have produced) so `record_from_state` can be checked on exact
inputs; `cycle.finish.to_record` turns it into the `CycleRecord` as `finish_cycle` does. The
end-to-end tests run real cycles instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from nomic_dagster.core.records import (
    ChangeSet,
    CommitResult,
    Consensus,
    ConsensusRule,
    Critique,
    CycleRecord,
    DebateResult,
    Design,
    FileChange,
    GateResult,
    Goal,
    Outcome,
    Phase,
    Proposal,
    RepoContext,
    TestInventory,
    Track,
    VerificationReport,
    Vote,
    Workspace,
)
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.core.state import CycleState
from nomic_dagster.cycle.finish import to_record
from nomic_dagster.orchestration.autonomy import PlannerResource
from nomic_dagster.orchestration.resources import NomicResource
from nomic_dagster.planning.cycle_store import (
    AgentContribution,
    NomicCycleRecord,
    PatternReinforcement,
    record_from_state,
)
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RED_TAIL = (
    "F.\n=== short test summary info ===\n"
    "FAILED tests/test_ops.py::test_add - assert -1 == 5\n1 failed, 2 passed in 0.1s\n"
)


def _proposal(agent: str, kind: str, risk: float = 0.1) -> Proposal:
    return Proposal(
        id=f"{agent}:{kind}",
        agent=agent,
        kind=kind,
        title=f"{agent} {kind}",
        description="-",
        files=["calc/ops.py"],
        benefit=0.6,
        risk=risk,
        estimated_lines=4,
    )


def debate_state(
    outcome: Outcome,
    *,
    cycle_id: str = "c1",
    track: Track = Track.QA,
    changed_by_debate: bool = False,
    design_risk: str = "low",
    agent_failures: dict[str, str] | None = None,
    baseline_red: bool = False,
    minutes: int = 0,
) -> tuple[CycleState, CycleRecord]:
    """A cycle on a two-agent panel (alpha proposes lint-fix, beta add-tests) that ended
    with `outcome`; beta wins (alpha in the vote-only round when `changed_by_debate`)."""
    settings = CycleSettings(repo="/srv/target", track=track.value, agents=["alpha", "beta"])
    ws = Workspace(
        cycle_id=cycle_id,
        track=track,
        origin="/srv/target",
        source_repo="/srv/target",
        worktree=f"/state/worktrees/{cycle_id}",
        branch=f"nomic/{track.value}/{cycle_id}",
        base_branch="main",
        base_sha="a" * 40,
        scratch_dir=f"/state/scratch/{cycle_id}",
    )
    baseline = TestInventory(
        command="pytest",
        passed=not baseline_red,
        collected=3,
        exit_code=1 if baseline_red else 0,
        output_tail=RED_TAIL if baseline_red else "3 passed in 0.1s\n",
    )
    ctx = RepoContext(
        root=ws.worktree,
        base_sha=ws.base_sha,
        files=["calc/ops.py"],
        modules=[],
        findings=[],
        tests=baseline,
        churn=[],
        markers=[],
    )
    started = T0 + timedelta(minutes=minutes)
    state = CycleState(
        cycle_id=cycle_id,
        settings=settings,
        goal=Goal(text="Add tests for calc", track=track, source="user"),
        started_at=started,
        workspace=ws,
        context=ctx,
        phase_durations={"context": 1.0},
    )
    if outcome is Outcome.BASELINE_RED:
        return _finish(state.end(outcome, "the target's tests already fail", Phase.CONTEXT))
    alpha, beta = _proposal("alpha", "lint-fix"), _proposal("beta", "add-tests")
    first = alpha.id if changed_by_debate else beta.id
    votes = [
        Vote(voter="alpha", proposal_id=first, confidence=0.8, round=0),
        Vote(voter="beta", proposal_id=first, confidence=0.8, round=0),
        Vote(voter="alpha", proposal_id=beta.id, confidence=0.7, round=1),
        Vote(voter="beta", proposal_id=beta.id, confidence=0.9, round=1),
    ]
    critiques = [
        Critique(
            critic="alpha",
            proposal_id=beta.id,
            criterion="risk",
            score=0.8,
            stance="support",
            comment="-",
        ),
        Critique(
            critic="beta",
            proposal_id=alpha.id,
            criterion="benefit",
            score=0.2,
            stance="oppose",
            comment="-",
        ),
    ]
    reached = outcome is not Outcome.NO_CONSENSUS
    debate = DebateResult(
        proposals=[alpha, beta],
        critiques=critiques,
        votes=votes,
        consensus=Consensus(
            rule=ConsensusRule.TWO_THIRDS,
            reached=reached,
            winner_id=beta.id if reached else None,
            votes_for_winner=2 if reached else 1,
            voters=2,
            tally={beta.id: 2},
            first_round_winner_id=first,
            changed_by_debate=changed_by_debate,
        ),
        agent_failures=agent_failures or {},
    )
    state = state.model_copy(
        update={"debate": debate, "phase_durations": {"context": 1.0, "debate": 0.5}}
    )
    if outcome is Outcome.NO_CONSENSUS:
        return _finish(state.end(outcome, "no proposal reached two_thirds", Phase.DEBATE))
    design = Design(
        proposal_id=beta.id,
        agent="beta",
        kind="add-tests",
        title=beta.title,
        files=["tests/test_calc.py"],
        steps=["write tests"],
        test_plan="pytest",
        risk=design_risk,  # type: ignore[arg-type]
        rationale="-",
    )
    changes = ChangeSet(
        branch=ws.branch,
        base_sha=ws.base_sha,
        tree_sha="b" * 40,
        diff="+def test_x(): ...\n",
        files=[FileChange(path="tests/test_calc.py", status="added", added=12, removed=0)],
        lines_added=12,
        lines_removed=0,
    )
    passed = outcome is Outcome.COMMITTED
    report = VerificationReport(
        passed=passed,
        gates=[
            GateResult(name="compiles", passed=True),
            GateResult(name="tests", passed=passed, detail="" if passed else "1 failed"),
        ],
        tests=TestInventory(
            command="pytest",
            passed=passed,
            collected=4,
            exit_code=0 if passed else 1,
            output_tail="4 passed\n" if passed else RED_TAIL,
        ),
    )
    state = state.model_copy(
        update={
            "design": design,
            "changeset": changes,
            "verification": report,
            "phase_durations": {
                "context": 1.0,
                "debate": 0.5,
                "design": 0.1,
                "implement": 0.3,
                "verify": 2.0,
            },
        }
    )
    if not passed:
        return _finish(state.end(outcome, "failed gates: tests (1 failed)", Phase.VERIFY))
    commit = CommitResult(sha="c" * 40, branch=ws.branch, message="add tests")
    state = state.model_copy(
        update={
            "commit": commit,
            "phase_durations": {**state.phase_durations, "commit": 0.1},
        }
    )
    return _finish(state.end(Outcome.COMMITTED, f"committed on {ws.branch}", Phase.COMMIT))


def _finish(state: CycleState) -> tuple[CycleState, CycleRecord]:
    record = to_record(state)
    return state, record.model_copy(
        update={"finished_at": state.started_at + timedelta(seconds=30)}
    )


def learning_record(outcome: Outcome = Outcome.COMMITTED, **kwargs: object) -> NomicCycleRecord:
    state, record = debate_state(outcome, **kwargs)  # type: ignore[arg-type]
    return record_from_state(state, record, calls=[])


def planted_record(
    cycle_id: str,
    *,
    agent: str = "alpha",
    success: bool = True,
    cost_usd: float = 0.0,
    kind: str = "lint-fix",
    track: Track = Track.DEVELOPER,
    origin: str = "/srv/target",
    minutes: int = 0,
    baseline_failing: list[str] | None = None,
) -> NomicCycleRecord:
    """A minimal learning record: `agent` won and tried a `kind` change."""
    outcome = Outcome.COMMITTED if success else Outcome.VERIFICATION_FAILED
    if baseline_failing:
        outcome = Outcome.BASELINE_RED
    when = T0 + timedelta(minutes=minutes)
    tried = outcome is not Outcome.BASELINE_RED
    return NomicCycleRecord(
        cycle_id=cycle_id,
        track=track,
        origin=origin,
        repo=origin,
        goal=f"goal of {cycle_id}",
        outcome=outcome,
        success=success and tried,
        started_at=when,
        completed_at=when + timedelta(seconds=20),
        duration_seconds=20.0,
        phases_completed=[Phase.CONTEXT] if tried else [],
        topics_debated=[f"goal of {cycle_id}", f"{kind}: a change"],
        consensus_reached=tried,
        winner=f"{agent}:{kind}" if tried else None,
        winner_agent=agent if tried else None,
        winner_kind=kind if tried else None,
        agent_contributions={
            agent: AgentContribution(
                proposals_made=int(tried),
                proposals_won=int(tried),
                votes_cast=int(tried),
                consensus_aligned=int(tried),
                implemented=int(tried),
                verified=int(success and tried),
                committed=int(success and tried),
                failures=int(tried and not success),
                usd=cost_usd,
            )
        },
        pattern_reinforcements=[
            PatternReinforcement(pattern_type=kind, description="-", success=success)
        ]
        if tried
        else [],
        baseline_failing_tests=baseline_failing or [],
        cost_usd=cost_usd,
    )


def resources(state_dir: Path, **planner: object) -> dict[str, object]:
    """Resources for build_defs in learning tests: state in `state_dir`, a fast test command."""
    return {
        "nomic": NomicResource(state_dir=str(state_dir)),
        "planner": PlannerResource(test_command=FAST_TEST_COMMAND, **planner),  # type: ignore[arg-type]
    }
