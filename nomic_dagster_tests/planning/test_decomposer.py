"""TaskDecomposer: the reference examples, determinism across hash seeds, the W5 regression."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.planning.decomposer import TaskDecomposer, analyze_task
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, make_repo
from nomic_dagster_tests.support.snapshots import checkout_snapshot, nomic_branches, worktrees


@pytest.mark.parametrize(
    ("goal", "score", "level", "titles"),
    [
        ("Refactor dashboard.tsx and api.py", 5, "medium", ["Api Changes"]),
        (
            "Improve test coverage in debate module",
            7,
            "high",
            ["Test Changes", "Debate Changes"],
        ),
        (
            "Find the highest-impact bug in the codebase",
            7,
            "high",
            ["Analysis & Design", "Core Implementation", "Testing & Integration"],
        ),
    ],
)
def test_reference_examples(goal: str, score: int, level: str, titles: list[str]) -> None:
    d = analyze_task(goal)
    assert (d.complexity_score, d.complexity_level, d.should_decompose) == (score, level, True)
    assert [s.title for s in d.subtasks] == titles
    # ordered: each subtask depends on its predecessor and only on earlier subtasks
    for n, sub in enumerate(d.subtasks):
        earlier = {f"subtask_{i + 1}" for i in range(n)}
        assert sub.id == f"subtask_{n + 1}"
        assert set(sub.dependencies) <= earlier
        assert n == 0 or f"subtask_{n}" in sub.dependencies


def test_file_scope_and_debate_recommendation() -> None:
    d = analyze_task("Refactor dashboard.tsx and api.py")
    assert d.subtasks[0].file_scope == ["api.py"]
    assert not d.recommend_debate  # files named
    assert analyze_task("Improve test coverage in debate module").recommend_debate


def test_w5_small_actionable_goal_is_one_subtask() -> None:
    d = analyze_task("Add retry logic to connectors")
    assert (d.complexity_score, d.complexity_level, d.should_decompose) == (1, "low", False)
    assert len(d.subtasks) == 1
    assert d.subtasks[0].description == "Add retry logic to connectors"
    assert d.subtasks[0].dependencies == []


def test_empty_goal_has_no_subtasks() -> None:
    d = analyze_task("   ")
    assert d.complexity_score == 0 and d.subtasks == []


def test_max_subtasks_caps_concepts() -> None:
    goal = (
        "Improve the database, api, frontend, backend, security and performance of the "
        "server, with documentation"
    )
    d = TaskDecomposer(max_subtasks=3).analyze(goal)
    assert [s.title for s in d.subtasks] == ["Database Changes", "Api Changes", "Frontend Changes"]
    assert d.subtasks[0].estimated_complexity == "high"
    assert d.subtasks[1].estimated_complexity == "medium"


def test_agent_decomposition_without_a_target_scans_the_current_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No scan_settings: the target is the repository the current directory is in (was a
    BadInput at construction); outside any repository the scan says how to name one."""
    decomposer = TaskDecomposer(use_debate=True)  # no target needed to construct it
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInput, match="not inside a git repository"):
        decomposer.analyze("Tidy the calc package")
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    monkeypatch.chdir(repo / "calc")
    monkeypatch.setenv("NOMIC_AGENTS", ta.spec(ta.GoodAgent))
    d = TaskDecomposer(use_debate=True).analyze("Tidy the calc package")
    assert [s.success_criteria["proposal"] for s in d.subtasks] == ["good:scripted"]
    assert d.subtasks[0].file_scope == ["calc/ops.py"]
    assert len(worktrees(repo)) == 1


def test_agent_decomposition_turns_the_agents_scan_into_subtasks(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    agents = [ta.spec(ta.GoodAgent), ta.spec(ta.SelfishA), ta.spec(ta.WideDesigner)]
    settings = CycleSettings(repo=str(repo), agents=agents, test_command=FAST_TEST_COMMAND)
    before = checkout_snapshot(repo)
    d = TaskDecomposer(use_debate=True, scan_settings=settings).analyze("Tidy the calc package")
    assert d.should_decompose and "proposal(s) from the agents' scan" in d.rationale
    assert [s.success_criteria["proposal"] for s in d.subtasks] == [
        "good:scripted",
        "selfish-a:scripted",
        "wide-designer:scripted",
    ]
    # selfish-a touches the same file as good: it waits for it; wide-designer does not
    assert [s.dependencies for s in d.subtasks] == [[], ["subtask_1"], []]
    assert d.subtasks[0].file_scope == ["calc/ops.py"]
    assert checkout_snapshot(repo) == before and nomic_branches(repo) == []
    assert len(worktrees(repo)) == 1  # the scan's worktree is gone


SCRIPT = """
import json
from nomic_dagster.planning.decomposer import analyze_task
goals = [
    "Improve test coverage in debate module",
    "Harden security, storage and observability of the pipeline; add validation and audit",
    "Find the highest-impact bug in the codebase",
]
print(json.dumps([analyze_task(g).model_dump(mode="json") for g in goals]))
"""


@pytest.mark.slow
def test_same_result_under_different_hash_seeds() -> None:
    outputs = []
    for seed in ("1", "12345"):
        res = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.append(json.loads(res.stdout))
    assert outputs[0] == outputs[1]
    titles = [s["title"] for s in outputs[0][1]["subtasks"]]
    assert titles == [
        "Security Changes",
        "Storage Changes",
        "Audit Changes",
        "Pipeline Changes",
        "Validation Changes",
    ]
