"""Scripted agents for the approval and re-execution tests: they note every call in
$NOMIC_TEST_CALLS (one line per call), so a test counts debates, designs and implementations
across processes and Dagster runs."""

from __future__ import annotations

import os
from pathlib import Path

from nomic_dagster.agents.base import WorkArea
from nomic_dagster.core.records import Critique, Design, Goal, Proposal, RepoContext, Vote
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.core.usage import LLMCall, Usage
from nomic_dagster.infra.pricing import Budget
from nomic_dagster_tests.support.agents_for_tests import ScriptedAgent, _note


class CountingAgent(ScriptedAgent):
    """A good agent (adds `triple()` to calc/ops.py) that notes each call."""

    name = "counter"

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        _note("propose")
        return super().propose(context, goal)

    def critique(self, proposal: Proposal, context: RepoContext, goal: Goal) -> Critique:
        _note("critique")
        return super().critique(proposal, context, goal)

    def vote(
        self, proposals: list[Proposal], critiques: list[Critique], context: RepoContext, goal: Goal
    ) -> Vote:
        _note("vote")
        return super().vote(proposals, critiques, context, goal)

    def design(self, proposal: Proposal, context: RepoContext, settings: CycleSettings) -> Design:
        _note("design")
        return super().design(proposal, context, settings)

    def implement(self, design: Design, area: WorkArea) -> str:
        _note("implement")
        return super().implement(design, area)


class FlakyImplementer(CountingAgent):
    """Fails its first implementation (a flaky backend), succeeds once the marker file
    $NOMIC_TEST_FLAKY_MARKER exists (the first attempt creates it). Each attempt pays for
    one model call of IMPLEMENT_USD, recorded in the cycle's budget as LLM agents do."""

    name = "flaky"
    IMPLEMENT_USD = 0.01
    budget: Budget | None = None  # the phase's, given by the registry

    def implement(self, design: Design, area: WorkArea) -> str:
        budget = self.budget
        assert budget is not None, "the registry gives a paying agent the phase's budget"
        reservation = budget.reserve(self.IMPLEMENT_USD, f"{self.name} implement")
        budget.settle(reservation, self.IMPLEMENT_USD)
        usage = Usage(input_tokens=100, output_tokens=50, usd=self.IMPLEMENT_USD)
        budget.record(
            LLMCall(agent=self.name, provider="scripted", model="s", step="implement", usage=usage)
        )
        marker = Path(os.environ["NOMIC_TEST_FLAKY_MARKER"])
        if not marker.exists():
            _note("implement")
            marker.write_text("failed once\n")
            raise ConnectionError("the backend dropped the connection")
        return super().implement(design, area)


def calls(path: Path) -> list[str]:
    """The agent calls noted so far, in order."""
    return path.read_text(encoding="utf-8").split() if path.exists() else []
