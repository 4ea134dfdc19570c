"""The optional planning protocol: agents that can propose and rank goals for the planner.

The meta-planner's debate mode (`nomic_dagster.planning.meta_planner`) hands the scan's candidate
goals and a summary of the learning tables to every configured agent that implements
`GoalPlanner` (the LLM agents do; the offline tools do not and are skipped). Each may
propose goals of its own (`plan`), then each votes, with a confidence, on the merged
list (`vote_goals`). Nothing an agent says is trusted: ids are checked, paths normalized,
tracks validated and every goal filtered by its fit to the objective.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import Field

from nomic_dagster.core.records import Record, Track

Impact = Literal["high", "medium", "low"]


class CandidateGoal(Record):
    """A goal on the ballot: from the scan (`source` "scan") or an agent ("agent:<name>")."""

    id: str
    track: Track
    kind: str
    goal: str
    rationale: str = ""
    file_hints: list[str] = Field(default_factory=list)
    scan_score: float = Field(default=0.0, ge=0.0)
    source: str = "scan"


class GoalProposal(Record):
    """A goal an agent proposes (validated by the agent before it is returned)."""

    agent: str
    title: str
    description: str
    track: Track
    kind: str  # a kind the scan knows (lint-fix, add-tests, ...) or the agent's own slug
    file_hints: list[str] = Field(default_factory=list)
    expected_impact: Impact = "medium"
    based_on: str = ""  # the candidate id it refines, if any


class GoalVote(Record):
    """One agent's support for one goal on the ballot."""

    voter: str
    goal_id: str
    confidence: float = Field(ge=0.0, le=1.0)
    reason: str = ""


@runtime_checkable
class GoalPlanner(Protocol):
    """What an agent implements to take part in the planner's debate mode."""

    name: str

    def plan(
        self, candidates: list[CandidateGoal], objective: str, context: str
    ) -> list[GoalProposal]:
        """Goals this agent would add (at most a few), best first; [] when none."""
        ...

    def vote_goals(
        self, candidates: list[CandidateGoal], objective: str, context: str
    ) -> list[GoalVote]:
        """Support for the goals it would work on next, each with a confidence 0..1."""
        ...


__all__ = ["CandidateGoal", "GoalPlanner", "GoalProposal", "GoalVote", "Impact"]
