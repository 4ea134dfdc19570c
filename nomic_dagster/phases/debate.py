"""Phase 1 — debate: every agent proposes, critiques the others, and votes.

Votes are taken twice: once before any critique (the vote-only round, recorded as the
counterfactual) and once after every agent has read every critique. The consensus rule
is applied to the second round; whether debate changed the outcome is recorded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from nomic_dagster.agents import Agent
from nomic_dagster.pricing import BudgetExhausted
from nomic_dagster.records import (
    Consensus,
    ConsensusRule,
    Critique,
    DebateResult,
    Goal,
    Proposal,
    RepoContext,
    Vote,
)
from nomic_dagster.recovery import CircuitOpenError, guarded_call

T = TypeVar("T")


def _attempt(agent: Agent, step: str, failures: dict[str, str], fn: Callable[[], T]) -> T | None:
    """Run one agent step through its circuit breaker; a failing agent drops out of the
    debate instead of ending it, and an agent whose breaker is open is not called at all."""
    try:
        return guarded_call(agent.name, fn)
    except CircuitOpenError as exc:
        failures.setdefault(agent.name, f"{step}: {exc}"[:500])
        return None
    except BudgetExhausted:
        raise  # money, not the agent's fault: the cycle ends with budget_exhausted
    except Exception as exc:  # an agent's bug must not end the cycle
        failures.setdefault(agent.name, f"{step}: {type(exc).__name__}: {exc}"[:500])
        return None


def tally(votes: list[Vote], rule: ConsensusRule) -> tuple[str | None, int, dict[str, int]]:
    """(leader, votes for the leader, tally); ties go to the higher summed confidence, then id."""
    counts = Counter(v.proposal_id for v in votes)
    if not counts:
        return None, 0, {}
    confidence = Counter()
    for v in votes:
        confidence[v.proposal_id] += v.confidence
    leader = min(counts, key=lambda pid: (-counts[pid], -confidence[pid], pid))
    return leader, counts[leader], dict(sorted(counts.items()))


def run_debate(
    context: RepoContext, goal: Goal, panel: list[Agent], rule: ConsensusRule
) -> DebateResult:
    failures: dict[str, str] = {}
    proposals: list[Proposal] = []
    for agent in panel:
        offered = _attempt(agent, "propose", failures, lambda a=agent: a.propose(context, goal))
        if offered:
            # One proposal per agent keeps the debate even; agents list their best first.
            best = offered[0]
            if best.agent != agent.name:
                failures[agent.name] = f"propose: proposal {best.id!r} claims agent {best.agent!r}"
                continue
            proposals.append(best)
    voters = [a for a in panel if a.name not in failures]

    if not proposals:
        return DebateResult(
            proposals=[],
            critiques=[],
            votes=[],
            consensus=Consensus(
                rule=rule,
                reached=False,
                winner_id=None,
                votes_for_winner=0,
                voters=len(voters),
                tally={},
                first_round_winner_id=None,
                changed_by_debate=False,
            ),
            agent_failures=failures,
        )

    ids = {p.id for p in proposals}

    def cast(agent: Agent, critiques: list[Critique]) -> Vote | None:
        vote = _attempt(
            agent, "vote", failures, lambda: agent.vote(proposals, critiques, context, goal)
        )
        if vote is not None and vote.proposal_id not in ids:
            failures[agent.name] = f"vote: unknown proposal {vote.proposal_id!r}"
            return None
        return vote

    first_round = [v for a in voters if (v := cast(a, [])) is not None]
    first_round = [v.model_copy(update={"round": 0}) for v in first_round]

    critiques: list[Critique] = []
    for agent in voters:
        for p in proposals:
            if p.agent == agent.name:
                continue
            c = _attempt(
                agent, "critique", failures, lambda a=agent, p=p: a.critique(p, context, goal)
            )
            if c is not None:
                critiques.append(c)

    voters = [a for a in voters if a.name not in failures]
    final_round = [v for a in voters if (v := cast(a, critiques)) is not None]
    final_round = [v.model_copy(update={"round": 1}) for v in final_round]

    first_winner, _, _ = tally(first_round, rule)
    winner, support, counts = tally(final_round, rule)
    reached = rule.threshold_met(support, len(final_round))
    return DebateResult(
        proposals=proposals,
        critiques=critiques,
        votes=first_round + final_round,
        consensus=Consensus(
            rule=rule,
            reached=reached,
            winner_id=winner if reached else None,
            votes_for_winner=support,
            voters=len(final_round),
            tally=counts,
            first_round_winner_id=first_winner,
            changed_by_debate=winner != first_winner,
        ),
        agent_failures=failures,
    )
