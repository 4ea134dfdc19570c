"""Every gate through the plain cycle driver: each ends without a commit and with the right
outcome, leaves no worktree or cycle branch behind, and never touches the user's checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from nomic_dagster.core.records import Outcome
from nomic_dagster.core.settings import CycleSettings, state_dir
from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster.cycle.steps import run_cycle
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import make_repo, run_git
from nomic_dagster_tests.support.snapshots import checkout_snapshot, nomic_branches, worktrees


@pytest.fixture
def gate_repo(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    # the user's own uncommitted work, which a cycle must never touch
    (repo / "notes.txt").write_text("work in progress\n")
    (repo / "calc" / "ops.py").write_text((repo / "calc" / "ops.py").read_text() + "# editing\n")
    return repo


def settings_for(repo: Path, *agents: type, **extra: object) -> CycleSettings:
    return CycleSettings(repo=str(repo), agents=[ta.spec(a) for a in agents], **extra)


def assert_no_trace(repo: Path, before: dict[str, str]) -> None:
    assert checkout_snapshot(repo) == before
    assert nomic_branches(repo) == []
    assert worktrees(repo) == [str(repo)]


@pytest.mark.parametrize(
    ("agents", "outcome", "gate"),
    [
        ((ta.SelfishA, ta.SelfishB, ta.SelfishC), Outcome.NO_CONSENSUS, None),
        ((ta.ProtectedDesigner,), Outcome.REJECTED_BY_SCOPE, None),
        ((ta.WideDesigner,), Outcome.REJECTED_BY_SCOPE, None),
        ((ta.Breaker,), Outcome.VERIFICATION_FAILED, "tests_pass"),
        ((ta.SneakyProtected,), Outcome.VERIFICATION_FAILED, "protected_paths"),
        ((ta.TestDeleter,), Outcome.VERIFICATION_FAILED, "tests_kept"),
        ((ta.Crasher,), Outcome.IMPLEMENTATION_FAILED, None),
    ],
    ids=[
        "no-consensus",
        "scope-protected",
        "scope-too-wide",
        "breaks-test",
        "protected-in-diff",
        "deletes-test",
        "crash",
    ],
)
@pytest.mark.slow
def test_gate_ends_cycle_without_commit(
    gate_repo: Path, agents: tuple[type, ...], outcome: Outcome, gate: str | None
) -> None:
    before = checkout_snapshot(gate_repo)
    record = run_cycle(settings_for(gate_repo, *agents))
    assert record.outcome is outcome, record.reason
    assert record.commit_sha is None
    if gate:
        assert gate in record.failed_gates
    assert_no_trace(gate_repo, before)
    assert CycleHistory(state_dir()).get(record.cycle_id) == record
    assert not (state_dir() / "worktrees" / record.cycle_id).exists()


@pytest.mark.slow
def test_no_consensus_records_both_rounds(gate_repo: Path) -> None:
    record = run_cycle(settings_for(gate_repo, ta.SelfishA, ta.SelfishB, ta.SelfishC))
    assert record.proposals == 3
    assert record.winner is None
    assert "two_thirds" in record.reason and "1/3" in record.reason


@pytest.mark.slow
def test_unanimous_rule_is_applied(gate_repo: Path) -> None:
    # two agents agree (both vote for the first id), one dissents: enough for two thirds, not for all
    agents = (ta.GoodAgent, ta.ProtectedDesigner, ta.SelfishC)
    assert (
        run_cycle(settings_for(gate_repo, *agents, consensus_rule="unanimous")).outcome
        is Outcome.NO_CONSENSUS
    )


@pytest.mark.slow
def test_good_change_commits_and_leaves_checkout_alone(gate_repo: Path) -> None:
    before = checkout_snapshot(gate_repo)
    record = run_cycle(settings_for(gate_repo, ta.GoodAgent, track="qa"))
    assert record.outcome is Outcome.COMMITTED, record.reason
    assert record.branch == f"nomic/qa/{record.cycle_id}"
    assert nomic_branches(gate_repo) == [record.branch]
    assert checkout_snapshot(gate_repo) == before
    assert worktrees(gate_repo) == [str(gate_repo)]
    assert run_git(gate_repo, "rev-parse", record.branch).strip() == record.commit_sha
    assert "def triple" in run_git(gate_repo, "show", f"{record.commit_sha}:calc/ops.py")


# ---------------------------------------------------------------- bad input


def test_not_a_git_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.py").write_text("x = 1\n")
    record = run_cycle(CycleSettings(repo=str(plain)))
    assert record.outcome is Outcome.BAD_INPUT
    assert "is not a git repository" in record.reason and "git init" in record.reason
    assert sorted(p.name for p in plain.iterdir()) == ["a.py"]


def test_missing_path(tmp_path: Path) -> None:
    record = run_cycle(CycleSettings(repo=str(tmp_path / "nope")))
    assert record.outcome is Outcome.BAD_INPUT and "does not exist" in record.reason


def test_repository_without_commits(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    run_git(repo, "init", "--quiet")
    record = run_cycle(CycleSettings(repo=str(repo)))
    assert record.outcome is Outcome.BAD_INPUT
    assert "has no commits" in record.reason and "git commit" in record.reason


def test_unknown_base_branch(gate_repo: Path) -> None:
    before = checkout_snapshot(gate_repo)
    record = run_cycle(settings_for(gate_repo, ta.GoodAgent, base_branch="release"))
    assert record.outcome is Outcome.BAD_INPUT
    assert "'release' does not exist" in record.reason and "main" in record.reason
    assert_no_trace(gate_repo, before)


@pytest.mark.slow
def test_detached_head(gate_repo: Path) -> None:
    run_git(gate_repo, "checkout", "--quiet", "--detach", "HEAD")
    before = checkout_snapshot(gate_repo)
    record = run_cycle(settings_for(gate_repo, ta.GoodAgent))
    assert record.outcome is Outcome.BAD_INPUT
    assert "detached" in record.reason and "base_branch" in record.reason
    assert_no_trace(gate_repo, before)
    # naming the base branch explicitly works from a detached checkout
    assert (
        run_cycle(settings_for(gate_repo, ta.GoodAgent, base_branch="main")).outcome
        is Outcome.COMMITTED
    )


def test_test_command_that_does_not_exist(gate_repo: Path) -> None:
    before = checkout_snapshot(gate_repo)
    record = run_cycle(settings_for(gate_repo, ta.GoodAgent, test_command="no-such-runner --all"))
    assert record.outcome is Outcome.BAD_INPUT
    assert "does not exist" in record.reason and "test_command" in record.reason
    assert_no_trace(gate_repo, before)


def test_test_command_module_that_is_not_installed(gate_repo: Path) -> None:
    record = run_cycle(
        settings_for(gate_repo, ta.GoodAgent, test_command="python -m no_such_test_runner")
    )
    assert record.outcome is Outcome.BAD_INPUT and "not installed" in record.reason


def test_unknown_agent(gate_repo: Path) -> None:
    before = checkout_snapshot(gate_repo)
    record = run_cycle(CycleSettings(repo=str(gate_repo), agents=["lint-fixer", "gpt-17"]))
    assert record.outcome is Outcome.BAD_INPUT
    assert "unknown agent 'gpt-17'" in record.reason and "lint-fixer" in record.reason
    assert_no_trace(gate_repo, before)


@pytest.mark.slow
def test_baseline_red(tmp_path: Path) -> None:
    files = dict(ta.GATE_REPO)
    files["tests/test_broken.py"] = "def test_broken():\n    assert 1 == 2\n"
    repo = make_repo(tmp_path / "red", files)
    before = checkout_snapshot(repo)
    record = run_cycle(settings_for(repo, ta.GoodAgent))
    assert record.outcome is Outcome.BASELINE_RED
    assert "already fail" in record.reason
    assert record.proposals == 0 and record.commit_sha is None
    assert_no_trace(repo, before)


@pytest.mark.slow
def test_no_tests_collected_is_baseline_red_unless_allowed(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "untested",
        {"calc/__init__.py": "", "calc/ops.py": "def add(a, b):\n    return a + b\n"},
    )
    record = run_cycle(settings_for(repo, ta.GoodAgent))
    assert record.outcome is Outcome.BASELINE_RED and "collected no tests" in record.reason
    allowed = run_cycle(settings_for(repo, ta.GoodAgent, allow_no_tests=True))
    assert allowed.outcome is Outcome.COMMITTED, allowed.reason
