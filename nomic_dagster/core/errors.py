"""Exceptions used for control flow, in two families.

- `CycleEnded` and its kinds *end the cycle*: each carries the outcome the cycle ends with
  (bad input, a replay that drifted, an exhausted budget, a design that could not be
  implemented). `run_phase` turns any of them into that outcome; nothing catches them to
  go on. Bad input also carries the fix a person can apply.
- `AgentFault` is *an agent's failure* (its output is unusable, it crashed, its circuit
  breaker is open): the agent drops out of the round, and only a phase that cannot go on
  without it (design, implement) turns it into an outcome.

`infra.breakers.call_agent` is the one place that sorts an agent call's exception into
these families.
"""

from __future__ import annotations

from typing import ClassVar

from nomic_dagster.core.records import Outcome


class NomicError(Exception):
    """Base for errors this package raises on purpose."""


# ---------------------------------------------------------------- errors that end the cycle


class CycleEnded(NomicError):
    """Ends the cycle with `outcome`; the message is the record's reason."""

    outcome: ClassVar[Outcome] = Outcome.ERROR


class BadInput(CycleEnded):
    """The configuration or target repository cannot be used. Nothing was changed."""

    outcome = Outcome.BAD_INPUT

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}")


class ReplayMismatch(BadInput):
    """The replayed cycle asked something its cassette did not record (the prompt drifted,
    or it asked for more calls than were recorded). Nothing was sent anywhere."""


class BudgetExhausted(CycleEnded):
    """A call was not made: its worst case could cross the budget."""

    outcome = Outcome.BUDGET_EXHAUSTED

    def __init__(self, limit_usd: float, spent_usd: float, needed_usd: float, what: str) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.needed_usd = needed_usd
        self.what = what
        super().__init__(
            f"budget exhausted: {what} could cost up to ${needed_usd:.4f}, and ${spent_usd:.4f} "
            f"of the ${limit_usd:.4f} budget is spent or reserved; the call was not made"
        )


class ImplementationFailed(CycleEnded):
    """The winning design could not be turned into a change in the worktree."""

    outcome = Outcome.IMPLEMENTATION_FAILED


# ---------------------------------------------------------------- an agent's failure


class AgentFault(NomicError):
    """An agent could not do one of its steps; the agent, not the cycle, has failed."""

    def __init__(self, agent: str, step: str, detail: str) -> None:
        self.agent = agent
        self.step = step
        self.detail = detail
        super().__init__(f"agent {agent!r} failed to {step}: {detail}")


class AgentError(AgentFault):
    """An agent failed at one of its steps (its output is unusable, its tool crashed, ...)."""


class AgentNotCalled(AgentFault):
    """The agent was not called: its circuit breaker is open."""
