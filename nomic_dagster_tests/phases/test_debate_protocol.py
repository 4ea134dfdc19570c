"""The multi-round debate protocol (phases/debate.py): the vote-only ballot, critique rounds
with revisions, early stop, the judge, agent failures and the quorum.

The panels are scripted agents (below; loadable by import path like any third-party agent)
that vote from a script per ballot, so every flip, revision and drop-out is planned; one
test runs claude and gpt through the real SDK clients against the loopback servers.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import dagster as dg
import pytest

from nomic_dagster.agents import build_panel
from nomic_dagster.agents.base import WorkArea
from nomic_dagster.agents.llm.agent import LLMAgent
from nomic_dagster.agents.llm.anthropic import AnthropicAgent
from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.records import (
    ConsensusRule,
    Critique,
    DebateResult,
    Design,
    Goal,
    Outcome,
    Proposal,
    RepoContext,
    Vote,
)
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.cycle.steps import run_cycle
from nomic_dagster.definitions import build_defs
from nomic_dagster.infra.pricing import Budget
from nomic_dagster.orchestration.resources import NomicResource
from nomic_dagster.phases.debate import counterfactual_markdown, rounds_markdown, run_debate
from nomic_dagster_tests.support import llm_scripts as ls
from nomic_dagster_tests.support.agents_for_tests import GATE_REPO
from nomic_dagster_tests.support.fake_llm_servers import FakeAnthropicServer, FakeOpenAIServer
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, build_context, make_repo
from nomic_dagster_tests.support.run_configs import cycle_config

HERE = "nomic_dagster_tests.phases.test_debate_protocol"
GOAL = Goal(text="Add small tested helpers to calc")
Stance = Literal["support", "neutral", "oppose"]


# ---------------------------------------------------------------- scripted agents


class Panelist:
    """Proposes `<name>:change`; votes for `ballots[n]` at its n-th ballot (the last one
    repeats; a bare agent name means that agent's proposal); critiques with `stance`;
    raises at the `fail_at` step's first call. It records what each step showed it."""

    name: str = "panelist"
    ballots: ClassVar[list[str]] = []  # empty: its own proposal
    stance: ClassVar[Stance] = "neutral"
    fail_at: ClassVar[str | None] = None

    def __init__(
        self,
        name: str | None = None,
        ballots: list[str] | None = None,
        *,
        stance: Stance | None = None,
        fail_at: str | None = None,
    ) -> None:
        self.name = name or type(self).name
        self.ballots = list(ballots if ballots is not None else type(self).ballots)
        self.stance = stance or type(self).stance
        self.fail_at = fail_at or type(self).fail_at
        self.calls: Counter[str] = Counter()
        self.earlier_seen: list[tuple[str, list[Critique]]] = []  # critique: earlier critiques
        self.ballots_seen: list[list[Proposal]] = []
        self.critiques_seen: list[list[Critique]] = []

    def _step(self, step: str) -> int:
        n = self.calls[step]
        self.calls[step] += 1
        if step == self.fail_at:
            raise RuntimeError(f"{self.name} broke while asked to {step}")
        return n

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        self._step("propose")
        return [
            Proposal(
                id=f"{self.name}:change",
                agent=self.name,
                kind="change",
                title=f"{self.name}'s change",
                description=f"scripted change by {self.name}",
                files=["calc/ops.py", "tests/test_ops.py"],
                benefit=0.5,
                risk=0.3,
                estimated_lines=12,
            )
        ]

    def critique(
        self,
        proposal: Proposal,
        context: RepoContext,
        goal: Goal,
        earlier_critiques: Sequence[Critique] = (),
    ) -> Critique:
        self._step("critique")
        self.earlier_seen.append((proposal.id, list(earlier_critiques)))
        score = {"support": 0.8, "neutral": 0.5, "oppose": 0.2}[self.stance]
        return Critique(
            critic=self.name,
            proposal_id=proposal.id,
            criterion="scripted",
            score=score,
            stance=self.stance,
            comment=f"{self.name} on {proposal.id} r{proposal.revision}",
        )

    def choose(self, n: int, proposals: list[Proposal]) -> str:
        if not self.ballots:
            return f"{self.name}:change"
        pick = self.ballots[min(n, len(self.ballots) - 1)]
        return pick if ":" in pick else f"{pick}:change"

    def vote(
        self, proposals: list[Proposal], critiques: list[Critique], context: RepoContext, goal: Goal
    ) -> Vote:
        n = self._step("vote")
        self.ballots_seen.append(list(proposals))
        self.critiques_seen.append(list(critiques))
        return Vote(
            voter=self.name, proposal_id=self.choose(n, proposals), confidence=0.8, reason="script"
        )

    def design(self, proposal: Proposal, context: RepoContext, settings: CycleSettings) -> Design:
        return Design(
            proposal_id=proposal.id,
            agent=self.name,
            kind=proposal.kind,
            title=proposal.title,
            files=list(proposal.files),
            steps=["edit"],
            test_plan="run the tests",
            risk="low",
            rationale="scripted",
        )

    def implement(self, design: Design, area: WorkArea) -> str:
        path = area.worktree / "calc" / "ops.py"
        path.write_text(path.read_text() + "\n\ndef triple(x):\n    return 3 * x\n")
        return "added triple()"


class Reviser(Panelist):
    """Answers critiques once: narrows its proposal to one file, lowers its risk, and tries
    to rename its proposal (the debate keeps the id)."""

    def revise(
        self, proposal: Proposal, critiques: list[Critique], context: RepoContext, goal: Goal
    ) -> Proposal | None:
        self._step("revise")
        if proposal.revision:
            return proposal  # nothing more to change: not a revision
        return proposal.model_copy(
            update={
                "id": f"{self.name}:sneaky-new-id",
                "files": ["calc/ops.py"],
                "risk": 0.1,
                "revision_note": f"answered {len(critiques)} critique(s): one file, lower risk",
            }
        )


class RevisionFan(Panelist):
    """Votes for a revised proposal when there is one, else by its script."""

    def choose(self, n: int, proposals: list[Proposal]) -> str:
        revised = [p.id for p in proposals if p.revision > 0]
        return revised[0] if revised else super().choose(n, proposals)


# loadable by import path (judges and cycle panels are built from settings)
class JudgeForB(Panelist):
    name = "judge-b"
    ballots = ["b"]


class JudgeOffBallot(Panelist):
    name = "judge-off"
    ballots = ["nobody"]


class DebaterA(Panelist):
    name = "da"
    ballots = ["da", "db"]


class DebaterB(Panelist):
    name = "db"
    ballots = ["db"]


class DebaterC(Panelist):
    name = "dc"
    ballots = ["dc"]


class QuorumA(Panelist):
    name = "qa"
    ballots = ["qa"]


class QuorumB(Panelist):
    name = "qb"
    ballots = ["qa"]


class QuorumBroken(Panelist):
    name = "qc"
    fail_at = "critique"


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> RepoContext:
    return build_context(make_repo(tmp_path_factory.mktemp("debate") / "target", GATE_REPO))


def debate(
    context: RepoContext,
    panel: list[Panelist],
    rule: ConsensusRule = ConsensusRule.TWO_THIRDS,
    **settings: object,
) -> DebateResult:
    result = run_debate(context, GOAL, list(panel), rule, CycleSettings(**settings))  # type: ignore[arg-type]
    # every result is a storable record, and reads back the same
    assert DebateResult.model_validate_json(result.model_dump_json()) == result
    return result


def choices(result: DebateResult, n: int) -> dict[str, str]:
    return {v.voter: v.proposal_id for v in result.rounds[n].votes}


# ---------------------------------------------------------------- rounds, flips, early stop


def test_two_critique_rounds_record_each_ballot_and_the_flips(context: RepoContext) -> None:
    a = Panelist("a", ["b", "a", "a"])
    b = Panelist("b", ["b", "a", "a"])
    c = Panelist("c", ["c", "c", "a"])
    result = debate(context, [a, b, c])

    assert [r.round for r in result.rounds] == [0, 1, 2]
    assert choices(result, 0) == {"a": "b:change", "b": "b:change", "c": "c:change"}
    assert [r.leader for r in result.rounds] == ["b:change", "a:change", "a:change"]
    assert [r.flips for r in result.rounds] == [[], ["a", "b"], ["c"]]
    assert [r.agreement for r in result.rounds] == [pytest.approx(2 / 3, abs=1e-3)] * 2 + [1.0]
    assert result.rounds[2].tally == {"a:change": 3}
    assert result.rounds[2].weighted_tally == {"a:change": pytest.approx(2.4)}
    assert [r.critiques for r in result.rounds] == [0, 6, 6]

    c_ = result.consensus
    assert c_.reached and c_.winner_id == "a:change" and c_.votes_for_winner == 3
    assert c_.vote_only_winner_id == c_.first_round_winner_id == "b:change"
    assert c_.vote_only_reached  # 2 of 3 meets two thirds: voting alone would have chosen b
    assert c_.changed_by_debate and c_.early_stopped_after is None and c_.judge is None

    # the critiques of every round, labelled; round 2's critics saw round 1's
    assert Counter(x.round for x in result.critiques) == {1: 6, 2: 6}
    seen_in_round_2 = dict(a.earlier_seen[2:])
    assert {x.critic for x in seen_in_round_2["b:change"]} == {"a", "c"}
    assert all(x.round == 1 for x in seen_in_round_2["b:change"])
    assert a.earlier_seen[0][1] == []  # nothing earlier in round 1
    # votes see every critique so far: none in round 0, six in round 1, twelve in round 2
    assert [len(s) for s in a.critiques_seen] == [0, 6, 12]
    # `votes` keeps its old meaning: the vote-only ballot and the final one
    assert [v.round for v in result.votes] == [0, 0, 0, 2, 2, 2]

    table = rounds_markdown(result)
    assert "| 0 (vote-only) | a → b:change (0.80); b → b:change (0.80); c → c:change" in table
    assert "| 1 |" in table and "| a, b |" in table and "| 67% |" in table
    assert "**changed** the outcome" in counterfactual_markdown(result)


def test_early_stop_after_round_1_when_the_leader_is_stable(context: RepoContext) -> None:
    def panel() -> list[Panelist]:
        return [Panelist("a", ["a"]), Panelist("b", ["a"]), Panelist("c", ["c"])]

    stopped = debate(context, panel())
    assert [r.round for r in stopped.rounds] == [0, 1]
    assert stopped.consensus.early_stopped_after == 1
    assert stopped.consensus.reached and stopped.consensus.winner_id == "a:change"
    assert not stopped.consensus.changed_by_debate
    assert {x.round for x in stopped.critiques} == {1}
    assert "Stopped early after round 1" in rounds_markdown(stopped)

    full = debate(context, panel(), early_stop=False)
    assert [r.round for r in full.rounds] == [0, 1, 2]
    assert full.consensus.early_stopped_after is None
    assert full.consensus.winner_id == "a:change"


def test_zero_critique_rounds_is_the_vote_only_ballot(context: RepoContext) -> None:
    panel = [Panelist("a", ["a"]), Panelist("b", ["a"]), Panelist("c", ["c"])]
    result = debate(context, panel, critique_rounds=0)
    assert [r.round for r in result.rounds] == [0]
    assert result.critiques == [] and all(p.calls["critique"] == 0 for p in panel)
    assert [v.round for v in result.votes] == [0, 0, 0]
    c = result.consensus
    assert c.reached and c.winner_id == c.vote_only_winner_id == "a:change"
    assert c.vote_only_reached and not c.changed_by_debate
    assert "After 0 critique round(s)" in counterfactual_markdown(result)


# ---------------------------------------------------------------- revisions


def test_a_revision_is_recorded_critiqued_and_voted_on(context: RepoContext) -> None:
    reviser = Reviser("r", ["r"])
    critic = RevisionFan("k", ["k"], stance="oppose")
    other = RevisionFan("m", ["k"])
    result = debate(context, [reviser, critic, other])

    # round 1: the critiques of r's proposal prompted a revision; the ballot showed it
    revision = result.rounds[1].revisions[0]
    assert revision.proposal_id == "r:change" and revision.agent == "r" and revision.round == 1
    assert revision.revision == 1 and revision.changed == ["files", "risk"]
    assert revision.previous.files == ["calc/ops.py", "tests/test_ops.py"]
    assert revision.revised.files == ["calc/ops.py"] and revision.revised.id == "r:change"
    assert "one file, lower risk" in revision.note
    assert {p.id: p.revision for p in critic.ballots_seen[1]} == {
        "r:change": 1,
        "k:change": 0,
        "m:change": 0,
    }
    assert choices(result, 0) == {"r": "r:change", "k": "k:change", "m": "k:change"}
    assert choices(result, 1) == {"r": "r:change", "k": "r:change", "m": "r:change"}
    # a revision is not stable: round 2 critiqued the revised proposal, which won
    assert result.consensus.early_stopped_after is None
    assert {
        x.revision for x in result.critiques if x.proposal_id == "r:change" and x.round == 2
    } == {1}
    assert result.rounds[2].revisions == []  # the second answer changed nothing
    assert reviser.calls["revise"] == 2  # asked in both rounds (k opposed both times)
    assert result.winner is not None and result.winner.revision == 1
    assert result.winner.files == ["calc/ops.py"]
    assert result.consensus.changed_by_debate  # k led the vote-only ballot
    assert "r:change r1: files, risk" in rounds_markdown(result)


def test_agents_without_revise_keep_their_proposals(context: RepoContext) -> None:
    panel = [Panelist("a", ["a"], stance="oppose"), Panelist("b", ["a"], stance="oppose")]
    result = debate(context, panel)
    assert all(not r.revisions for r in result.rounds)
    assert all(p.revision == 0 for p in result.proposals)


# ---------------------------------------------------------------- the judge


def test_the_judge_breaks_a_tie_when_the_panel_reaches_no_consensus(
    context: RepoContext,
) -> None:
    panel = [Panelist("a", ["a"]), Panelist("b", ["b"])]
    result = debate(context, panel, judge=f"{HERE}:JudgeForB")
    c = result.consensus
    assert c.reached and c.winner_id == "b:change"
    assert c.tally == {"a:change": 1, "b:change": 1} and c.votes_for_winner == 1
    assert c.judge is not None
    assert c.judge.judge == "judge-b" and c.judge.why == "tie"
    assert c.judge.candidates == ["a:change", "b:change"] and c.judge.choice == "b:change"
    # the judge does not propose; the panel's leader (by id, the confidences tie) was a
    assert [p.agent for p in result.proposals] == ["a", "b"]
    assert c.vote_only_winner_id == "a:change" and c.changed_by_debate
    assert "Judge judge-b (tie among a:change, b:change): chose b:change" in rounds_markdown(result)
    assert "by the judge judge-b" in counterfactual_markdown(result)


def test_a_judge_that_picks_off_the_ballot_leaves_no_consensus(context: RepoContext) -> None:
    panel = [Panelist("a", ["a"]), Panelist("b", ["b"])]
    result = debate(context, panel, judge=f"{HERE}:JudgeOffBallot")
    c = result.consensus
    assert not c.reached and c.winner_id is None
    assert c.judge is not None and c.judge.choice is None
    assert "'nobody:change'" in c.judge.error
    assert "the judge judge-off failed" in c.reason and "judge-off" not in result.agent_failures


def test_the_judge_is_not_asked_when_the_panel_agrees(context: RepoContext) -> None:
    judge = Panelist("judge", ["b"])
    panel = [Panelist("a", ["a"]), Panelist("b", ["a"])]
    result = run_debate(context, GOAL, list(panel), ConsensusRule.TWO_THIRDS, judge=judge)
    assert result.consensus.winner_id == "a:change" and result.consensus.judge is None
    assert judge.calls == Counter()


def test_an_unknown_judge_is_bad_input_naming_it(context: RepoContext) -> None:
    with pytest.raises(BadInput) as info:
        debate(context, [Panelist("a")], judge="no-such-agent")
    assert "no-such-agent" in str(info.value)


# ---------------------------------------------------------------- failures and the quorum


def test_an_agent_failing_mid_round_drops_out_and_the_debate_goes_on(
    context: RepoContext,
) -> None:
    broken = Panelist("c", ["c"], fail_at="critique")
    panel = [Panelist("a", ["a"]), Panelist("b", ["a"]), broken]
    result = debate(context, panel)
    assert result.agent_failures["c"].startswith("critique: RuntimeError: c broke")
    assert result.rounds[1].dropped == ["c"] and result.rounds[0].dropped == []
    assert choices(result, 1) == {"a": "a:change", "b": "a:change"}
    assert broken.calls == {"propose": 1, "vote": 1, "critique": 1}  # never asked again
    assert "c:change" in {p.id for p in result.proposals}  # its proposal stays on the ballot
    assert result.consensus.reached and result.consensus.winner_id == "a:change"
    assert result.consensus.voters == 2
    assert "(dropped: c)" in rounds_markdown(result)


def test_losing_the_quorum_ends_the_cycle_with_no_consensus(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "target", GATE_REPO)
    settings = CycleSettings(
        repo=str(repo),
        agents=[f"{HERE}:{a.__name__}" for a in (QuorumA, QuorumB, QuorumBroken)],
        test_command=FAST_TEST_COMMAND,
        quorum=3,
    )
    record = run_cycle(settings)
    assert record.outcome is Outcome.NO_CONSENSUS
    assert "only 2 voter(s) remained in round 1, fewer than the quorum of 3" in record.reason
    assert "qc (critique: RuntimeError" in record.reason


def test_the_quorum_is_capped_at_the_panel_size(context: RepoContext) -> None:
    alone = debate(context, [Panelist("solo")])  # quorum 2 by default, one agent
    assert alone.consensus.reached and alone.consensus.winner_id == "solo:change"
    assert [r.round for r in alone.rounds] == [0, 1]  # nothing to critique: stable at once

    # two agents, one fails its first vote: one voter is below the quorum of two
    pair = debate(context, [Panelist("a", ["a"]), Panelist("b", fail_at="vote")])
    assert not pair.consensus.reached and [r.round for r in pair.rounds] == [0]
    assert "only 1 voter(s) remained in round 0, fewer than the quorum of 2" in (
        pair.consensus.reason
    )
    relaxed = debate(context, [Panelist("a", ["a"]), Panelist("b", fail_at="vote")], quorum=1)
    assert relaxed.consensus.reached and relaxed.consensus.winner_id == "a:change"

    # an agent that could not even propose never entered the debate: it does not count
    absent = debate(context, [Panelist("a", ["a"]), Panelist("b", fail_at="propose")])
    assert absent.consensus.reached and absent.consensus.winner_id == "a:change"
    assert absent.agent_failures["b"].startswith("propose: RuntimeError")


# ---------------------------------------------------------------- Dagster metadata


@pytest.mark.slow
def test_the_debate_op_shows_each_round_and_the_vote_only_counterfactual(
    instance: dg.DagsterInstance, state_dir: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "target", GATE_REPO)
    job = build_defs({"nomic": NomicResource(state_dir=str(state_dir))}).get_job_def("nomic_cycle")
    config = {
        "repo": str(repo),
        "agents": [f"{HERE}:{a.__name__}" for a in (DebaterA, DebaterB, DebaterC)],
        "consensus_rule": "unanimous",
        "test_command": FAST_TEST_COMMAND,
    }
    result = job.execute_in_process(
        instance=instance,
        run_config=cycle_config(**config),
        tags={"nomic/cycle_id": "c-rounds"},
    )
    assert result.success
    assert result.output_for_node("record_cycle_op").outcome is Outcome.NO_CONSENSUS
    (output,) = [
        e
        for e in result.all_events
        if e.event_type_value == "STEP_OUTPUT" and e.step_key == "debate_op"
    ]
    md = output.event_specific_data.metadata  # type: ignore[union-attr]
    rounds = md["rounds"].value
    assert rounds.splitlines()[0].startswith("| round | votes")
    assert "| 0 (vote-only) | da → da:change (0.80); db → db:change (0.80); dc → dc:change" in (
        rounds
    )
    assert (
        "| 1 | da → db:change (0.80); db → db:change (0.80); dc → dc:change (0.80) | db:change | da | 67% |"
        in rounds
    )
    assert md["vote_only_winner"].value == "da:change"
    assert md["changed_by_debate"].value is True
    assert md["weighted_tally"].value == {"db:change": 1.6, "dc:change": 0.8}
    counterfactual = md["vote_only_counterfactual"].value
    assert "Vote-only ballot: da:change (1/3 votes, misses unanimous)" in counterfactual
    assert "After 2 critique round(s): no consensus. The debate **changed** the outcome." in (
        counterfactual
    )


# ---------------------------------------------------------------- stored records


def test_debate_records_stored_before_the_protocol_still_load() -> None:
    old = {
        "proposals": [
            {
                "id": "a:x",
                "agent": "a",
                "kind": "x",
                "title": "t",
                "description": "d",
                "files": ["f.py"],
                "benefit": 0.5,
                "risk": 0.1,
                "estimated_lines": 3,
            }
        ],
        "critiques": [
            {
                "critic": "b",
                "proposal_id": "a:x",
                "criterion": "risk",
                "score": 0.5,
                "stance": "neutral",
                "comment": "-",
            }
        ],
        "votes": [{"voter": "b", "proposal_id": "a:x", "confidence": 0.9, "round": 1}],
        "consensus": {
            "rule": "majority",
            "reached": True,
            "winner_id": "a:x",
            "votes_for_winner": 1,
            "voters": 1,
            "tally": {"a:x": 1},
            "first_round_winner_id": "a:x",
            "changed_by_debate": False,
        },
        "agent_failures": {},
    }
    result = DebateResult.model_validate_json(json.dumps(old))
    assert result.rounds == [] and result.consensus.judge is None
    assert result.consensus.first_round_winner_id == result.consensus.vote_only_winner_id == "a:x"
    assert result.proposals[0].revision == 0 and result.critiques[0].round == 1
    assert rounds_markdown(result) == "no ballot (no proposals)"


# ---------------------------------------------------------------- real SDK clients


def use_servers(
    monkeypatch: pytest.MonkeyPatch, anthropic: FakeAnthropicServer, openai: FakeOpenAIServer
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-debate-protocol")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-debate-protocol-0000")
    monkeypatch.setenv("OPENAI_BASE_URL", openai.base_url)


REVISED_DOCS = {
    "revise": True,
    "answer": "added a doctest so that the test run verifies the docstrings",
    "title": "Add docstrings with doctests",
    "description": "docstrings for add and double, each with a doctest",
    "files": ["calc/ops.py"],
    "evidence": ["calc/ops.py has no docstrings"],
    "benefit": 0.5,
    "risk": 0.05,
    "estimated_lines": 10,
}


@pytest.mark.slow
def test_claude_and_gpt_debate_two_rounds_through_the_real_sdks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llm_env: None
) -> None:
    """gpt flips in round 1 and revises its opposed proposal, so round 2 runs: its prompts
    carry round 1's critiques, and the cached prefix (tools + role + shared context) stays
    byte-identical, so every call after the first reads it from the cache."""
    claude = ls.winning_steps("claude:1", submit_critique=ls.critique(0.3, "oppose"))
    gpt = ls.winning_steps(
        "claude:1",
        submit_proposals=ls.proposals(
            ls.proposal(kind="docs", title="Add docstrings", files=["calc/ops.py"], benefit=0.4)
        ),
        submit_critique=ls.critique(0.8, "support"),
        submit_vote=[ls.vote("gpt:1"), ls.vote("claude:1")],
        submit_revision=REVISED_DOCS,
    )
    context = build_context(make_repo(tmp_path / "target", ls.CALC_REPO))
    with (
        FakeAnthropicServer(ls.anthropic_script(claude)) as anthropic_server,
        FakeOpenAIServer(ls.openai_script(gpt)) as openai_server,
    ):
        use_servers(monkeypatch, anthropic_server, openai_server)
        panel = build_panel(["claude", "gpt"], budget=Budget(None))
        result = run_debate(context, GOAL, panel, ConsensusRule.TWO_THIRDS, CycleSettings())

    c = result.consensus
    assert c.reached and c.winner_id == "claude:1" and c.vote_only_winner_id == "claude:1"
    assert [r.flips for r in result.rounds] == [[], ["gpt"], []]
    assert [len(r.revisions) for r in result.rounds] == [0, 1, 0]
    assert result.rounds[1].revisions[0].revised.title == "Add docstrings with doctests"
    assert anthropic_server.steps() == [
        "submit_proposals",
        "submit_vote",
        "submit_critique",
        "submit_vote",
        "submit_critique",
        "submit_vote",
    ]  # claude's proposal drew only support: nothing to revise, no revise call
    assert openai_server.steps() == [
        "submit_proposals",
        "submit_vote",
        "submit_critique",
        "submit_revision",
        "submit_vote",
        "submit_critique",
        "submit_revision",
        "submit_vote",
    ]

    claude_requests = anthropic_server.api_requests()
    round_1_critique, round_2_critique = claude_requests[2].text(), claude_requests[4].text()
    assert "earlier rounds' critiques" not in round_1_critique
    assert "round 1, claude on gpt:1 (revision 0): oppose" in round_2_critique
    assert (
        '"revision": 1' in round_2_critique and "Add docstrings with doctests" in round_2_critique
    )
    gpt_requests = openai_server.api_requests()
    assert "round 1, gpt on claude:1 (revision 0): support" in gpt_requests[5].text()
    final_vote = gpt_requests[7].text()
    assert "round 1, claude on gpt:1" in final_vote and "round 2, claude on gpt:1" in final_vote

    # the cache marker sits on the shared context, and the cached prefix never changes
    for request in claude_requests:
        role, shared = request.body["system"]
        assert "cache_control" not in role
        assert shared["cache_control"] == {"type": "ephemeral"}
        assert "# Goal\nAdd small tested helpers to calc" in shared["text"]
    assert len({json.dumps([r.body["tools"], r.body["system"]]) for r in claude_requests}) == 1
    assert "submit_revision" in {t["name"] for t in claude_requests[0].body["tools"]}
    assert len({json.dumps(r.body["messages"][0]) for r in gpt_requests}) == 1
    claude_agent = panel[0]
    assert isinstance(claude_agent, LLMAgent)
    first, *later = claude_agent.usage
    assert first.usage.cache_write_tokens > 0
    assert all(x.usage.cache_read_tokens == first.usage.cache_write_tokens for x in later)


