"""The one agent protocol every backend implements (offline tools, LLM APIs, CLI agents).

A cycle asks each agent, in order: propose -> vote (the vote-only ballot) -> rounds of
critique the others / revise its own proposal / vote -> the winner (or the `designer`)
designs -> the `implementer` (default: the designer) implements in the worktree. Agents
never commit and are never trusted: the verify phase checks the final diff whatever an
agent says about it.

Two optional extensions are detected at run time, so agents written against the five
methods below keep working: `revise(proposal, critiques, context, goal) -> Proposal | None`
(a proposer answering the critiques of its proposal), and an `earlier_critiques` keyword
of `critique` (the critiques of earlier rounds, for agents that can read them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from nomic_dagster.core.records import Critique, Design, Goal, Proposal, RepoContext, Vote
from nomic_dagster.core.settings import CycleSettings


@dataclass(frozen=True)
class WorkArea:
    """What an implementing agent may use: its worktree, a scratch folder, the settings."""

    worktree: Path
    scratch: Path
    settings: CycleSettings
    context: RepoContext


@runtime_checkable
class Agent(Protocol):
    name: str

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        """Improvements this agent can make here, best first; [] when it has nothing."""
        ...

    def critique(self, proposal: Proposal, context: RepoContext, goal: Goal) -> Critique:
        """Judge another agent's proposal by this agent's own criterion."""
        ...

    def vote(
        self,
        proposals: list[Proposal],
        critiques: list[Critique],
        context: RepoContext,
        goal: Goal,
    ) -> Vote:
        """Pick one proposal. `critiques` is empty in the vote-only round."""
        ...

    def design(self, proposal: Proposal, context: RepoContext, settings: CycleSettings) -> Design:
        """Turn this agent's own winning proposal into a design."""
        ...

    def implement(self, design: Design, area: WorkArea) -> str:
        """Edit files in `area.worktree` to carry out `design`; return a one-line summary.

        Raise `nomic_dagster.core.errors.ImplementationFailed` when the design cannot be done.
        """
        ...
