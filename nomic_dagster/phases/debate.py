"""Phase 1 — debate: every agent proposes, critiques the others, may revise, and votes.

The protocol (`settings.critique_rounds`, `early_stop`, `judge`, `quorum`):

- Proposals: each agent offers its best proposal (one per agent keeps the debate even).
- Round 0, the vote-only ballot: everyone votes before any critique. It is recorded as the
  counterfactual ("what voting alone would have chosen"), never used to decide.
- Rounds 1..critique_rounds: every agent critiques the others' *current* proposals, seeing
  the earlier rounds' critiques of each (agents whose `critique` takes `earlier_critiques`);
  every proposer may then revise its proposal in light of this round's critiques of it (the
  optional protocol method `revise`, found with getattr so agents without it keep working;
  a revision keeps the proposal's id, bumps `revision` and is recorded); then everyone
  votes again, seeing every critique so far.
- Early stop: after a round whose leader equals the previous round's, with no voter that
  changed its choice and no proposal revised (a revised proposal deserves a critique round
  of its own), the remaining rounds are skipped.
- The winner is decided on the final round: the leader has the most votes, a tie goes to
  the higher summed confidence, then to the id; the consensus rule is applied to the vote
  *counts* (confidence breaks ties but cannot outvote a head count, so one confident agent
  cannot overrule two). The confidence-weighted tally is recorded beside it.
- Judge: when set and the panel reaches no consensus, the judge (built like any agent, it
  does not propose) votes among the tied leaders, or else among every proposal that got a
  vote, and its choice wins. What it decided, and why it was asked, is recorded.
- Failures: an agent that fails (or whose circuit breaker is open) drops out and the debate
  goes on while a quorum remains: fewer than `quorum` voters in a round end the debate
  with no consensus and a reason saying so. The quorum is capped at the number of agents
  that entered the debate with a proposal round behind them (the panel less those that
  failed to propose), so one-agent panels, and panels whose other members could not even
  propose, still decide as before; it guards against a debate that loses its voters
  midway. A judge cannot rescue a lost quorum.

`DebateResult.rounds` holds every ballot (votes, tally, weighted tally, leader, flips,
agreement, revisions); `DebateResult.votes` holds round 0 and the final round, as before.
`Consensus.changed_by_debate` says whether the proposal the debate settled on (the winner,
else the final leader) differs from the vote-only leader.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from nomic_dagster.agents import Agent, build_agent
from nomic_dagster.core.errors import AgentFault
from nomic_dagster.core.events import report_progress
from nomic_dagster.core.records import (
    Consensus,
    ConsensusRule,
    Critique,
    DebateResult,
    DebateRound,
    Goal,
    JudgeDecision,
    Proposal,
    ProposalRevision,
    RepoContext,
    Vote,
)
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.infra.breakers import BreakerRegistry, call_agent

T = TypeVar("T")

# The fields of a proposal a revision may change (id, agent and kind stay: a revision
# refines a proposal, it does not replace it with another kind of change).
REVISABLE = ("title", "description", "files", "evidence", "benefit", "risk", "estimated_lines")


def _attempt(
    breakers: BreakerRegistry,
    agent: Agent,
    step: str,
    failures: dict[str, str],
    fn: Callable[[], T],
) -> T | None:
    """Run one agent step through its circuit breaker; a failing agent drops out of the
    debate instead of ending it, and an agent whose breaker is open is not called at all.
    What ends the cycle (money, a replay that drifted) is not the agent's fault: it
    propagates."""
    report_progress(f"asking {agent.name} to {step}")
    try:
        return call_agent(breakers, agent.name, step, fn)
    except AgentFault as fault:
        failures.setdefault(agent.name, f"{step}: {fault.detail}"[:500])
        return None


def tally(votes: list[Vote], rule: ConsensusRule) -> tuple[str | None, int, dict[str, int]]:
    """(leader, votes for the leader, tally); ties go to the higher summed confidence, then id."""
    counts = Counter(v.proposal_id for v in votes)
    if not counts:
        return None, 0, {}
    confidence = weighted_tally(votes)
    leader = min(counts, key=lambda pid: (-counts[pid], -confidence[pid], pid))
    return leader, counts[leader], dict(sorted(counts.items()))


def weighted_tally(votes: list[Vote]) -> dict[str, float]:
    """Summed confidence per proposal id."""
    weights: dict[str, float] = {}
    for v in votes:
        weights[v.proposal_id] = round(weights.get(v.proposal_id, 0.0) + v.confidence, 6)
    return dict(sorted(weights.items()))


def _takes(method: Callable[..., Any], parameter: str) -> bool:
    """Whether `method` accepts the keyword `parameter` (optional protocol extensions)."""
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return parameter in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _changed_fields(before: Proposal, after: Proposal) -> list[str]:
    return [f for f in REVISABLE if getattr(before, f) != getattr(after, f)]


class _Debate:
    """One debate's mutable state; `run_debate` is the entry point."""

    def __init__(
        self,
        context: RepoContext,
        goal: Goal,
        panel: list[Agent],
        rule: ConsensusRule,
        settings: CycleSettings,
        breakers: BreakerRegistry,
    ) -> None:
        self.breakers = breakers
        self.context = context
        self.goal = goal
        self.panel = panel
        self.rule = rule
        self.settings = settings
        self.quorum = min(settings.quorum, len(panel))  # capped again after the proposals
        self.failures: dict[str, str] = {}
        self.proposals: dict[str, Proposal] = {}  # id -> current revision, in proposal order
        self.critiques: list[Critique] = []
        self.rounds: list[DebateRound] = []

    # ------------------------------------------------------------ steps

    def active(self) -> list[Agent]:
        return [a for a in self.panel if a.name not in self.failures]

    def propose(self) -> None:
        for agent in self.panel:
            offered = _attempt(
                self.breakers,
                agent,
                "propose",
                self.failures,
                lambda a=agent: a.propose(self.context, self.goal),
            )
            if offered:
                # One proposal per agent keeps the debate even; agents list their best first.
                best = offered[0]
                if best.agent != agent.name:
                    self.failures[agent.name] = (
                        f"propose: proposal {best.id!r} claims agent {best.agent!r}"
                    )
                    continue
                if best.id in self.proposals:
                    self.failures[agent.name] = f"propose: proposal id {best.id!r} is taken"
                    continue
                self.proposals[best.id] = best

    def cast(self, agent: Agent, ballot: list[Proposal], critiques: list[Critique]) -> Vote | None:
        vote = _attempt(
            self.breakers,
            agent,
            "vote",
            self.failures,
            lambda: agent.vote(ballot, critiques, self.context, self.goal),
        )
        if vote is not None and vote.proposal_id not in {p.id for p in ballot}:
            self.failures.setdefault(agent.name, f"vote: unknown proposal {vote.proposal_id!r}")
            return None
        return vote

    def critique_round(self, n: int) -> list[Critique]:
        given: list[Critique] = []
        for agent in self.active():
            for p in list(self.proposals.values()):
                if p.agent == agent.name or agent.name in self.failures:
                    continue
                earlier = [c for c in self.critiques if c.proposal_id == p.id]
                if _takes(agent.critique, "earlier_critiques"):
                    call = lambda a=agent, p=p, e=earlier: a.critique(  # noqa: E731
                        p, self.context, self.goal, earlier_critiques=e
                    )
                else:
                    call = lambda a=agent, p=p: a.critique(p, self.context, self.goal)  # noqa: E731
                c = _attempt(self.breakers, agent, "critique", self.failures, call)
                if c is None:
                    continue
                if c.proposal_id != p.id:
                    self.failures.setdefault(
                        agent.name, f"critique: judged {c.proposal_id!r}, was asked {p.id!r}"
                    )
                    continue
                given.append(c.model_copy(update={"round": n, "revision": p.revision}))
        self.critiques.extend(given)
        return given

    def revise(self, n: int, given: list[Critique]) -> list[ProposalRevision]:
        revisions: list[ProposalRevision] = []
        for agent in self.active():
            revise = getattr(agent, "revise", None)
            if not callable(revise):
                continue  # an agent without `revise` keeps its proposal as it is
            for p in [p for p in self.proposals.values() if p.agent == agent.name]:
                about = [c for c in given if c.proposal_id == p.id]
                if not about:
                    continue  # nothing to answer
                new = _attempt(
                    self.breakers,
                    agent,
                    "revise",
                    self.failures,
                    lambda r=revise, p=p, a=about: r(p, a, self.context, self.goal),
                )
                if new is None:
                    continue
                if not isinstance(new, Proposal) or new.agent != agent.name:
                    claimed = getattr(new, "agent", type(new).__name__)
                    self.failures.setdefault(
                        agent.name, f"revise: the revision of {p.id!r} claims agent {claimed!r}"
                    )
                    continue
                changed = _changed_fields(p, new)
                if not changed:
                    continue
                # The id, agent and kind are the debate's, not the reviser's to change.
                revised = new.model_copy(
                    update={
                        "id": p.id,
                        "agent": p.agent,
                        "kind": p.kind,
                        "revision": p.revision + 1,
                    }
                )
                self.proposals[p.id] = revised
                revisions.append(
                    ProposalRevision(
                        round=n,
                        proposal_id=p.id,
                        agent=agent.name,
                        revision=revised.revision,
                        changed=changed,
                        note=revised.revision_note[:2000],
                        previous=p,
                        revised=revised,
                    )
                )
        return revisions

    def ballot(
        self,
        n: int,
        failed_before: set[str],
        critiques: int = 0,
        revisions: list[ProposalRevision] | None = None,
    ) -> DebateRound:
        """Everyone still in votes on the current proposals, seeing every critique so far;
        `failed_before`: who had failed when the round began (to name who dropped out)."""
        ballot = list(self.proposals.values())
        seen = list(self.critiques)
        votes = [
            v.model_copy(update={"round": n})
            for a in self.active()
            if (v := self.cast(a, ballot, seen)) is not None
        ]
        leader, support, counts = tally(votes, self.rule)
        previous = {v.voter: v.proposal_id for v in self.rounds[-1].votes} if self.rounds else {}
        flips = [
            v.voter for v in votes if v.voter in previous and previous[v.voter] != v.proposal_id
        ]
        dropped = sorted(
            a.name for a in self.panel if a.name in self.failures and a.name not in failed_before
        )
        record = DebateRound(
            round=n,
            votes=votes,
            tally=counts,
            weighted_tally=weighted_tally(votes),
            leader=leader,
            flips=flips,
            agreement=round(support / len(votes), 4) if votes else 0.0,
            critiques=critiques,
            revisions=revisions or [],
            dropped=dropped,
        )
        self.rounds.append(record)
        return record

    # ------------------------------------------------------------ the protocol

    def run(self, judge: Agent | None) -> DebateResult:
        self.propose()
        if not self.proposals:
            return DebateResult(
                proposals=[],
                critiques=[],
                votes=[],
                consensus=Consensus(
                    rule=self.rule,
                    reached=False,
                    winner_id=None,
                    votes_for_winner=0,
                    voters=len(self.active()),
                    tally={},
                    vote_only_winner_id=None,
                    changed_by_debate=False,
                ),
                agent_failures=self.failures,
            )

        self.quorum = min(self.settings.quorum, len(self.active()))
        lost_quorum = ""
        early_stopped_after: int | None = None
        rounds_wanted = self.settings.critique_rounds
        last = self.ballot(0, set(self.failures))
        if len(last.votes) < self.quorum:
            lost_quorum = self._quorum_reason(last)
        else:
            for n in range(1, rounds_wanted + 1):
                failed_before = set(self.failures)
                given = self.critique_round(n)
                revisions = self.revise(n, given)
                before = last
                last = self.ballot(n, failed_before, len(given), revisions)
                if len(last.votes) < self.quorum:
                    lost_quorum = self._quorum_reason(last)
                    break
                stable = last.leader == before.leader and not last.flips and not revisions
                if self.settings.early_stop and stable and n < rounds_wanted:
                    early_stopped_after = n
                    break
        return self._result(last, lost_quorum, early_stopped_after, judge)

    def _quorum_reason(self, last: DebateRound) -> str:
        return (
            f"only {len(last.votes)} voter(s) remained in round {last.round}, fewer than the "
            f"quorum of {self.quorum}; dropped out: "
            + (", ".join(f"{k} ({v})" for k, v in sorted(self.failures.items())) or "none")
        )[:1000]

    def _result(
        self,
        final: DebateRound,
        lost_quorum: str,
        early_stopped_after: int | None,
        judge: Agent | None,
    ) -> DebateResult:
        vote_only = self.rounds[0]
        _, vote_only_support, _ = tally(vote_only.votes, self.rule)
        leader, support, counts = tally(final.votes, self.rule)
        reached = not lost_quorum and self.rule.threshold_met(support, len(final.votes))
        winner = leader if reached else None
        reason = lost_quorum
        decision: JudgeDecision | None = None
        if not reached and not lost_quorum and judge is not None and final.votes:
            decision = self._judge(judge, counts, final)
            if decision.choice is not None:
                reached, winner = True, decision.choice
            else:
                reason = (
                    f"no proposal reached {self.rule.value} ({support}/{len(final.votes)} votes; "
                    f"tally {counts}) and the judge {decision.judge} failed: {decision.error}"
                )[:1000]
        settled = winner if reached else leader
        votes = vote_only.votes + (final.votes if final is not vote_only else [])
        return DebateResult(
            proposals=list(self.proposals.values()),
            critiques=self.critiques,
            votes=votes,
            consensus=Consensus(
                rule=self.rule,
                reached=reached,
                winner_id=winner,
                votes_for_winner=counts.get(winner, 0) if winner else support,
                voters=len(final.votes),
                tally=counts,
                vote_only_winner_id=vote_only.leader,
                changed_by_debate=settled != vote_only.leader,
                vote_only_reached=self.rule.threshold_met(vote_only_support, len(vote_only.votes)),
                weighted_tally=final.weighted_tally,
                early_stopped_after=early_stopped_after,
                judge=decision,
                reason=reason,
            ),
            agent_failures=self.failures,
            rounds=self.rounds,
        )

    def _judge(self, judge: Agent, counts: dict[str, int], final: DebateRound) -> JudgeDecision:
        top = max(counts.values())
        tied = sorted(pid for pid, n in counts.items() if n == top)
        why = "tie" if len(tied) > 1 else "no_consensus"
        candidates = tied if len(tied) > 1 else sorted(counts)
        ballot = [p for p in self.proposals.values() if p.id in candidates]
        failures: dict[str, str] = {}  # the judge's own: it is not a member of the panel
        vote = _attempt(
            self.breakers,
            judge,
            "judge",
            failures,
            lambda: judge.vote(ballot, list(self.critiques), self.context, self.goal),
        )
        decision = JudgeDecision(judge=judge.name, why=why, candidates=candidates)
        if vote is None:
            return decision.model_copy(update={"error": failures.get(judge.name, "no vote")})
        if vote.proposal_id not in candidates:
            return decision.model_copy(
                update={
                    "error": f"voted for {vote.proposal_id!r}, not one of {', '.join(candidates)}"
                }
            )
        return decision.model_copy(
            update={
                "choice": vote.proposal_id,
                "confidence": vote.confidence,
                "reason": vote.reason[:1000],
            }
        )


