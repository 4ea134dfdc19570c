"""Scripted agents for gate tests: each misbehaves in one specific way.

They are test doubles of *agents* (the thing under test is the loop's gates), loaded by
import path like any third-party agent: "nomic_dagster_tests.agents_for_tests:Breaker".
Each expects the small repository built by `gate_repo()`.
"""

from __future__ import annotations

import shutil
from typing import ClassVar

from nomic_dagster.agents.base import WorkArea
from nomic_dagster.records import Critique, Design, Goal, Proposal, RepoContext, Vote
from nomic_dagster.settings import CycleSettings

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
