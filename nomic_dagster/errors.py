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
