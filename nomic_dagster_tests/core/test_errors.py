"""One error taxonomy: errors that end the cycle carry their outcome; agent faults are
another family; `call_agent` is the one place an agent call's exception is sorted."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from nomic_dagster.core.errors import (
    AgentError,
    AgentFault,
    AgentNotCalled,
    BadInput,
    BudgetExhausted,
    CycleEnded,
    ImplementationFailed,
    ReplayMismatch,
)
from nomic_dagster.core.records import Outcome
from nomic_dagster.infra.breakers import BreakerRegistry, call_agent

PACKAGE = Path(__file__).resolve().parents[2] / "nomic_dagster"


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (BadInput("no such repo", "pass --repo"), Outcome.BAD_INPUT),
        (
            ReplayMismatch("the prompt drifted", "replay against the target commit"),
            Outcome.BAD_INPUT,
        ),
        (BudgetExhausted(1.0, 0.9, 0.2, "claude design"), Outcome.BUDGET_EXHAUSTED),
        (ImplementationFailed("the edit does not apply"), Outcome.IMPLEMENTATION_FAILED),
    ],
)
def test_errors_that_end_the_cycle_carry_their_outcome(error: CycleEnded, outcome: Outcome) -> None:
    assert isinstance(error, CycleEnded) and not isinstance(error, AgentFault)
    assert error.outcome is outcome


def test_agent_faults_are_another_family() -> None:
    for fault in (AgentError("gpt", "vote", "garbage"), AgentNotCalled("gpt", "vote", "open")):
        assert isinstance(fault, AgentFault) and not isinstance(fault, CycleEnded)
        assert (fault.agent, fault.step) == ("gpt", "vote")
        assert str(fault).startswith("agent 'gpt' failed to vote: ")


def test_call_agent_sorts_what_an_agent_call_raises() -> None:
    breakers = BreakerRegistry()

    def broken() -> None:
        raise ValueError("not JSON")

    with pytest.raises(AgentError) as crashed:
        call_agent(breakers, "gpt", "propose", broken)
    assert crashed.value.detail == "ValueError: not JSON" and crashed.value.step == "propose"

    def refused() -> None:
        raise BudgetExhausted(1.0, 1.0, 0.1, "gpt propose")

    for _ in range(5):  # what ends the cycle propagates and never counts against the agent
        with pytest.raises(BudgetExhausted):
            call_agent(breakers, "gpt", "propose", refused)
    # (an answer that ends the cycle is the agent answering: its failure streak is over)
    assert breakers.get_or_create("gpt").failures == 0 and not breakers.get_or_create("gpt").is_open

    for _ in range(3):  # three failures in a row: the breaker opens
        with pytest.raises(AgentError):
            call_agent(breakers, "gpt", "propose", broken)
    assert breakers.get_or_create("gpt").is_open
    called: list[str] = []
    with pytest.raises(AgentNotCalled) as skipped:
        call_agent(breakers, "gpt", "vote", lambda: called.append("vote"))
    assert called == [] and "circuit open for agent 'gpt'" in skipped.value.detail
    assert call_agent(breakers, "claude", "vote", lambda: "ok") == "ok"  # its own breaker


def test_no_phase_or_planner_keeps_an_except_ladder_of_its_own() -> None:
    """The debate, design, implement and the planner call agents through `call_agent`; none
    of them catches the breaker's own error or calls a breaker directly any more."""
    for path in [
        PACKAGE / "phases" / "debate.py",
        PACKAGE / "phases" / "design.py",
        PACKAGE / "phases" / "implement.py",
        PACKAGE / "planning" / "meta_planner.py",
    ]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert "call_agent" in names, path
        assert not names & {"CircuitOpenError", "guarded_call", "get_breaker_registry"}, path
