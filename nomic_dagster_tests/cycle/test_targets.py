"""Where the target comes from: run config, $NOMIC_REPO, a git URL, or the bundled demo."""

from __future__ import annotations

from pathlib import Path

import pytest

from nomic_dagster.core.records import Outcome
from nomic_dagster.core.settings import CycleSettings, state_dir
from nomic_dagster.cycle.steps import run_cycle
from nomic_dagster.infra.git import DEMO_REPO, is_url
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import make_repo, run_git
from nomic_dagster_tests.support.snapshots import checkout_snapshot, nomic_branches

GOOD = [ta.spec(ta.GoodAgent)]


@pytest.mark.slow
def test_nomic_repo_env_names_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "env-target", ta.GATE_REPO)
    monkeypatch.setenv("NOMIC_REPO", str(repo))
    record = run_cycle(CycleSettings(agents=GOOD))
    assert record.outcome is Outcome.COMMITTED and record.origin == str(repo)
    assert nomic_branches(repo) == [record.branch]


@pytest.mark.slow
def test_run_config_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = make_repo(tmp_path / "env-target", ta.GATE_REPO)
    from_config = make_repo(tmp_path / "config-target", ta.GATE_REPO)
    monkeypatch.setenv("NOMIC_REPO", str(from_env))
    record = run_cycle(CycleSettings(repo=str(from_config), agents=GOOD))
    assert record.origin == str(from_config)
    assert nomic_branches(from_env) == [] and nomic_branches(from_config) == [record.branch]


@pytest.mark.slow
def test_git_url_is_cloned_into_the_state_folder(tmp_path: Path) -> None:
    upstream = make_repo(tmp_path / "upstream", ta.GATE_REPO)
    before = checkout_snapshot(upstream)
    url = f"file://{upstream}"
    assert is_url(url)
    record = run_cycle(CycleSettings(repo=url, agents=GOOD))
    assert record.outcome is Outcome.COMMITTED, record.reason
    clone = Path(record.repo)
    assert clone.is_relative_to(state_dir() / "clones")
    assert run_git(clone, "rev-parse", record.branch).strip() == record.commit_sha
    assert checkout_snapshot(upstream) == before and nomic_branches(upstream) == []
    # a second cycle reuses (fetches into) the same clone
    again = run_cycle(CycleSettings(repo=url, agents=GOOD))
    assert again.outcome is Outcome.COMMITTED and Path(again.repo) == clone


def test_unreachable_url_is_bad_input() -> None:
    record = run_cycle(CycleSettings(repo="file:///nonexistent/repo.git", agents=GOOD))
    assert record.outcome is Outcome.BAD_INPUT
    assert "cannot clone" in record.reason and "fix:" in record.reason


@pytest.mark.slow
def test_demo_is_copied_fresh_for_every_cycle() -> None:
    # the scripted agent cannot edit the demo (no calc/ops.py): only the copies matter here
    first = run_cycle(CycleSettings(agents=GOOD, goal="x"))
    second = run_cycle(CycleSettings(agents=GOOD, goal="x"))
    assert first.origin == second.origin == "demo"
    assert first.repo != second.repo
    for record in (first, second):
        repo = Path(record.repo)
        assert repo.is_relative_to(state_dir() / "demo")
        assert run_git(repo, "log", "--format=%s", "main").splitlines() == ["demo: initial import"]
    # the bundled files themselves are never modified
    assert not (DEMO_REPO / ".git").exists()


@pytest.mark.slow
def test_demo_can_be_named_explicitly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMIC_REPO", str(tmp_path / "ignored"))  # the config wins over the env
    record = run_cycle(CycleSettings(repo="demo", agents=GOOD, goal="x"))
    assert record.origin == "demo" and Path(record.repo).is_relative_to(state_dir() / "demo")


def test_secrets_never_reach_the_target_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    from nomic_dagster.sandbox.commands import tool_env

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-leak-me")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-leak-me")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-leak-me")
    env = tool_env()
    assert not {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GITHUB_TOKEN"} & set(env)
    assert env["PATH"] and env["PYTHONDONTWRITEBYTECODE"] == "1"
