"""The state machine over real repositories and real child processes: the transition
table, the happy path, every gate, the regressions W1/W2/W3 of the original, pause and
resume, stop, callbacks, and the bad-input errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nomic_dagster import (
    STATE_CONFIG,
    VALID_TRANSITIONS,
    BadInput,
    CheckpointError,
    NomicState,
    NomicStateMachine,
    Outcome,
    TransitionError,
    create_nomic_state_machine,
    load_checkpoint,
)
from nomic_dagster.core.events import EventType, NomicEvent, bus
from nomic_dagster.core.records import Phase
from nomic_dagster.core.settings import state_dir
from nomic_dagster.core.state import CycleState
from nomic_dagster.core.states import is_valid_transition, merge_state_config
from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster.cycle.steps import run_phase
from nomic_dagster.drivers.recovery import RecoveryAction, RecoveryDecision
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import make_repo, run_git, settings_for
from nomic_dagster_tests.support.snapshots import checkout_snapshot, nomic_branches, worktrees

S = NomicState
PHASES = ["context", "debate", "design", "implement", "verify", "commit"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target", ta.GATE_REPO)


@pytest.fixture
def events() -> list[NomicEvent]:
    seen: list[NomicEvent] = []
    unsubscribe = bus.subscribe(seen.append)
    yield seen
    unsubscribe()


def machine(
    tmp_path: Path, repo: Path, *agents: type, config: dict | None = None, **kw: Any
) -> NomicStateMachine:
    extra = kw.pop("settings_extra", {})
    return create_nomic_state_machine(
        checkpoint_dir=tmp_path / "checkpoints",
        settings=settings_for(repo, agents=[ta.spec(a) for a in agents], **extra),
        state_config=config,
        max_retry_delay_s=kw.pop("max_retry_delay_s", 0.05),
        **kw,
    )


def path_of(sm: NomicStateMachine) -> list[str]:
    """The states the cycle went through, from its own event log."""
    moves = [e for e in sm.events if e.type is EventType.TRANSITION]
    return [moves[0].data["from_state"]] + [e.data["to_state"] for e in moves]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def assert_clean(repo: Path, keep_branch: str | None = None) -> None:
    assert worktrees(repo) == [str(repo)]
    assert nomic_branches(repo) == ([keep_branch] if keep_branch else [])
    assert list((state_dir() / "worktrees").glob("*")) == []


# ---------------------------------------------------------------- the table


SPEC = {  # aragora-nomic §2.2, typed in again
    "IDLE": "CONTEXT PAUSED",
    "CONTEXT": "DEBATE RECOVERY PAUSED",
    "DEBATE": "DESIGN RECOVERY IDLE PAUSED COMPLETED",
    "DESIGN": "IMPLEMENT RECOVERY DEBATE PAUSED COMPLETED",
    "IMPLEMENT": "VERIFY RECOVERY PAUSED COMPLETED",
    "VERIFY": "COMMIT IMPLEMENT RECOVERY PAUSED",
    "COMMIT": "COMPLETED RECOVERY PAUSED",
    "RECOVERY": "IDLE CONTEXT DEBATE DESIGN IMPLEMENT VERIFY FAILED PAUSED COMPLETED",
    "COMPLETED": "IDLE",
    "FAILED": "IDLE",
    "PAUSED": "IDLE CONTEXT DEBATE DESIGN IMPLEMENT VERIFY COMMIT",
}


def test_transition_table_is_exactly_the_spec() -> None:
    assert {s.name for s in S} == set(SPEC)
    table = {s.name: {t.name for t in targets} for s, targets in VALID_TRANSITIONS.items()}
    assert table == {k: set(v.split()) for k, v in SPEC.items()}
    assert not is_valid_transition(S.RECOVERY, S.COMMIT)
    assert not is_valid_transition("verify", "completed")
    assert is_valid_transition("VERIFY", S.COMMIT)


def test_transition_error_names_both_states_and_the_legal_ones() -> None:
    error = TransitionError(S.RECOVERY, S.COMMIT)
    assert "RECOVERY -> COMMIT" in str(error)
    assert "may go to" in str(error) and "VERIFY" in str(error) and "FAILED" in str(error)
    with pytest.raises(ValueError, match=r"unknown state 'bogus'.*CONTEXT"):
        NomicState.parse("bogus")


def test_state_config_defaults_and_overrides() -> None:
    expected = {  # timeout, retries, critical (aragora-nomic §2.3)
        S.CONTEXT: (1200, 2, False),
        S.DEBATE: (3600, 1, True),
        S.DESIGN: (1800, 2, False),
        S.IMPLEMENT: (2400, 1, True),
        S.VERIFY: (1800, 3, False),
        S.COMMIT: (300, 1, True),
        S.RECOVERY: (300, 0, False),
    }
    for state, (timeout, retries, critical) in expected.items():
        meta = STATE_CONFIG[state]
        assert (meta.timeout_seconds, meta.max_retries, meta.is_critical) == (
            timeout,
            retries,
            critical,
        )
    assert not STATE_CONFIG[S.IDLE].requires_checkpoint
    merged = merge_state_config({"debate": {"timeout_seconds": 2, "max_retries": 0}})
    assert merged[S.DEBATE].timeout_seconds == 2 and merged[S.DEBATE].is_critical
    assert STATE_CONFIG[S.DEBATE].timeout_seconds == 3600  # the defaults are untouched
    with pytest.raises(ValueError, match="unknown state 'debait'"):
        merge_state_config({"debait": {"timeout_seconds": 2}})
    with pytest.raises(ValueError, match=r"unknown setting.*timeout_s'.*timeout_seconds"):
        merge_state_config({"debate": {"timeout_s": 2}})


# ---------------------------------------------------------------- cycles


def test_happy_path_commits_and_checkpoints_every_transition(
    tmp_path: Path, repo: Path, events: list[NomicEvent]
) -> None:
    before = checkout_snapshot(repo)
    sm = machine(tmp_path, repo, ta.GoodAgent)
    record = asyncio.run(sm.run(goal="add a helper"))

    assert record is not None and record.outcome is Outcome.COMMITTED, record
    assert sm.current_state is S.COMPLETED and not sm.running
    assert path_of(sm) == ["idle", *PHASES, "completed"]
    assert run_git(repo, "rev-parse", record.branch).strip() == record.commit_sha
    assert checkout_snapshot(repo) == before
    assert_clean(repo, keep_branch=record.branch)
    assert CycleHistory(state_dir()).get(record.cycle_id) == record

    ckpt = load_checkpoint(record.cycle_id, tmp_path / "checkpoints")
    assert ckpt.state is S.COMPLETED and ckpt.record == record
    assert ckpt.cycle is not None and ckpt.cycle.debate is not None
    logged = [e.type for e in ckpt.events]
    assert logged[0] is EventType.CYCLE_STARTED and EventType.CYCLE_FINISHED in logged
    assert [e.data["phase"] for e in ckpt.events if e.type is EventType.PHASE_FINISHED] == PHASES
    saved = [e.data["state"] for e in events if e.type is EventType.CHECKPOINT_SAVED]
    for state in [*PHASES, "completed"]:
        assert state in saved

    metrics = sm.get_metrics()
    assert metrics["successful_cycles"] == 1 and metrics["current_state"] == "completed"
    assert set(metrics["state_durations"]) >= set(PHASES)


def test_target_defaults_to_the_repository_of_the_current_directory(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "calc" / "deep").mkdir()
    monkeypatch.chdir(repo / "calc" / "deep")
    sm = create_nomic_state_machine(
        checkpoint_dir=tmp_path / "ckpt",
        settings=settings_for(repo, agents=[ta.spec(ta.GoodAgent)]).model_copy(
            update={"repo": None}
        ),
    )
    record = asyncio.run(sm.run(goal="x"))
    assert record is not None and record.outcome is Outcome.COMMITTED
    assert record.repo == str(repo)


@pytest.mark.parametrize(
    ("agents", "outcome", "last_phase", "final"),
    [
        ((ta.SelfishA, ta.SelfishB, ta.SelfishC), Outcome.NO_CONSENSUS, "debate", "completed"),
        ((ta.ProtectedDesigner,), Outcome.REJECTED_BY_SCOPE, "design", "completed"),
        ((ta.Crasher,), Outcome.IMPLEMENTATION_FAILED, "implement", "completed"),
        ((ta.Breaker,), Outcome.VERIFICATION_FAILED, "verify", "completed"),
        ((ta.TestDeleter,), Outcome.VERIFICATION_FAILED, "verify", "completed"),
    ],
    ids=["no-consensus", "scope", "implement-crash", "breaks-tests", "deletes-test"],
)
def test_a_closed_gate_ends_the_cycle_there(
    tmp_path: Path,
    repo: Path,
    agents: tuple[type, ...],
    outcome: Outcome,
    last_phase: str,
    final: str,
) -> None:
    sm = machine(tmp_path, repo, *agents)
    record = asyncio.run(sm.run(goal="x"))
    assert record is not None and record.outcome is outcome, record.reason
    visited = path_of(sm)
    assert visited[-1] == final and sm.current_state.value == final
    later = PHASES[PHASES.index(last_phase) + 1 :]
    assert last_phase in visited and not set(later) & set(visited), visited
    assert "commit" not in visited and record.commit_sha is None  # W1: never onward
    assert_clean(repo)


def test_baseline_red_and_bad_input_leave_context_through_recovery(tmp_path: Path) -> None:
    files = dict(ta.GATE_REPO)
    files["tests/test_broken.py"] = "def test_broken():\n    assert 1 == 2\n"
    red = make_repo(tmp_path / "red", files)
    sm = machine(tmp_path, red, ta.GoodAgent)
    record = asyncio.run(sm.run(goal="x"))
    assert record is not None and record.outcome is Outcome.BASELINE_RED
    assert path_of(sm) == ["idle", "context", "recovery", "completed"]  # no CONTEXT->COMPLETED edge

    sm = create_nomic_state_machine(
        checkpoint_dir=tmp_path / "checkpoints",
        settings=settings_for(red, agents=["lint-fixer", "gpt-17"]),
    )
    record = asyncio.run(sm.run(goal="x"))
    assert record is not None and record.outcome is Outcome.BAD_INPUT
    assert "unknown agent 'gpt-17'" in record.reason
    assert path_of(sm) == ["idle", "context", "recovery", "failed"]
    assert sm.get_metrics()["failed_cycles"] == 1 and not sm.running
    assert_clean(red)


# ---------------------------------------------------------------- W1: decisions are honoured


def test_w1_handler_returning_completed_after_debate_ends_the_cycle(
    tmp_path: Path, repo: Path
) -> None:
    calls: list[str] = []

    def debate(state: CycleState) -> tuple[NomicState, CycleState]:
        calls.append(state.cycle_id)
        return S.COMPLETED, run_phase(
            Phase.DEBATE, state, sm.runtime
        )  # the built-in step, then "done"

    sm = machine(tmp_path, repo, ta.GoodAgent)
    sm.register_handler("DEBATE", debate)
    record = asyncio.run(sm.run(goal="x"))
    assert record is not None and calls == [record.cycle_id]
    assert path_of(sm) == ["idle", "context", "debate", "completed"]
    assert record.outcome is Outcome.ABANDONED and "DEBATE handler ended" in record.reason
    assert record.proposals == 1  # the debate's result is in the record
    assert_clean(repo)


def test_w1_failed_verification_never_commits_even_if_a_handler_asks(
    tmp_path: Path, repo: Path
) -> None:
    async def verify(state: CycleState) -> tuple[str, CycleState]:
        return "commit", await asyncio.to_thread(run_phase, Phase.VERIFY, state, sm.runtime)

    sm = machine(tmp_path, repo, ta.Breaker)
    sm.register_handler(S.VERIFY, verify)
    with pytest.raises(TransitionError, match="VERIFY -> COMMIT: verification has not passed"):
        asyncio.run(sm.run(goal="x"))
    assert sm.current_state is S.FAILED and not sm.running
    assert "commit" not in path_of(sm)
    assert sm.record is not None and sm.record.outcome is Outcome.VERIFICATION_FAILED
    assert sm.record.commit_sha is None
    assert_clean(repo)


def test_an_illegal_handler_choice_raises_and_the_cycle_ends_cleanly(
    tmp_path: Path, repo: Path
) -> None:
    sm = machine(tmp_path, repo, ta.GoodAgent)
    sm.register_handler("design", lambda state: "verify")
    with pytest.raises(TransitionError, match="DESIGN -> VERIFY: the DESIGN handler chose it"):
        asyncio.run(sm.run(goal="x"))
    assert sm.current_state is S.FAILED
    assert path_of(sm)[-3:] == ["design", "recovery", "failed"]
    ckpt = load_checkpoint(sm.cycle_id, tmp_path / "checkpoints")
    assert ckpt.state is S.FAILED and ckpt.record is not None
    assert ckpt.record.outcome is Outcome.ERROR and "illegal transition" in ckpt.record.reason
    assert_clean(repo)


def test_a_handler_may_send_the_cycle_back_along_a_legal_edge(tmp_path: Path, repo: Path) -> None:
    seen: list[str] = []

    def design(state: CycleState) -> Any:
        seen.append("design")
        if len(seen) == 1:
            return "debate"  # DESIGN -> DEBATE is legal: debate again
        return run_phase(Phase.DESIGN, state, sm.runtime)

    sm = machine(tmp_path, repo, ta.GoodAgent)
    sm.register_handler(S.DESIGN, design)
    record = asyncio.run(sm.run(goal="x"))
    assert record is not None and record.outcome is Outcome.COMMITTED, record.reason
    assert path_of(sm)[:6] == ["idle", "context", "debate", "design", "debate", "design"]
    assert seen == ["design", "design"]


# ---------------------------------------------------------------- W2: recovery ends legally


class SeedRecovery:
    """The original's recovery policy for a non-critical VERIFY: SKIP to the next state
    (which the original mapped to COMMIT, an illegal RECOVERY -> COMMIT, and got stuck)."""

    def decide_sync(
        self, error: Any, state: str, attempts: int, max_retries: int, is_critical: bool
    ):
        return RecoveryDecision(action=RecoveryAction.SKIP, reason=f"skip {state}")


def broken_verify(state: CycleState) -> Any:
    raise RuntimeError("the verifier crashed")


def test_w2_a_skipped_verify_ends_failed_not_parked_in_recovery(tmp_path: Path, repo: Path) -> None:
    sm = machine(tmp_path, repo, ta.GoodAgent, recovery_manager=SeedRecovery())
    sm.register_handler(S.VERIFY, broken_verify)
    record = asyncio.run(sm.run(goal="x"))
    assert record is not None and record.outcome is Outcome.VERIFICATION_FAILED
    assert "never committed" in record.reason
    assert sm.current_state is S.FAILED and not sm.running
    assert path_of(sm)[-3:] == ["verify", "recovery", "failed"]
    assert record.commit_sha is None
    assert_clean(repo)


def test_w2_a_verify_that_keeps_failing_ends_failed_after_its_retries(
    tmp_path: Path, repo: Path, events: list[NomicEvent]
) -> None:
    errors: list[tuple[NomicState, Any]] = []
    sm = machine(tmp_path, repo, ta.GoodAgent, config={"verify": {"is_critical": True}})
    sm.register_handler(S.VERIFY, broken_verify)
    sm.on_error(lambda state, error: errors.append((state, error)))
    record = asyncio.run(sm.run(goal="x"))
    assert record is not None and record.outcome is Outcome.ERROR
    assert "the verifier crashed" in record.reason
    assert sm.current_state is S.FAILED and not sm.running
    visited = path_of(sm)
    assert visited.count("verify") == 4 and visited[-2:] == ["recovery", "failed"]  # 1 + 3 retries
    retries = [e.data for e in events if e.type is EventType.RETRY]
    assert [(r["attempt"], r["max"]) for r in retries] == [(1, 3), (2, 3), (3, 3)]
    assert errors and errors[0][0] is S.VERIFY  # on_error fires once retries are exhausted
    assert "commit" not in visited
    assert_clean(repo)


def test_w2_default_policy_pauses_a_non_critical_failure_for_a_person(
    tmp_path: Path, repo: Path
) -> None:
    sm = machine(tmp_path, repo, ta.GoodAgent, config={"verify": {"max_retries": 1}})
    sm.register_handler(S.VERIFY, broken_verify)
    assert asyncio.run(sm.run(goal="x")) is None  # paused: a person must look
    assert sm.current_state is S.PAUSED and not sm.running
    ckpt = load_checkpoint(sm.cycle_id, tmp_path / "checkpoints")
    assert ckpt.state is S.PAUSED and ckpt.resume_to is S.VERIFY
    asyncio.run(sm.stop("a person gave up"))
    assert sm.current_state is S.IDLE and sm.record is not None
    assert sm.record.outcome is Outcome.ABANDONED and "a person gave up" in sm.record.reason
    with pytest.raises(CheckpointError, match="already ended"):
        asyncio.run(sm.resume_from_checkpoint(sm.cycle_id))
    assert_clean(repo)


class OnceThenFail:
    """A recovery policy: `action` for the first failure, FAIL after that."""

    def __init__(self, action: RecoveryAction) -> None:
        self.action = action
        self.decided: list[str] = []

    def decide_sync(
        self, error: Any, state: str, attempts: int, max_retries: int, is_critical: bool
    ):
        self.decided.append(state)
        action = self.action if len(self.decided) == 1 else RecoveryAction.FAIL
        return RecoveryDecision(action=action, reason=f"policy: {action.value}")


@pytest.mark.parametrize(
    ("action", "failing", "expected"),
    [
        (
            RecoveryAction.ROLLBACK,
            S.VERIFY,
            ["implement", "verify", "recovery", "implement", "verify", "commit", "completed"],
        ),
        (
            RecoveryAction.RESTART,
            S.DESIGN,
            ["design", "recovery", "idle", "context", "debate", "design", "implement"],
        ),
    ],
    ids=["rollback-to-implement", "restart"],
)
def test_rollback_and_restart_go_back_along_legal_edges(
    tmp_path: Path, repo: Path, action: RecoveryAction, failing: NomicState, expected: list[str]
) -> None:
    failures: list[str] = []

    def fails_once(state: CycleState) -> CycleState:
        if not failures:
            failures.append(failing.value)
            raise RuntimeError(f"{failing.value} broke once")
        return run_phase(failing.phase, state, sm.runtime)  # type: ignore[arg-type]

    policy = OnceThenFail(action)
    sm = machine(tmp_path, repo, ta.GoodAgent, recovery_manager=policy)
    sm.register_handler(failing, fails_once)
    record = asyncio.run(sm.run(goal="x"))
    assert record is not None and record.outcome is Outcome.COMMITTED, record.reason
    assert policy.decided == [failing.value]
    visited = path_of(sm)
    start = visited.index(expected[0])
    assert visited[start : start + len(expected)] == expected, visited
    assert run_git(repo, "rev-list", f"main..{record.branch}").split() == [record.commit_sha]
    assert_clean(repo, keep_branch=record.branch)


# ---------------------------------------------------------------- W3: timeouts count


def test_w3_a_phase_that_always_times_out_is_killed_and_fails_after_its_retries(
    tmp_path: Path, repo: Path, events: list[NomicEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = tmp_path / "pids.txt"
    monkeypatch.setenv("NOMIC_TEST_PIDS", str(pids))
    sm = machine(
        tmp_path,
        repo,
        ta.Sleeper,
        config={"debate": {"timeout_seconds": 1.5, "max_retries": 1}},
        max_retry_delay_s=0.1,
    )
    started = time.monotonic()
    record = asyncio.run(sm.run(goal="x"))
    assert time.monotonic() - started < 60
    assert record is not None and record.outcome is Outcome.ERROR
    assert "timed out" in record.reason
    assert sm.current_state is S.FAILED and not sm.running
    mine = [e for e in events if e.cycle_id == record.cycle_id]
    timeouts = [e for e in mine if e.type is EventType.TIMEOUT]
    retries = [e for e in mine if e.type is EventType.RETRY]
    assert len(timeouts) == 2 and all(e.data["state"] == "debate" for e in timeouts)
    assert [(e.data["attempt"], e.data["max"]) for e in retries] == [(1, 1)]
    assert path_of(sm) == [
        "idle", "context", "debate", "recovery", "debate", "recovery", "failed",
    ]  # fmt: skip
    killed = [int(p) for line in pids.read_text().splitlines() for p in line.split()]
    assert len(killed) in (2, 4)  # per attempt that got that far: its process and its `sleep`
    deadline = time.monotonic() + 5
    while any(alive(p) for p in killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in killed if alive(p)], "a timed-out phase left processes running"
    assert_clean(repo)


# ---------------------------------------------------------------- pause, resume, stop


def test_pause_at_a_boundary_then_resume(
    tmp_path: Path, repo: Path, events: list[NomicEvent]
) -> None:
    sm = machine(tmp_path, repo, ta.GoodAgent)
    paused: list[str] = []

    async def pause_on_design(frm: NomicState, to: NomicState, event: NomicEvent) -> None:
        if to is S.DESIGN and not paused:
            paused.append(event.cycle_id or "")
            await sm.pause("a person wants to look at the debate")

    sm.on_transition(pause_on_design)

    async def scenario() -> Any:
        assert await sm.run(goal="x") is None
        assert sm.current_state is S.PAUSED and not sm.running
        ckpt = load_checkpoint(sm.cycle_id, tmp_path / "checkpoints")
        assert ckpt.state is S.PAUSED and ckpt.resume_to is S.DESIGN
        assert (
            ckpt.cycle is not None and ckpt.cycle.debate is not None and ckpt.cycle.design is None
        )
        with pytest.raises(TransitionError, match="paused"):
            await sm.run(goal="another")
        return await sm.resume()

    record = asyncio.run(scenario())
    assert record is not None and record.outcome is Outcome.COMMITTED
    visited = path_of(sm)
    assert visited[:5] == ["idle", "context", "debate", "design", "paused"]
    assert visited[5:] == ["design", "implement", "verify", "commit", "completed"]
    types = [e.type for e in events if e.cycle_id == record.cycle_id]
    assert EventType.PAUSED in types and EventType.RESUMED in types


def test_a_paused_cycle_resumes_in_another_machine_from_its_checkpoint_file(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("NOMIC_TEST_CALLS", str(calls))
    first = machine(tmp_path, repo, ta.CrashAgent)  # no CRASH_AT: a well-behaved agent

    async def pause_after_implement(frm: NomicState, to: NomicState, event: NomicEvent) -> None:
        if to is S.VERIFY:
            await first.pause("review the diff first")

    first.on_transition(pause_after_implement)
    assert asyncio.run(first.run(goal="x")) is None
    cycle_id = first.cycle_id
    assert cycle_id is not None and first.current_state is S.PAUSED

    second = create_nomic_state_machine(checkpoint_dir=tmp_path / "elsewhere")
    path = tmp_path / "checkpoints" / f"checkpoint_{cycle_id}.json"
    record = asyncio.run(second.resume_from_checkpoint(path))
    assert record is not None and record.outcome is Outcome.COMMITTED, record.reason
    assert path_of(second)[-4:] == ["paused", "verify", "commit", "completed"]
    assert calls.read_text().split() == ["propose", "design", "implement"]  # nothing twice
    assert load_checkpoint(path).state is S.COMPLETED  # saved next to the file it came from
    assert not (tmp_path / "elsewhere" / f"checkpoint_{cycle_id}.json").exists()
    assert_clean(repo, keep_branch=record.branch)


def test_stop_kills_the_running_phase_and_ends_the_cycle(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = tmp_path / "pids.txt"
    monkeypatch.setenv("NOMIC_TEST_PIDS", str(pids))
    sm = machine(tmp_path, repo, ta.Sleeper)

    async def scenario() -> Any:
        cycle_id = await sm.start(goal="x")
        assert await sm.start(goal="again") == cycle_id  # a second start is a no-op
        while not pids.exists():
            await asyncio.sleep(0.05)
        await sm.stop("enough")
        return await sm.wait()

    record = asyncio.run(scenario())
    assert record is not None and record.outcome is Outcome.ABANDONED
    assert "stopped: enough" in record.reason
    assert sm.current_state is S.FAILED and not sm.running
    killed = [int(p) for p in pids.read_text().split()]
    deadline = time.monotonic() + 5
    while any(alive(p) for p in killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in killed if alive(p)]
    assert_clean(repo)
    asyncio.run(sm.stop())  # nothing running: nothing happens
    assert sm.current_state is S.FAILED


def test_callbacks_get_three_or_five_arguments_and_cannot_break_the_cycle(
    tmp_path: Path, repo: Path
) -> None:
    short: list[tuple[str, str]] = []
    long: list[tuple[str, str, float, str]] = []
    sm = machine(tmp_path, repo, ta.GoodAgent)
    sm.on_transition(lambda frm, to, event: short.append((frm.value, to.value)))
    sm.on_transition(
        lambda frm, to, event, duration, cycle_id: long.append((frm, to, duration, cycle_id))
    )

    def broken(*args: Any) -> None:
        raise RuntimeError("a broken callback")

    sm.on_transition(broken)
    record = asyncio.run(sm.run(goal="x"))
    assert record is not None and record.outcome is Outcome.COMMITTED
    assert short[0] == ("idle", "context") and short[-1] == ("commit", "completed")
    assert len(long) == len(short) and {c for *_, c in long} == {record.cycle_id}
    assert all(d >= 0 for _, _, d, _ in long)


def test_circuit_breakers_span_phase_processes(
    tmp_path: Path, repo: Path, events: list[NomicEvent]
) -> None:
    """Agents run in a phase's child process; their breakers must still accumulate in the
    machine's process, across phases and cycles."""
    sm = machine(tmp_path, repo, ta.GoodAgent, ta.ProposeRaiser)
    registry = sm.runtime.breakers
    for n in range(1, 4):
        record = asyncio.run(sm.run(goal="x"))
        assert record is not None and record.outcome is Outcome.COMMITTED, record.reason
        breaker = registry.get("propose-raiser")
        assert breaker is not None and breaker.failures == n
    assert breaker.is_open  # three consecutive failures, seen here although they happened there
    opened = [e for e in events if e.type is EventType.CIRCUIT_OPENED]
    assert [e.data["agent"] for e in opened] == ["propose-raiser"]
    assert registry.get("good") is not None and registry.get("good").failures == 0


