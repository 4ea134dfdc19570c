"""AutonomousOrchestrator: routing, and a two-subtask goal run in dependency order by a real
daemon draining the runs the orchestrator queued with `dagster job launch`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nomic_dagster.core.records import Track
from nomic_dagster.orchestration.orchestrator import AutonomousOrchestrator, route
from nomic_dagster.planning.decomposer import SubTask
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.dagster_home import DagsterHome
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, make_repo
from nomic_dagster_tests.support.snapshots import nomic_branches


def _sub(title: str, files: list[str] | None = None) -> SubTask:
    return SubTask(id="subtask_1", title=title, description=title, file_scope=files or [])


def test_route_prefers_longest_folder_then_whole_word_keywords() -> None:
    assert route(_sub("whatever", ["docs/deployment/guide.md"])) is Track.SELF_HOSTED
    assert route(_sub("whatever", ["docs/index.md"])) is Track.DEVELOPER
    assert route(_sub("Fix the auth token check")) is Track.SECURITY
    assert route(_sub("Raise test coverage")) is Track.QA
    # "ui" inside "build" and "ci" inside "decision" do not route to SME / QA
    assert route(_sub("build the decision log")) is Track.DEVELOPER


@pytest.mark.slow
def test_two_subtasks_run_in_dependency_order_and_commit(
    tmp_path: Path, launch_home: DagsterHome
) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)

    async def go():
        orch = await AutonomousOrchestrator.create(
            repo=str(repo),
            instance=launch_home.instance,
            cycle_config={
                "agents": [ta.spec(ta.GoodAgent)],
                "test_command": FAST_TEST_COMMAND,
            },
            timeout_s=240,
        )
        return await orch.execute(
            goal="Improve test coverage in debate module",
            tracks=[Track.QA, Track.CORE],
        )

    with launch_home.daemon():
        result = asyncio.run(go())

    first, second = result.subtasks
    assert (first.track, second.track) == (Track.QA, Track.CORE)
    assert second.subtask.dependencies == [first.subtask.id]
    assert [r.status for r in result.subtasks] == ["completed", "completed"], [
        (r.status, r.run_status, r.reason) for r in result.subtasks
    ]
    assert [r.outcome for r in result.subtasks] == ["committed", "committed"]
    assert first.finished_at is not None and second.started_at is not None
    assert second.started_at >= first.finished_at
    assert result.success and result.require_approval is False
    assert sorted(nomic_branches(repo)) == sorted(
        [f"nomic/qa/{first.cycle_id}", f"nomic/core/{second.cycle_id}"]
    )
    assert all(r.commit_sha for r in result.subtasks)


def test_failed_dependency_skips_dependants(tmp_path: Path, launch_home: DagsterHome) -> None:
    """A launch that fails (unknown workspace) fails the first subtask; the second is skipped
    without a run."""

    async def go():
        orch = await AutonomousOrchestrator.create(
            instance=launch_home.instance, workspace=tmp_path / "missing.yaml", timeout_s=60
        )
        return await orch.execute(goal="Improve test coverage in debate module")

    result = asyncio.run(go())
    first, second = result.subtasks
    assert first.status == "failed" and "launch failed" in first.reason
    assert second.status == "skipped" and second.run_id is None
    assert not result.success


def test_agent_decomposition_scans_the_configured_target(launch_home: DagsterHome) -> None:
    orch = asyncio.run(
        AutonomousOrchestrator.create(
            repo="/some/repo",
            instance=launch_home.instance,
            cycle_config={"agents": [ta.spec(ta.GoodAgent)]},
            use_debate_decomposition=True,
        )
    )
    assert orch.decomposer.use_debate
    assert orch.decomposer.scan_settings is not None
    assert orch.decomposer.scan_settings.repo == "/some/repo"
    assert orch.decomposer.scan_settings.agents == [ta.spec(ta.GoodAgent)]
