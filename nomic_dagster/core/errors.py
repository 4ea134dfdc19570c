"""Exceptions used for control flow. Each carries a problem and the fix a person can apply."""

from __future__ import annotations


class NomicError(Exception):
    """Base for errors this package raises on purpose."""


class BadInput(NomicError):
    """The configuration or target repository cannot be used. Nothing was changed."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}")


class AgentError(NomicError):
    """An agent failed at one of its steps (its output is unusable, its tool crashed, ...)."""

    def __init__(self, agent: str, step: str, detail: str) -> None:
        self.agent = agent
        self.step = step
        self.detail = detail
        super().__init__(f"agent {agent!r} failed to {step}: {detail}")


class ImplementationFailed(NomicError):
    """The winning design could not be turned into a change in the worktree."""


class BudgetExhausted(NomicError):
    """A call was not made: its worst case could cross the budget."""

    def __init__(self, limit_usd: float, spent_usd: float, needed_usd: float, what: str) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.needed_usd = needed_usd
        self.what = what
        super().__init__(
            f"budget exhausted: {what} could cost up to ${needed_usd:.4f}, and ${spent_usd:.4f} "
            f"of the ${limit_usd:.4f} budget is spent or reserved; the call was not made"
        )