# ---------------------------------------------------------------- bad input


def test_outside_a_repository_is_bad_input_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    sm = create_nomic_state_machine(checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(BadInput, match="not inside a git repository") as info:
        asyncio.run(sm.run(goal="x"))
    assert "repo=" in info.value.fix
    assert sm.current_state is S.IDLE and list((tmp_path / "ckpt").glob("checkpoint_*")) == []


def test_bad_names_and_folders_are_clear_errors(tmp_path: Path, repo: Path) -> None:
    sm = machine(tmp_path, repo, ta.GoodAgent)
    with pytest.raises(ValueError, match=r"unknown state 'desing'.*DESIGN"):
        sm.register_handler("desing", lambda s: s)
    with pytest.raises(ValueError, match="RECOVERY is not a phase"):
        sm.register_handler(S.RECOVERY, lambda s: s)
    with pytest.raises(ValueError, match="unknown state"):
        machine(tmp_path, repo, ta.GoodAgent, config={"nap": {"timeout_seconds": 1}})
    with pytest.raises(CheckpointError, match="not a valid checkpoint id"):
        asyncio.run(sm.run(goal="x", cycle_id="../escape"))
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    with pytest.raises(CheckpointError, match=r"is not writable.*checkpoint_dir="):
        create_nomic_state_machine(checkpoint_dir=a_file / "checkpoints")
    with pytest.raises(CheckpointError, match="no usable checkpoints"):
        asyncio.run(sm.resume_from_checkpoint("nosuchcycle"))


def test_resuming_a_completed_cycle_is_an_error_that_changes_nothing(
    tmp_path: Path, repo: Path
) -> None:
    sm = machine(tmp_path, repo, ta.GoodAgent)
    record = asyncio.run(sm.run(goal="x"))
    assert record is not None and record.outcome is Outcome.COMMITTED
    ckpt_file = tmp_path / "checkpoints" / f"checkpoint_{record.cycle_id}.json"
    before = (ckpt_file.read_bytes(), checkout_snapshot(repo), nomic_branches(repo))
    again = machine(tmp_path, repo, ta.GoodAgent)
    with pytest.raises(CheckpointError, match=r"already ended \(COMPLETED, outcome committed\)"):
        asyncio.run(again.resume_from_checkpoint(record.cycle_id))
    assert (ckpt_file.read_bytes(), checkout_snapshot(repo), nomic_branches(repo)) == before
    assert again.current_state is S.IDLE


def test_importing_the_package_stays_light() -> None:
    code = (
        "import sys, nomic_dagster\n"
        "assert 'dagster' not in sys.modules, 'dagster imported'\n"
        "assert 'nomic_dagster.drivers.state_machine' not in sys.modules\n"
        "from nomic_dagster import (create_nomic_state_machine, NomicStateMachine, NomicState,\n"
        "    TransitionError, StateMetadata, STATE_CONFIG, NomicLoop, NomicCycleRecord,\n"
        "    RecoveryManager, CircuitBreaker, CheckpointManager, list_checkpoints,\n"
        "    load_checkpoint, load_latest_checkpoint)\n"
        "from nomic_dagster.planning.cycle_store import NomicCycleRecord as StoreRecord\n"
        "assert NomicCycleRecord is StoreRecord\n"
        "assert 'dagster' not in sys.modules, 'dagster imported by the state machine'\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ
    )
    assert res.returncode == 0, res.stderr
