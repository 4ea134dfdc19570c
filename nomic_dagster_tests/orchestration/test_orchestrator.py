"""AutonomousOrchestrator: routing, and a two-subtask goal run in dependency order by a real
daemon draining the runs the orchestrator queued with `dagster job launch`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import dagster as dg
import pytest

from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.records import Track
from nomic_dagster.orchestration.instance import PROJECT_ROOT, isolated_home
from nomic_dagster.orchestration.orchestrator import (
    ORCHESTRATION_TAG,
    AutonomousOrchestrator,
    OrchestrationResult,
    route,
    run_mode,
)
from nomic_dagster.planning.decomposer import SubTask
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.daemon import wait_for_queue_daemon
from nomic_dagster_tests.support.dagster_home import DagsterHome
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, make_repo
from nomic_dagster_tests.support.snapshots import nomic_branches

BIN = Path(sys.executable).parent


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
    instance = launch_home.instance

    async def go():
        orch = await AutonomousOrchestrator.create(
            repo=str(repo),
            instance=instance,
            cycle_config={"agents": [ta.spec(ta.GoodAgent)], "test_command": FAST_TEST_COMMAND},
            timeout_s=600,  # two runs, each a fresh Python process (slow on a busy machine)
        )
        # (not the debate module: track core is Claude only, these agents are not)
        return await orch.execute(
            goal="Improve test coverage in the sdk module", tracks=[Track.QA, Track.DEVELOPER]
        )

    with launch_home.daemon():
        wait_for_queue_daemon(instance)  # the runs are queued, not executed
        result = asyncio.run(go())

    first, second = result.subtasks
    assert (first.track, second.track) == (Track.QA, Track.DEVELOPER)
    assert second.subtask.dependencies == [first.subtask.id]
    assert [r.status for r in result.subtasks] == ["completed", "completed"], [
        (r.status, r.run_status, r.reason) for r in result.subtasks
    ]
    assert [r.outcome for r in result.subtasks] == ["committed", "committed"]
    assert first.finished_at is not None and second.started_at is not None
    assert second.started_at >= first.finished_at
    assert result.success and result.require_approval is False
    assert sorted(nomic_branches(repo)) == sorted(
        [f"nomic/qa/{first.cycle_id}", f"nomic/developer/{second.cycle_id}"]
    )
    assert all(r.commit_sha for r in result.subtasks)
    for r in result.subtasks:  # queued, then started by the daemon
        assert r.run_id is not None
        assert instance.all_logs(r.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED)


def test_failed_dependency_skips_dependants(tmp_path: Path) -> None:
    """A launch that fails (a run config the job refuses: no run is made) fails the first
    subtask; the second is skipped without a run."""
    home = isolated_home(tmp_path / "home")
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    with dg.DagsterInstance.from_config(str(home)) as instance:

        async def go():
            orch = await AutonomousOrchestrator.create(
                repo=str(repo),
                instance=instance,
                cycle_config={"no_such_setting": 1},
                timeout_s=60,
            )
            return await orch.execute(goal="Improve test coverage in debate module")

        result = asyncio.run(go())
    first, second = result.subtasks
    assert first.status == "failed" and "launch failed" in first.reason
    assert second.status == "skipped" and second.run_id is None
    assert not result.success


def test_the_target_is_resolved_at_create(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`create(repo=".")` is the user's repository as an absolute path (it used to reach the
    runs unresolved, and they worked on the nomic_dagster checkout); no repo is the
    repository the current directory is in (it used to be the demo)."""
    home = isolated_home(tmp_path / "home")
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    monkeypatch.chdir(repo / "calc")
    with dg.DagsterInstance.from_config(str(home)) as instance:

        def created(**kwargs: object) -> AutonomousOrchestrator:
            return asyncio.run(AutonomousOrchestrator.create(instance=instance, **kwargs))

        assert created(repo=".").repo == str(repo / "calc")
        assert created(repo="..").repo == str(repo)
        assert created().repo == str(repo)
        assert created(repo="demo").repo == "demo"
        assert created(repo="file:///srv/x.git").repo == "file:///srv/x.git"
        monkeypatch.setenv("NOMIC_REPO", "../calc")
        assert created().repo == str(repo / "calc")  # $NOMIC_REPO, made absolute
        monkeypatch.delenv("NOMIC_REPO")
        monkeypatch.chdir(tmp_path)
        with pytest.raises(BadInput, match="not inside a git repository"):
            created()


