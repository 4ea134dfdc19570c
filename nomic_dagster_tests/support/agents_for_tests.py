"""Scripted agents for gate tests: each misbehaves in one specific way.

They are test doubles of *agents* (the thing under test is the loop's gates), loaded by
import path like any third-party agent: "nomic_dagster_tests.support.agents_for_tests:Breaker".
Each expects the small repository built by `gate_repo()`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import ClassVar

from nomic_dagster.agents.base import WorkArea
from nomic_dagster.core.records import Critique, Design, Goal, Proposal, RepoContext, Vote
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.core.usage import LLMCall, Usage
from nomic_dagster.infra.pricing import Budget

GATE_REPO = {
    "calc/__init__.py": "",
    "calc/ops.py": "def add(a, b):\n    return a + b\n\n\ndef double(x):\n    return 2 * x\n",
    "tests/test_ops.py": (
        "from calc.ops import add, double\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n\n\n"
        "def test_double():\n    assert double(4) == 8\n"
    ),
    "tests/test_more.py": "from calc.ops import add\n\n\ndef test_add_zero():\n    assert add(0, 0) == 0\n",
}


class ScriptedAgent:
    """Proposes one fixed change; votes for its own proposal unless `agreeable`."""

    name: ClassVar[str] = "scripted"
    kind: ClassVar[str] = "scripted"
    files: ClassVar[list[str]] = ["calc/ops.py"]
    agreeable: ClassVar[bool] = True

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        return [
            Proposal(
                id=f"{self.name}:{self.kind}",
                agent=self.name,
                kind=self.kind,
                title=f"{self.name} change",
                description=f"scripted change by {self.name}",
                files=list(self.files),
                benefit=0.5,
                risk=0.1,
                estimated_lines=3,
            )
        ]

    def critique(self, proposal: Proposal, context: RepoContext, goal: Goal) -> Critique:
        return Critique(
            critic=self.name,
            proposal_id=proposal.id,
            criterion="scripted",
            score=0.5,
            stance="neutral",
            comment="-",
        )

    def vote(
        self, proposals: list[Proposal], critiques: list[Critique], context: RepoContext, goal: Goal
    ) -> Vote:
        own = f"{self.name}:{self.kind}"
        ids = sorted(p.id for p in proposals)
        choice = own if (not self.agreeable and own in ids) else ids[0]
        return Vote(voter=self.name, proposal_id=choice, confidence=0.9)

    def design(self, proposal: Proposal, context: RepoContext, settings: CycleSettings) -> Design:
        return Design(
            proposal_id=proposal.id,
            agent=self.name,
            kind=self.kind,
            title=proposal.title,
            files=list(self.files),
            steps=["edit"],
            test_plan="run the tests",
            risk="low",
            rationale="scripted",
        )

    def implement(self, design: Design, area: WorkArea) -> str:
        path = area.worktree / "calc" / "ops.py"
        path.write_text(path.read_text() + "\n\ndef triple(x):\n    return 3 * x\n")
        return "added triple()"


class GoodAgent(ScriptedAgent):
    name = "good"


class SelfishA(ScriptedAgent):
    name = "selfish-a"
    agreeable = False


class SelfishB(ScriptedAgent):
    name = "selfish-b"
    agreeable = False


class SelfishC(ScriptedAgent):
    name = "selfish-c"
    agreeable = False


class ProtectedDesigner(ScriptedAgent):
    """Its design says outright that it edits CI configuration."""

    name = "protected-designer"
    files = ["calc/ops.py", ".github/workflows/ci.yml"]


class WideDesigner(ScriptedAgent):
    """Its design touches more files than the budget."""

    name = "wide-designer"
    files = [f"calc/m{i}.py" for i in range(7)]


class Breaker(ScriptedAgent):
    """Changes behaviour that a test pins: verification must fail."""

    name = "breaker"

    def implement(self, design: Design, area: WorkArea) -> str:
        path = area.worktree / "calc" / "ops.py"
        path.write_text(path.read_text().replace("return a + b", "return a - b"))
        return "changed add()"


class SneakyProtected(ScriptedAgent):
    """Designs an innocent edit, then also writes CI configuration."""

    name = "sneaky"

    def implement(self, design: Design, area: WorkArea) -> str:
        super().implement(design, area)
        ci = area.worktree / ".github" / "workflows" / "ci.yml"
        ci.parent.mkdir(parents=True, exist_ok=True)
        ci.write_text("on: push\n")
        return "added triple() (and CI config)"


class TestDeleter(ScriptedAgent):
    """Designs an innocent edit, then deletes a test file."""

    name = "test-deleter"

    def implement(self, design: Design, area: WorkArea) -> str:
        super().implement(design, area)
        (area.worktree / "tests" / "test_more.py").unlink()
        return "added triple() (and removed a test)"


class Crasher(ScriptedAgent):
    """Raises inside implement: the cycle must end cleanly as implementation_failed."""

    name = "crasher"

    def implement(self, design: Design, area: WorkArea) -> str:
        shutil.rmtree(area.scratch / "does-not-exist")
        return "unreachable"


def spec(cls: type) -> str:
    return f"{__name__}:{cls.__name__}"


class ProposeRaiser(ScriptedAgent):
    """Raises in every propose (an agent whose backend is down); counts its calls."""

    name = "propose-raiser"
    calls: ClassVar[list[str]] = []

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        ProposeRaiser.calls.append("propose")
        raise ConnectionError("backend unreachable")


class GarbageDesigner(ScriptedAgent):
    """Returns something that is not a Design: the design phase crashes (an ERROR event)."""

    name = "garbage-designer"

    def design(self, proposal: Proposal, context: RepoContext, settings: CycleSettings) -> Design:
        return "not a design"  # type: ignore[return-value]


# ---------------------------------------------------------------- state machine tests


def _note(step: str) -> None:
    """Append one line per agent call to $NOMIC_TEST_CALLS (tests count debates, designs...)."""
    path = os.environ.get("NOMIC_TEST_CALLS")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(step + "\n")


class Sleeper(ScriptedAgent):
    """Hangs in `propose` (and in a `sleep` it starts in a session of its own), so DEBATE
    times out; writes both pids to $NOMIC_TEST_PIDS so a test can check they were killed."""

    name = "sleeper"

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        child = subprocess.Popen(["sleep", "300"], start_new_session=True)
        path = os.environ.get("NOMIC_TEST_PIDS")
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(f"{os.getpid()} {child.pid}\n")
        _note("propose")
        time.sleep(300)
        return super().propose(context, goal)


class CrashAgent(ScriptedAgent):
    """A good agent that kills the process running the cycle (pid $CRASH_RUNNER_PID) once,
    in the middle of the step named by $CRASH_AT (design or implement), as a power cut
    would. $CRASH_MARKER records that it happened, so the resumed run goes through."""

    name = "crashy"

    @staticmethod
    def _maybe_crash(step: str) -> None:
        marker = os.environ.get("CRASH_MARKER")
        if os.environ.get("CRASH_AT") != step or not marker or os.path.exists(marker):
            return
        with open(marker, "w", encoding="utf-8") as fh:
            fh.write(step)
        os.kill(int(os.environ["CRASH_RUNNER_PID"]), signal.SIGKILL)
        time.sleep(60)  # the machine's death takes this process down

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        _note("propose")
        return super().propose(context, goal)

    def design(self, proposal: Proposal, context: RepoContext, settings: CycleSettings) -> Design:
        _note("design")
        self._maybe_crash("design")
        return super().design(proposal, context, settings)

    def implement(self, design: Design, area: WorkArea) -> str:
        _note("implement")
        # half of the work, then the crash: a resumed IMPLEMENT must start from a clean tree
        (area.worktree / "half_done.py").write_text("PARTIAL = True\n")
        path = area.worktree / "calc" / "ops.py"
        path.write_text(path.read_text() + "\n# partial edit\n")
        self._maybe_crash("implement")
        path.write_text(path.read_text().replace("\n# partial edit\n", ""))
        (area.worktree / "half_done.py").unlink()
        return super().implement(design, area)


# ---------------------------------------------------------------- learning tests


class SpendingAgent(ScriptedAgent):
    """A good agent that pays for its calls the way LLM agents do: its proposal is one
    priced call recorded in the phase's budget (which the registry gives it), which the cycle store reads back as this agent's tokens and USD."""

    name = "spender"
    kind = "scripted-paid"
    USD: ClassVar[float] = 0.015
    TOKENS: ClassVar[tuple[int, int]] = (1200, 300)
    budget: Budget | None = None

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        budget = self.budget
        assert budget is not None, "the registry gives a paying agent the phase's budget"
        reservation = budget.reserve(self.USD, f"{self.name} propose")
        call = LLMCall(
            agent=self.name,
            provider="scripted",
            model="scripted-1",
            step="propose",
            usage=Usage(input_tokens=self.TOKENS[0], output_tokens=self.TOKENS[1], usd=self.USD),
        )
        budget.settle(reservation, call.usage.usd)
        budget.record(call)
        return super().propose(context, goal)
