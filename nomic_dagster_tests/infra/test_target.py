"""`choose_target`: the one rule for a cycle's target, that every entry point calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.infra.git import DEMO_TARGET, WhenUnset, choose_target, resolve_target
from nomic_dagster_tests.support.repo_builders import make_repo


def test_a_named_path_comes_back_absolute_against_the_directory_it_was_named_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path / "target", {"a.py": "x = 1\n"})
    (repo / "sub").mkdir()
    assert choose_target(".", cwd=repo) == str(repo)
    assert choose_target("..", cwd=repo / "sub") == str(repo)
    monkeypatch.chdir(repo / "sub")
    assert choose_target("../") == str(repo)
    # "demo" and URLs are kept as written; an explicit name beats $NOMIC_REPO
    monkeypatch.setenv("NOMIC_REPO", str(tmp_path))
    assert choose_target("demo") == DEMO_TARGET
    assert choose_target("https://example.invalid/x.git") == "https://example.invalid/x.git"
    assert choose_target("git@example.invalid:x.git") == "git@example.invalid:x.git"


def test_nomic_repo_comes_next_and_is_made_absolute_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path / "target", {"a.py": "x = 1\n"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOMIC_REPO", "target")
    for when_unset in WhenUnset:
        assert choose_target(None, when_unset=when_unset) == str(repo)
        assert choose_target("  ", when_unset=when_unset) == str(repo)


def test_unnamed_the_current_repository_or_the_demo_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path / "target", {"pkg/a.py": "x = 1\n"})
    assert choose_target(None, cwd=repo / "pkg") == str(repo)  # the enclosing repository
    assert choose_target(None, when_unset=WhenUnset.DEMO, cwd=repo / "pkg") == DEMO_TARGET
    outside = tmp_path / "plain"
    outside.mkdir()
    with pytest.raises(BadInput) as exc:
        choose_target(None, cwd=outside)
    assert str(outside) in exc.value.problem and "not inside a git repository" in exc.value.problem
    assert "--repo PATH" in exc.value.fix and "NOMIC_REPO" in exc.value.fix


def test_the_context_phase_records_the_absolute_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Dagster run config's relative `repo` is pinned where the run resolves it: the
    origin in the cycle's workspace (and record) is the absolute path, not "."."""
    repo = make_repo(tmp_path / "target", {"a.py": "x = 1\n"})
    monkeypatch.chdir(repo)
    origin, path = resolve_target(CycleSettings(repo="."), "c1")
    assert origin == str(repo) and path == repo
    origin, path = resolve_target(CycleSettings(), "c2")  # unnamed, in a Dagster run: the demo
    assert origin == DEMO_TARGET and (path / ".git").exists()