def test_without_a_daemon_runs_are_executed_not_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No daemon heartbeat: a queued run would never start, so the subtask's run is executed
    (and commits) instead of waiting for the timeout."""
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))  # the scripted agents' package
    home = isolated_home(tmp_path / "home")
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert run_mode(instance) == "execute"

        async def go():
            orch = await AutonomousOrchestrator.create(
                repo=str(repo),
                instance=instance,
                cycle_config={"agents": [ta.spec(ta.GoodAgent)], "test_command": FAST_TEST_COMMAND},
                timeout_s=300,
            )
            return await orch.execute(goal="Add triple to the calc ops")

        result = asyncio.run(go())
        (sub,) = result.subtasks
        assert (sub.status, sub.outcome) == ("completed", "committed"), sub.reason
        assert result.success and nomic_branches(repo) == [sub.branch]
        assert sub.run_id is not None
        assert not instance.all_logs(sub.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED)
        assert instance.get_run_by_id(sub.run_id).tags[ORCHESTRATION_TAG] == result.orchestration_id


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_executed_run_killed_midway_fails_its_subtask_and_a_timeout_stops_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a daemon the run is a child process: one killed while its run is in flight
    fails the subtask at once (the run would never end); at the timeout the orchestrator
    stops the children still running."""
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))
    sleeper_pids = tmp_path / "pids"  # the sleeper agent hangs in DEBATE
    monkeypatch.setenv("NOMIC_TEST_PIDS", str(sleeper_pids))
    home = isolated_home(tmp_path / "home")
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    config = {"agents": [ta.spec(ta.Sleeper)], "test_command": FAST_TEST_COMMAND}
    with dg.DagsterInstance.from_config(str(home)) as instance:

        async def killed_midway() -> OrchestrationResult:
            orch = await AutonomousOrchestrator.create(
                repo=str(repo), instance=instance, cycle_config=config, timeout_s=300
            )
            task = asyncio.create_task(orch.execute(goal="Add triple to the calc ops"))
            while not task.done():
                started = [
                    e
                    for cycle_id, e in orch._executions.items()
                    if (run := orch._find_run(cycle_id)) is not None
                    and run.status is dg.DagsterRunStatus.STARTED
                ]
                if started:
                    os.killpg(started[0].process.pid, signal.SIGKILL)
                    break
                await asyncio.sleep(0.2)
            return await task

        (sub,) = asyncio.run(killed_midway()).subtasks
        assert sub.status == "failed" and "exited with code -9" in sub.reason, sub.reason
        assert sub.run_status == "STARTED"

        pids: list[int] = []

        async def timed_out() -> OrchestrationResult:
            orch = await AutonomousOrchestrator.create(
                repo=str(repo), instance=instance, cycle_config=config, timeout_s=1
            )
            task = asyncio.create_task(orch.execute(goal="Add triple to the calc ops"))
            while not task.done() and not pids:
                pids.extend(e.process.pid for e in orch._executions.values())
                await asyncio.sleep(0.05)
            return await task

        (sub,) = asyncio.run(timed_out()).subtasks
        assert sub.status == "timed_out" and pids and not _pid_alive(pids[0])
    assert nomic_branches(repo) == []
    # the sleeper's own `sleep`, in a session of its own, is this test's to stop
    for line in sleeper_pids.read_text().splitlines() if sleeper_pids.exists() else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split()[1]), signal.SIGKILL)


def test_agent_decomposition_scans_the_configured_target(tmp_path: Path) -> None:
    home = isolated_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        orch = asyncio.run(
            AutonomousOrchestrator.create(
                repo="/some/repo",
                instance=instance,
                cycle_config={"agents": [ta.spec(ta.GoodAgent)]},
                use_debate_decomposition=True,
            )
        )
    assert orch.decomposer.use_debate
    assert orch.decomposer.scan_settings is not None
    assert orch.decomposer.scan_settings.repo == "/some/repo"
    assert orch.decomposer.scan_settings.agents == [ta.spec(ta.GoodAgent)]
