"""Recovery decisions, backoff and circuit breakers — and breakers wired into real cycles."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from pydantic import ValidationError

from nomic_dagster.core.events import EventType, NomicEvent
from nomic_dagster.core.states import get_state_config
from nomic_dagster.cycle.runtime import CycleRuntime
from nomic_dagster.cycle.steps import run_cycle
from nomic_dagster.drivers.recovery import (
    RecoveryAction,
    RecoveryContext,
    RecoveryDecision,
    RecoveryManager,
    calculate_backoff,
)
from nomic_dagster.infra.breakers import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
)
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import make_repo, settings_for


class FakeClock:
    """An injected clock (the breaker's own parameter), advanced by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def manager(breakers: BreakerRegistry | None = None) -> RecoveryManager:
    return RecoveryManager(breakers or BreakerRegistry(), jitter=False)


# ---------------------------------------------------------------- backoff


def test_backoff_is_exponential_capped_and_jitter_stays_within_a_quarter() -> None:
    assert [calculate_backoff(a, jitter=False) for a in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert calculate_backoff(3, base_delay=5.0, jitter=False) == 20.0
    assert calculate_backoff(30, jitter=False) == 300.0
    assert calculate_backoff(10_000, max_delay=60.0, jitter=False) == 60.0  # no overflow
    assert calculate_backoff(0, jitter=False) == calculate_backoff(1, jitter=False) == 1.0
    for attempt in range(1, 8):
        nominal = calculate_backoff(attempt, base_delay=2.0, jitter=False)
        samples = [calculate_backoff(attempt, base_delay=2.0) for _ in range(200)]
        assert all(0.75 * nominal <= s <= 1.25 * nominal for s in samples)
        assert len(set(samples)) > 1  # jitter actually varies
    assert all(calculate_backoff(20, max_delay=300.0) <= 300.0 for _ in range(200))


# ---------------------------------------------------------------- decision rules


def test_two_open_breakers_pause_for_a_person() -> None:
    registry = BreakerRegistry(threshold=1)
    registry.get_or_create("a").record_failure("x")
    d1 = manager(registry).decide_sync(TimeoutError("slow"), "debate", 0, 3, False)
    assert d1.action is RecoveryAction.RETRY  # one open breaker is not enough to pause
    registry.get_or_create("b").record_failure("x")
    d2 = manager(registry).decide_sync(TimeoutError("slow"), "debate", 0, 3, False)
    assert d2.action is RecoveryAction.PAUSE and d2.requires_human
    assert "a, b" in d2.reason


@pytest.mark.parametrize(
    "error",
    [
        TimeoutError("slow"),
        ConnectionError("down"),
        RuntimeError("rate limit exceeded"),
        RuntimeError("Phase VERIFY timed out after 30s"),  # W3: "timed out" is transient
        RuntimeError("connection reset by peer"),
        "HTTP 503 from the API",
        "429 Too Many Requests",
        RuntimeError("temporary failure in name resolution"),
    ],
)
def test_transient_errors_with_retries_left_retry_with_short_backoff(error: object) -> None:
    d = manager().decide_sync(error, "context", 1, 2, False)  # type: ignore[arg-type]
    assert d.action is RecoveryAction.RETRY and d.target_state == "context"
    assert d.delay_s == 2.0  # attempt 2, base 1 s


def test_non_critical_design_or_implement_failure_skips_the_rest_of_the_cycle() -> None:
    for state in ("design", "implement"):
        d = manager().decide_sync(ValueError("bad"), state, 0, 2, False)
        assert d.action is RecoveryAction.SKIP
        assert d.target_state == "completed" and "nothing is committed" in d.reason


def test_w2_no_decision_ever_targets_commit() -> None:
    """The original skipped VERIFY -> COMMIT (W2). Whatever fails, COMMIT is never a target."""
    registry = BreakerRegistry(threshold=1)
    errors: list[object] = [ValueError("x"), TimeoutError("t"), "429", KeyError("k")]
    states = ["context", "debate", "design", "implement", "verify", "commit", "VERIFY"]
    seen_actions = set()
    for error, state, attempts, max_retries, critical, open_count in itertools.product(
        errors, states, (0, 1, 3), (0, 1, 3), (True, False), (0, 1, 2)
    ):
        registry.clear()
        for i in range(open_count):
            registry.get_or_create(f"agent{i}").record_failure("x")
        d = manager(registry).decide_sync(error, state, attempts, max_retries, critical)  # type: ignore[arg-type]
        seen_actions.add(d.action)
        assert d.target_state != "commit", (error, state, attempts, max_retries, critical)
    assert {RecoveryAction.RETRY, RecoveryAction.SKIP, RecoveryAction.PAUSE} <= seen_actions
    assert RecoveryAction.FAIL in seen_actions

    # verify failing is never skipped to commit: it retries, then pauses or fails
    d = manager().decide_sync(AssertionError("tests fail"), "verify", 0, 3, False)
    assert d.action is RecoveryAction.RETRY and d.target_state == "verify"
    d = manager().decide_sync(AssertionError("tests fail"), "verify", 3, 3, False)
    assert d.action is RecoveryAction.PAUSE and d.requires_human
    # a failed commit is retried from VERIFY: the tree is verified again first
    d = manager().decide_sync(OSError("index.lock exists"), "commit", 0, 1, True)
    assert d.action is RecoveryAction.RETRY and d.target_state == "verify"
    with pytest.raises(ValidationError, match="COMMIT"):
        RecoveryDecision(action=RecoveryAction.SKIP, target_state="COMMIT")


def test_retries_then_fail_or_pause() -> None:
    d = manager().decide_sync(ValueError("bad"), "debate", 0, 1, True)
    assert d.action is RecoveryAction.RETRY and d.delay_s == 5.0  # base 5 s for real errors
    assert manager().decide_sync(ValueError("bad"), "debate", 1, 2, True).delay_s == 10.0
    d = manager().decide_sync(ValueError("bad"), "debate", 1, 1, True)
    assert d.action is RecoveryAction.FAIL and d.target_state == "failed"
    d = manager().decide_sync(ValueError("bad"), "context", 2, 2, False)
    assert d.action is RecoveryAction.PAUSE and d.requires_human


def test_decisions_keep_a_history_and_are_events(events: list[NomicEvent]) -> None:
    m = manager()
    m.decide_sync(TimeoutError("slow"), "context", 0, 2, False, cycle_id="c1")
    m.decide_sync(ValueError("bad"), "debate", 1, 1, True, cycle_id="c1")
    assert [h["decision"]["action"] for h in m.history] == ["retry", "fail"]
    assert m.history[0]["state"] == "context" and m.history[0]["error_type"] == "TimeoutError"
    decided = [e for e in events if e.type is EventType.RECOVERY_DECISION]
    assert [(e.cycle_id, e.data["action"]) for e in decided] == [("c1", "retry"), ("c1", "fail")]


def test_seed_readme_snippets_work_as_written() -> None:
    # Per-agent circuit breaker. Default: 3 failures -> open, 300s reset
    breaker = CircuitBreaker(agent_id="claude", threshold=3)
    assert breaker.state is CircuitState.CLOSED and breaker.reset_timeout_s == 300.0
    # Recovery strategies: RETRY, SKIP, ROLLBACK, RESTART, PAUSE, FAIL
    assert [a.name for a in RecoveryAction] == [
        "RETRY",
        "SKIP",
        "ROLLBACK",
        "RESTART",
        "PAUSE",
        "FAIL",
    ]
    manager = RecoveryManager()
    error = TimeoutError("agent timed out")
    context = {"state": "debate", "attempts": 0, "max_retries": 1, "is_critical": True}

    async def main() -> RecoveryDecision:
        return await manager.decide(error, context)

    decision = asyncio.run(main())
    assert decision.action is RecoveryAction.RETRY and decision.target_state == "debate"
    assert 0.75 <= decision.delay_s <= 1.25
    model = RecoveryContext(state="implement", attempts=1, max_retries=1, is_critical=True)
    assert asyncio.run(manager.decide(ValueError("x"), model)).action is RecoveryAction.FAIL


@pytest.mark.parametrize(
    ("state", "attempts", "action"),
    [
        ("context", 1, RecoveryAction.RETRY),  # 2 retries, not critical
        ("context", 2, RecoveryAction.PAUSE),
        ("debate", 0, RecoveryAction.RETRY),  # 1 retry, critical
        ("debate", 1, RecoveryAction.FAIL),
        ("commit", 1, RecoveryAction.FAIL),  # 1 retry, critical
        ("verify", 2, RecoveryAction.RETRY),  # 3 retries, not critical
        ("verify", 3, RecoveryAction.PAUSE),
    ],
)
def test_decide_takes_retries_and_criticality_from_the_state_table(
    state: str, attempts: int, action: RecoveryAction
) -> None:
    """A context that names only the state (and attempts) gets that state's own limits from
    STATE_CONFIG; before, it got 0 retries and 'not critical' whatever the state."""
    config = get_state_config(state)
    manager = RecoveryManager(BreakerRegistry(), jitter=False)
    decision = asyncio.run(
        manager.decide(ValueError("broken"), {"state": state, "attempts": attempts})
    )
    assert decision.action is action, decision.reason
    (entry,) = manager.history
    assert (entry["max_retries"], entry["is_critical"]) == (config.max_retries, config.is_critical)
    # what the context does give wins over the table
    given = asyncio.run(
        manager.decide(
            ValueError("broken"),
            RecoveryContext(state=state, attempts=attempts, max_retries=9, is_critical=False),
        )
    )
    assert given.action is RecoveryAction.RETRY


# ---------------------------------------------------------------- breakers


def test_breaker_opens_half_opens_for_one_probe_and_closes(events: list[NomicEvent]) -> None:
    clock = FakeClock()
    b = CircuitBreaker("flaky", threshold=3, reset_timeout_s=60, clock=clock)
    b.record_failure("1")
    b.record_success()  # success resets the consecutive count
    b.record_failure("1")
    b.record_failure("2")
    assert b.state is CircuitState.CLOSED and b.allow()
    b.record_failure(ConnectionError("3"))
    assert b.state is CircuitState.OPEN and not b.allow()
    clock.now += 59
    assert not b.allow() and b.retry_in_s() == pytest.approx(1.0)
    clock.now += 1
    assert b.state is CircuitState.HALF_OPEN
    assert b.allow()  # the one probe
    assert not b.allow()  # no second probe while the first is out
    b.record_failure("probe failed")
    assert b.state is CircuitState.OPEN and not b.allow()  # re-opened, wait starts again
    clock.now += 60
    assert b.allow()
    b.record_success()
    assert b.state is CircuitState.CLOSED and b.allow() and b.failures == 0
    kinds = [(e.type, e.data["agent"]) for e in events if e.type.value.startswith("circuit")]
    assert kinds == [
        (EventType.CIRCUIT_OPENED, "flaky"),
        (EventType.CIRCUIT_OPENED, "flaky"),
        (EventType.CIRCUIT_CLOSED, "flaky"),
    ]
    d = b.to_dict()
    assert d["state"] == "closed" and d["total_failures"] == 5 and d["total_successes"] == 2


def test_breaker_call_records_and_refuses() -> None:
    clock = FakeClock()
    b = CircuitBreaker("x", threshold=2, reset_timeout_s=10, clock=clock)

    def boom() -> int:
        raise RuntimeError("no")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            b.call(boom)
    with pytest.raises(CircuitOpenError, match="circuit open for agent 'x'"):
        b.call(lambda: 1)
    clock.now += 10
    with pytest.raises(LookupError):  # a benign exception is the agent answering: success
        b.call(lambda: {}["missing"], benign=(LookupError,))
    assert b.state is CircuitState.CLOSED


def test_registry_and_its_snapshot_cross_processes(tmp_path: Path) -> None:
    clock = FakeClock()
    registry = BreakerRegistry(threshold=2, reset_timeout_s=100, clock=clock)
    a = registry.get_or_create("a")
    assert registry.get_or_create("a") is a
    registry.get_or_create("b", threshold=5)
    assert registry.get("b").threshold == 5  # type: ignore[union-attr]
    a.record_failure("1")
    a.record_failure("2")
    assert [b.agent_id for b in registry.open_breakers()] == ["a"]
    assert registry.to_dict()["a"]["state"] == "open"
    clock.now += 40
    registry.save(tmp_path / "breakers.json")

    other = BreakerRegistry(clock=FakeClock())  # another process: its own clock
    assert other.load(tmp_path / "breakers.json")
    restored = other.get("a")
    assert restored is not None and restored.state is CircuitState.OPEN
    assert restored.retry_in_s() == pytest.approx(60, abs=1)  # the wait carried over
    assert not other.load(tmp_path / "missing.json")

    registry.reset_all()
    assert registry.open_breakers() == [] and a.failures == 0


# ---------------------------------------------------------------- wired into cycles


@pytest.mark.slow
def test_an_agent_failing_three_cycles_is_skipped_while_the_debate_goes_on(
    tmp_path: Path, events: list[NomicEvent]
) -> None:
    ta.ProposeRaiser.calls.clear()
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    settings = settings_for(repo, agents=[ta.spec(ta.GoodAgent), ta.spec(ta.ProposeRaiser)])
    runtime = CycleRuntime.for_settings(settings)  # one driver: its breakers span its cycles
    records = [run_cycle(settings, runtime=runtime) for _ in range(4)]

    assert [r.outcome.value for r in records] == ["committed"] * 4  # the debate went on
    assert len(ta.ProposeRaiser.calls) == 3  # called in cycles 1-3, not in cycle 4
    breaker = runtime.breakers.get("propose-raiser")
    assert breaker is not None and breaker.state is CircuitState.OPEN
    assert runtime.breakers.get("good").state is CircuitState.CLOSED  # type: ignore[union-attr]

    failures = [e for e in events if e.type is EventType.AGENT_FAILURE]
    by_cycle = {e.cycle_id: e.error for e in failures if e.data["agent"] == "propose-raiser"}
    assert "ConnectionError: backend unreachable" in by_cycle[records[0].cycle_id]
    assert "circuit open" in by_cycle[records[3].cycle_id]
    opened = [e for e in events if e.type is EventType.CIRCUIT_OPENED]
    assert [e.data["agent"] for e in opened] == ["propose-raiser"]