# ---------------------------------------------------------------- reporting


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rounds_markdown(result: DebateResult) -> str:
    """A markdown table, one row per ballot: votes, leader, flips, agreement, revisions."""
    if not result.rounds:
        return "no ballot (no proposals)"
    rows = [
        "| round | votes (voter → proposal, confidence) | leader | flips | agreement | revisions |",
        "|---|---|---|---|---|---|",
    ]
    for r in result.rounds:
        votes = "; ".join(f"{v.voter} → {v.proposal_id} ({v.confidence:.2f})" for v in r.votes)
        revised = "; ".join(
            f"{x.proposal_id} r{x.revision}: {', '.join(x.changed)}" for x in r.revisions
        )
        dropped = f" (dropped: {', '.join(r.dropped)})" if r.dropped else ""
        label = "0 (vote-only)" if r.round == 0 else str(r.round)
        rows.append(
            f"| {label} | {_cell(votes or 'none') + dropped} | {_cell(r.leader or '-')} | "
            f"{_cell(', '.join(r.flips) or '-')} | {r.agreement:.0%} | {_cell(revised or '-')} |"
        )
    c = result.consensus
    notes = []
    if c.early_stopped_after is not None:
        notes.append(f"Stopped early after round {c.early_stopped_after}: the leader was stable.")
    if c.judge is not None:
        j = c.judge
        notes.append(
            f"Judge {j.judge} ({j.why.replace('_', ' ')} among {', '.join(j.candidates)}): "
            + (
                f"chose {j.choice} ({j.confidence:.2f}): {j.reason}"
                if j.choice
                else f"failed: {j.error}"
            )
        )
    if c.reason:
        notes.append(c.reason)
    return "\n".join(rows) + ("\n\n" + "\n\n".join(_cell(n) for n in notes) if notes else "")


