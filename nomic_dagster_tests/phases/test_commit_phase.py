"""COMMIT on real repositories: the message and its trailers, the commit on the cycle
branch, the user's checkout left alone, and auto-merge only when it is safe."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from nomic_dagster.core import records
from nomic_dagster.core.errors import NomicError
from nomic_dagster.core.records import (
    ChangeSet,
    Consensus,
    ConsensusRule,
    DebateResult,
    Design,
    FileChange,
    GateResult,
    Proposal,
    VerificationReport,
    Vote,
)
from nomic_dagster.infra.git import NOMIC_AUTHOR
from nomic_dagster.phases.commit import commit_change, commit_message
from nomic_dagster.sandbox.commands import run_tests
from nomic_dagster_tests.phases.test_verify_gates import Cycle, add_mul, start_cycle
from nomic_dagster_tests.support.repo_builders import commit_all, run_git, write_files
from nomic_dagster_tests.support.snapshots import checkout_snapshot

TRAILERS = {"Nomic-Cycle", "Nomic-Track", "Nomic-Agents", "Nomic-Run-Id", "Nomic-Winner"}


def design(
    title: str = "Add mul() with a test", rationale: str = "Callers multiply by hand."
) -> Design:
    return Design(
        proposal_id="test-writer:add-tests",
        agent="test-writer",
        kind="add-tests",
        title=title,
        files=["calc/core.py", "tests/test_core.py"],
        steps=["add mul", "test it"],
        test_plan="pytest",
        risk="low",
        rationale=rationale,
    )


def debate(changed: bool = True) -> DebateResult:
    ids = ["test-writer:add-tests", "lint-fixer:lint-fix"]
    proposals = [
        Proposal(
            id=pid,
            agent=pid.split(":")[0],
            kind=pid.split(":")[1],
            title=pid,
            description=pid,
            files=["calc/core.py"],
            benefit=0.5,
            risk=0.1,
            estimated_lines=3,
        )
        for pid in ids
    ]
    votes = [Vote(voter=v, proposal_id=ids[0], confidence=0.9) for v in ("a", "b")]
    votes.append(Vote(voter="c", proposal_id=ids[1], confidence=0.6))
    return DebateResult(
        proposals=proposals,
        critiques=[],
        votes=votes,
        consensus=Consensus(
            rule=ConsensusRule.TWO_THIRDS,
            reached=True,
            winner_id=ids[0],
            votes_for_winner=2,
            voters=3,
            tally={ids[0]: 2, ids[1]: 1},
            first_round_winner_id=ids[1] if changed else ids[0],
            changed_by_debate=changed,
        ),
    )


def report(passed_tests: int = 4) -> VerificationReport:
    tests = records.TestInventory(  # via the module: pytest would collect Test* names
        command="python -m pytest -q",
        passed=True,
        collected=passed_tests,
        exit_code=0,
        output_tail=f"....\n{passed_tests} passed in 0.12s\n",
    )
    gates = [GateResult(name=n, passed=True) for n in ("compiles", "tests_pass")]
    return VerificationReport(passed=True, gates=gates, tests=tests)


def changeset() -> ChangeSet:
    return ChangeSet(
        branch="nomic/developer/c1",
        base_sha="0" * 40,
        tree_sha="1" * 40,
        diff="",
        files=[
            FileChange(path="calc/core.py", status="modified", added=3, removed=0),
            FileChange(path="tests/test_core.py", status="modified", added=5, removed=1),
        ],
        lines_added=8,
        lines_removed=1,
    )


def parse_trailers(message: str) -> list[str]:
    res = subprocess.run(
        ["git", "interpret-trailers", "--parse"],
        input=message,
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout.splitlines()


def settle(repo: Path) -> None:
    """Age the checkout's files and refresh its index once, so that only a real change
    (not git's racy-timestamp bookkeeping) alters the snapshot afterwards."""
    past = time.time() - 10
    for path in repo.rglob("*"):
        if ".git" not in path.relative_to(repo).parts and path.is_file():
            os.utime(path, (past, past))
    run_git(repo, "status", "--porcelain")


def ref(repo: Path, name: str) -> str:
    return run_git(repo, "rev-parse", name).strip()


def make_change(cycle: Cycle) -> ChangeSet:
    add_mul(cycle)
    return cycle.changes()


# ---------------------------------------------------------------- the message


def test_commit_message_subject_body_and_trailers() -> None:
    message = commit_message(
        design(),
        changeset(),
        debate(changed=True),
        cycle_id="c1",
        track="developer",
        agents=["lint-fixer", "test-writer", "dead-code"],
        run_id=None,
        verification=report(),
    )
    subject, _, body = message.partition("\n\n")
    assert subject == "nomic(add-tests): Add mul() with a test"
    assert "Callers multiply by hand." in body
    assert "- calc/core.py: modified, +3/-0" in body
    assert "- tests/test_core.py: modified, +5/-1" in body
    prose = " ".join(body.split())  # body paragraphs are wrapped at 72 columns
    assert all(len(line) <= 72 for line in body.splitlines() if not line.startswith("- "))
    assert "test-writer:add-tests 2, lint-fixer:lint-fix 1" in prose
    assert "2 of 3 voters" in prose
    assert (
        "The debate changed the winner: the vote-only round favoured lint-fixer:lint-fix" in prose
    )
    assert "4 passed" in prose
    assert parse_trailers(message) == [
        "Nomic-Cycle: c1",
        "Nomic-Track: developer",
        "Nomic-Agents: lint-fixer, test-writer, dead-code",
        "Nomic-Run-Id: none",
        "Nomic-Winner: test-writer",
    ]


def test_commit_message_long_title_and_hostile_rationale() -> None:
    message = commit_message(
        design(
            title="Make " + "very " * 30 + "long\ntitles fit", rationale="why\n---\nnot a patch"
        ),
        changeset(),
        debate(changed=False),
        cycle_id="c2",
        track="qa",
        agents=["x"],
        run_id="run-123",
        verification=None,
    )
    subject = message.splitlines()[0]
    assert len(subject) <= 72 and subject.startswith("nomic(add-tests): Make very")
    assert "The debate confirmed the vote-only winner." in message
    parsed = dict(line.split(": ", 1) for line in parse_trailers(message))
    assert set(parsed) == TRAILERS
    assert parsed["Nomic-Run-Id"] == "run-123" and parsed["Nomic-Track"] == "qa"


# ---------------------------------------------------------------- the commit


@pytest.mark.slow
def test_commit_lands_on_the_cycle_branch_and_leaves_the_checkout_alone(tmp_path: Path) -> None:
    cycle = start_cycle(tmp_path, cycle_id="c1")
    repo, ws = cycle.repo, cycle.ws
    # The user's own work in progress: an uncommitted edit, an untracked file, a staged file.
    (repo / "calc" / "data.txt").write_text("edited by the user\n")
    write_files(repo, {"notes.txt": "mine\n", "calc/staged.py": "STAGED = True\n"})
    run_git(repo, "add", "calc/staged.py")
    settle(repo)
    before = checkout_snapshot(repo)

    changes = make_change(cycle)
    verification = cycle.verify(changes)
    assert verification.passed, verification.gates
    message = commit_message(
        design(), changes, debate(), ws.cycle_id, ws.track.value, ["a", "b"], "r1", verification
    )
    result = commit_change(ws, changes, message, auto_merge=False)

    assert result.branch == "nomic/developer/c1" and not result.merged
    assert "left for review" in result.merge_note
    assert ref(repo, "refs/heads/nomic/developer/c1") == result.sha
    assert ref(repo, "refs/heads/main") == ws.base_sha
    fmt = "%an <%ae>|%cn <%ce>|%P|%T"
    author, committer, parents, tree = run_git(
        repo, "log", "-1", f"--format={fmt}", result.sha
    ).split("|")
    expected = f"{NOMIC_AUTHOR[0]} <{NOMIC_AUTHOR[1]}>"
    assert author == expected and committer == expected
    assert parents == ws.base_sha
    assert tree.strip() == changes.tree_sha
    raw = run_git(repo, "cat-file", "commit", result.sha)
    assert raw.split("\n\n", 1)[1] == message  # recorded exactly
    assert "4 passed" in message
    assert run_git(cycle.wt, "status", "--porcelain") == ""  # the worktree is on the new commit

    assert checkout_snapshot(repo) == before

    clone = tmp_path / "clone"
    run_git(tmp_path, "clone", "--quiet", "--branch", result.branch, str(repo), str(clone))
    assert ref(clone, "HEAD") == result.sha
    tests = run_tests("python -m pytest -q", clone, 60)
    assert tests.passed and tests.collected == 4, tests.output_tail


def test_index_changed_after_verification_is_refused(tmp_path: Path) -> None:
    cycle = start_cycle(tmp_path)
    changes = make_change(cycle)
    write_files(cycle.wt, {"calc/sneaky.py": "X = 1\n"})
    run_git(cycle.wt, "add", "calc/sneaky.py")
    with pytest.raises(NomicError, match="index changed after verification"):
        commit_change(cycle.ws, changes, "nomic(x): y\n", auto_merge=True)
    assert ref(cycle.repo, "refs/heads/nomic/developer/c1") == cycle.ws.base_sha
    assert ref(cycle.repo, "refs/heads/main") == cycle.ws.base_sha


# ---------------------------------------------------------------- auto-merge


def test_auto_merge_fast_forwards_a_clean_checkout(tmp_path: Path) -> None:
    cycle = start_cycle(tmp_path)
    result = commit_change(cycle.ws, make_change(cycle), "nomic(x): y\n", auto_merge=True)
    assert result.merged, result.merge_note
    assert "fast-forwarded main" in result.merge_note
    assert ref(cycle.repo, "refs/heads/main") == result.sha
    assert "def mul" in (cycle.repo / "calc" / "core.py").read_text()
    assert run_git(cycle.repo, "status", "--porcelain") == ""


def test_auto_merge_refuses_when_the_base_moved(tmp_path: Path) -> None:
    cycle = start_cycle(tmp_path)
    write_files(cycle.repo, {"calc/other.py": "Y = 2\n"})
    moved = commit_all(cycle.repo, "the user keeps working")
    result = commit_change(cycle.ws, make_change(cycle), "nomic(x): y\n", auto_merge=True)
    assert not result.merged
    assert "main moved since the cycle started" in result.merge_note
    assert ref(cycle.repo, "refs/heads/main") == moved
    assert ref(cycle.repo, "refs/heads/nomic/developer/c1") == result.sha


def test_auto_merge_refuses_a_dirty_checkout(tmp_path: Path) -> None:
    cycle = start_cycle(tmp_path)
    write_files(cycle.repo, {"scratch.txt": "uncommitted\n"})
    settle(cycle.repo)
    before = checkout_snapshot(cycle.repo)
    result = commit_change(cycle.ws, make_change(cycle), "nomic(x): y\n", auto_merge=True)
    assert not result.merged
    assert "has uncommitted changes" in result.merge_note
    assert ref(cycle.repo, "refs/heads/main") == cycle.ws.base_sha
    assert checkout_snapshot(cycle.repo) == before


def test_auto_merge_moves_a_base_that_is_not_checked_out(tmp_path: Path) -> None:
    cycle = start_cycle(tmp_path, base_branch="main")
    run_git(cycle.repo, "switch", "--quiet", "-c", "feature")
    write_files(cycle.repo, {"wip.txt": "on feature\n"})
    settle(cycle.repo)
    before = checkout_snapshot(cycle.repo)
    result = commit_change(cycle.ws, make_change(cycle), "nomic(x): y\n", auto_merge=True)
    assert result.merged, result.merge_note
    assert ref(cycle.repo, "refs/heads/main") == result.sha
    after = checkout_snapshot(cycle.repo)
    assert {k: v for k, v in after.items() if k != "<refs>"} == {
        k: v for k, v in before.items() if k != "<refs>"
    }
    assert "def mul" not in (cycle.repo / "calc" / "core.py").read_text()