def test_nomic_prompt_cache_0_leaves_the_cache_marker_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llm_env: None
) -> None:
    context = build_context(make_repo(tmp_path / "target", ls.CALC_REPO))
    proposal = Proposal(
        id="gpt:1",
        agent="gpt",
        kind="docs",
        title="Add docstrings",
        description="docstrings for calc",
        files=["calc/ops.py"],
        benefit=0.4,
        risk=0.1,
        estimated_lines=6,
    )
    with FakeAnthropicServer(ls.anthropic_script(ls.winning_steps("gpt:1"))) as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-debate-protocol")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("NOMIC_PROMPT_CACHE", "0")
        agent = AnthropicAgent.from_env(budget=Budget(None))
        agent.critique(proposal, context, GOAL)
        agent.vote([proposal], [], context, GOAL)
        monkeypatch.setenv("NOMIC_PROMPT_CACHE", "maybe")
        with pytest.raises(BadInput) as info:
            AnthropicAgent.from_env(budget=Budget(None))
    assert all("cache_control" not in b for r in server.api_requests() for b in r.body["system"])
    assert all(c.usage.cache_read_tokens == c.usage.cache_write_tokens == 0 for c in agent.usage)
    assert "NOMIC_PROMPT_CACHE" in str(info.value) and "set NOMIC_PROMPT_CACHE to 1" in (
        info.value.fix
    )