def counterfactual_markdown(result: DebateResult) -> str:
    """What the vote-only ballot alone would have decided, beside what the debate decided."""
    c = result.consensus
    if not result.rounds:
        return "no ballot (no proposals)"
    vote_only = result.rounds[0]
    alone = (
        f"{c.vote_only_winner_id} ({vote_only.tally.get(c.vote_only_winner_id or '', 0)}/"
        f"{len(vote_only.votes)} votes, {'meets' if c.vote_only_reached else 'misses'} "
        f"{c.rule.value})"
    )
    decided = (
        f"{c.winner_id} ({c.votes_for_winner}/{c.voters} votes"
        + (f", by the judge {c.judge.judge}" if c.judge and c.judge.choice else "")
        + ")"
        if c.reached
        else "no consensus"
    )
    verdict = "**changed** the outcome" if c.changed_by_debate else "kept the vote-only leader"
    return (
        f"Vote-only ballot: {alone}. After {len(result.rounds) - 1} critique round(s): "
        f"{decided}. The debate {verdict}."
    )


def build_judge(settings: CycleSettings, context: RepoContext) -> Agent | None:
    """The judge named in the settings, built like any agent (BadInput for an unknown name);
    an LLM judge draws on the cycle's budget."""
    if not settings.judge.strip():
        return None
    return build_agent(settings.judge.strip())


def run_debate(
    context: RepoContext,
    goal: Goal,
    panel: list[Agent],
    rule: ConsensusRule,
    settings: CycleSettings | None = None,
    *,
    judge: Agent | None = None,
    breakers: BreakerRegistry | None = None,
) -> DebateResult:
    """The debate among `panel` (see the module docstring). Without `settings` the protocol
    runs with the settings' defaults; `judge` overrides `settings.judge`. Every agent call
    goes through its breaker in `breakers` (the driver's; else breakers of this debate's
    own)."""
    settings = settings if settings is not None else CycleSettings()
    if judge is None:
        judge = build_judge(settings, context)
    breakers = breakers if breakers is not None else BreakerRegistry()
    return _Debate(context, goal, panel, rule, settings, breakers).run(judge)
