"""NomicLoop, the legacy API: real cycles through the state machine (never canned results,
aragora-nomic W11), stopping after N cycles in a row without a commit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nomic_dagster import NomicLoop, Outcome
from nomic_dagster.core.settings import state_dir
from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import make_repo, run_git, settings_for
from nomic_dagster_tests.support.snapshots import nomic_branches, worktrees


def loop_for(tmp_path: Path, repo: Path, agent: type, **kw: object) -> NomicLoop:
    return NomicLoop(
        repo=repo,
        checkpoint_dir=tmp_path / "checkpoints",
        settings=settings_for(repo, agents=[ta.spec(agent)]),
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.slow
def test_two_real_cycles(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    loop = loop_for(tmp_path, repo, ta.GoodAgent, max_cycles=2)
    records = asyncio.run(loop.run())
    assert [r.outcome for r in records] == [Outcome.COMMITTED, Outcome.COMMITTED]
    assert len({r.cycle_id for r in records}) == 2
    assert sorted(nomic_branches(repo)) == sorted(r.branch for r in records)
    for r in records:  # each record is a commit that really exists, with its provenance
        assert run_git(repo, "rev-parse", r.branch).strip() == r.commit_sha
        assert "def triple" in run_git(repo, "show", f"{r.commit_sha}:calc/ops.py")
    assert [r.cycle_id for r in CycleHistory(state_dir()).all()] == [r.cycle_id for r in records]
    assert all(r.phase_durations.keys() >= {"context", "commit"} for r in records)
    assert worktrees(repo) == [str(repo)]
    assert loop.get_metrics()["successful_cycles"] == 2


@pytest.mark.slow
def test_stops_after_consecutive_failures(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    loop = loop_for(tmp_path, repo, ta.Breaker, max_cycles=5, max_consecutive_failures=2)
    records = asyncio.run(loop.run())
    assert [r.outcome for r in records] == [Outcome.VERIFICATION_FAILED] * 2
    assert loop.consecutive_failures == 2
    assert nomic_branches(repo) == [] and len(CycleHistory(state_dir()).all()) == 2


def test_bad_input_stops_at_once(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    loop = NomicLoop(repo=plain, max_cycles=3, checkpoint_dir=tmp_path / "checkpoints")
    records = asyncio.run(loop.run())
    assert [r.outcome for r in records] == [Outcome.BAD_INPUT]
    assert "is not a git repository" in records[0].reason
