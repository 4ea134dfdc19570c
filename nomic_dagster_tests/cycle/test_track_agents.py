"""Track core is Claude only (the seed's track table), checked when CONTEXT resolves the panel."""

from __future__ import annotations

from pathlib import Path

import pytest

from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.records import Outcome, Track
from nomic_dagster.core.settings import CLAUDE_ONLY_TRACKS, CycleSettings, check_track_agents
from nomic_dagster.cycle.steps import run_cycle
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import make_repo
from nomic_dagster_tests.support.snapshots import nomic_branches, worktrees


def test_only_core_is_claude_only() -> None:
    assert {Track.CORE} == CLAUDE_ONLY_TRACKS
    for track in Track:
        if track is not Track.CORE:  # any panel is fine elsewhere
            check_track_agents(CycleSettings(track=track.value), ["lint-fixer", "gpt"])


def test_core_accepts_claude_agents_only() -> None:
    core = CycleSettings(track="core", implementer="claude-code")
    check_track_agents(core, ["claude", "claude-opus"])  # a second Claude model's backend
    with pytest.raises(BadInput, match="track core is limited to Claude agents") as err:
        check_track_agents(core, ["claude", "gpt", "lint-fixer"])
    assert "'gpt', 'lint-fixer'" in err.value.problem and "agents=['claude']" in err.value.fix
    for role in ("judge", "designer", "implementer"):
        with pytest.raises(BadInput, match="'codex'"):
            check_track_agents(core.model_copy(update={role: "codex"}), ["claude"])


def test_a_core_cycle_with_other_agents_ends_bad_input_before_any_git_work(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    record = run_cycle(CycleSettings(repo=str(repo), track="core", agents=[ta.spec(ta.GoodAgent)]))
    assert record.outcome is Outcome.BAD_INPUT
    assert "track core is limited to Claude agents" in record.reason
    assert nomic_branches(repo) == [] and worktrees(repo) == [str(repo)]
    # the same panel on another track commits
    record = run_cycle(CycleSettings(repo=str(repo), track="qa", agents=[ta.spec(ta.GoodAgent)]))
    assert record.outcome is Outcome.COMMITTED, record.reason
