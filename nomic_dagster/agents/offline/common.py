"""Shared debate behaviour of the built-in offline agents.

Each offline agent is a real tool (ruff, a test generator, a dead-code analyser). What
they share is how they take part in a debate: every agent judges proposals by its own
criterion (benefit, risk or size), votes once by that criterion alone (the vote-only
round) and again after every critique round, weighing the critiques it has read. All of it
is arithmetic over the evidence in the proposals, so a debate is deterministic for the same
repository. They never revise a proposal (no `revise` method): a tool's proposal is what
the tool found, and critiques cannot change that; only their votes move.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

from nomic_dagster.agents.base import WorkArea
from nomic_dagster.core.records import Critique, Design, Goal, Proposal, RepoContext, Vote
from nomic_dagster.core.settings import CycleSettings

Criterion = Literal["benefit", "risk", "size"]

# Words in a goal that say which kind of improvement it asks for.
GOAL_KEYWORDS: dict[str, tuple[str, ...]] = {
    "lint-fix": ("lint", "style", "format", "ruff", "pep8", "tidy", "clean"),
    "add-tests": ("test", "coverage", "qa", "verif", "regression", "characteri"),
    "remove-dead-code": ("dead", "unused", "unreachable", "simplif", "remove", "prune", "clean"),
}


def goal_fit(goal: Goal, kind: str) -> float:
    """0..1: how directly the goal's words ask for this kind of improvement."""
    text = goal.text.lower()
    words = GOAL_KEYWORDS.get(kind, ())
    hits = sum(1 for w in words if w in text)
    return min(1.0, 0.5 * hits)


def criterion_score(criterion: Criterion, proposal: Proposal) -> float:
    """0..1, higher is better for the proposal, by one criterion."""
    if criterion == "benefit":
        return proposal.benefit
    if criterion == "risk":
        return 1.0 - proposal.risk
    # size: a small diff is easy to review and easy to revert
    return 1.0 / (1.0 + proposal.estimated_lines / 80.0)


def _stance(score: float) -> Literal["support", "neutral", "oppose"]:
    if score >= 0.6:
        return "support"
    if score < 0.35:
        return "oppose"
    return "neutral"


class OfflineAgent(ABC):
    """Base for the built-in tool agents; subclasses find and make one kind of improvement."""

    name: ClassVar[str]
    kind: ClassVar[str]
    criterion: ClassVar[Criterion]
    # How much a goal that names this kind raises a proposal's score in a vote.
    GOAL_WEIGHT: ClassVar[float] = 0.25

    @abstractmethod
    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]: ...

    @abstractmethod
    def implement(self, design: Design, area: WorkArea) -> str: ...

    @abstractmethod
    def plan_steps(self, proposal: Proposal) -> list[str]:
        """The concrete steps this agent will take for its own proposal."""

    def make_proposal(
        self,
        *,
        title: str,
        description: str,
        files: list[str],
        evidence: list[str],
        benefit: float,
        risk: float,
        estimated_lines: int,
    ) -> Proposal:
        """This agent's one proposal: its id is "<name>:<kind>", unique within a debate."""
        return Proposal(
            id=f"{self.name}:{self.kind}",
            agent=self.name,
            kind=self.kind,
            title=title,
            description=description,
            files=files,
            evidence=evidence,
            benefit=benefit,
            risk=risk,
            estimated_lines=estimated_lines,
        )

    # ------------------------------------------------------------ debate

    def critique(self, proposal: Proposal, context: RepoContext, goal: Goal) -> Critique:
        score = criterion_score(self.criterion, proposal)
        explain = {
            "benefit": f"expected benefit {proposal.benefit:.2f}",
            "risk": f"risk {proposal.risk:.2f}",
            "size": f"about {proposal.estimated_lines} changed lines",
        }[self.criterion]
        evidence = f"; evidence: {proposal.evidence[0]}" if proposal.evidence else ""
        return Critique(
            critic=self.name,
            proposal_id=proposal.id,
            criterion=self.criterion,
            score=round(score, 4),
            stance=_stance(score),
            comment=f"judged by {self.criterion}: {explain} across {len(proposal.files)} file(s){evidence}",
        )

    def vote(
        self,
        proposals: list[Proposal],
        critiques: list[Critique],
        context: RepoContext,
        goal: Goal,
    ) -> Vote:
        """Score every proposal; in the critique round the panel's critiques count as much as
        this agent's own criterion, so agents with different criteria can converge."""
        if not proposals:
            raise ValueError("nothing to vote on")
        scored: list[tuple[float, str]] = []
        for p in proposals:
            own = criterion_score(self.criterion, p)
            peer = [c.score for c in critiques if c.proposal_id == p.id]
            base = (own + sum(peer) / len(peer)) / 2 if peer else own
            scored.append((base + self.GOAL_WEIGHT * goal_fit(goal, p.kind), p.id))
        # Highest score wins; equal scores go to the lexicographically first id (deterministic).
        scored.sort(key=lambda s: (-s[0], s[1]))
        best_score, best_id = scored[0]
        runner_up = scored[1][0] if len(scored) > 1 else 0.0
        confidence = max(0.05, min(1.0, 0.5 + (best_score - runner_up)))
        return Vote(
            voter=self.name,
            proposal_id=best_id,
            confidence=round(confidence, 4),
            round=1 if critiques else 0,
            reason=f"best by {self.criterion}{' and the critiques' if critiques else ''}: "
            f"{best_score:.3f} vs next {runner_up:.3f}",
        )

    def design(self, proposal: Proposal, context: RepoContext, settings: CycleSettings) -> Design:
        risk: Literal["low", "medium", "high"] = (
            "low" if proposal.risk < 0.25 else "medium" if proposal.risk < 0.6 else "high"
        )
        return Design(
            proposal_id=proposal.id,
            agent=self.name,
            kind=proposal.kind,
            title=proposal.title,
            files=list(proposal.files),
            steps=self.plan_steps(proposal),
            test_plan=f"run `{settings.test_command}` in the worktree; every test must pass, "
            "none may be removed or skipped",
            risk=risk,
            rationale=proposal.description,
        )
