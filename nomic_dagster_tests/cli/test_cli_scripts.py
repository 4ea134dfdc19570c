"""The command lines, each in a real subprocess: nomic_staged.py, self_develop.py, `nomic`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, make_repo, run_git
from nomic_dagster_tests.support.snapshots import checkout_snapshot, nomic_branches, worktrees

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
STAGED = str(ROOT / "scripts" / "nomic_staged.py")
SELF_DEVELOP = str(ROOT / "scripts" / "self_develop.py")
NOMIC = str(Path(sys.executable).parent / "nomic")
GOOD = ta.spec(ta.GoodAgent)


def env() -> dict[str, str]:
    # the scripted agents are imported by path from this repository
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run(*argv: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run(
        list(argv),
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in res.stderr, res.stderr
    return res


def target(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target", ta.GATE_REPO)


def settings_args(repo: Path, agent: str = GOOD) -> list[str]:
    return ["--repo", str(repo), "--agents", agent, "--test-command", FAST_TEST_COMMAND]


def test_staged_phase_by_phase_ends_with_a_commit(tmp_path: Path, state_dir: Path) -> None:
    repo = target(tmp_path)
    folder = tmp_path / "staged"
    phases = ["context", "debate", "design", "implement", "verify", "commit"]
    for phase in phases:
        extra = [*settings_args(repo), "--goal", "add triple"] if phase == "context" else []
        res = run(PY, STAGED, phase, "--dir", str(folder), "-q", *extra)
        assert res.returncode == 0, (phase, res.stdout, res.stderr)
        saved = json.loads((folder / f"{phase}.json").read_text())
        assert phase in saved["phase_durations"]  # each file is the CycleState after its phase
        if phase != "commit":
            assert saved["outcome"] is None
            assert f"nomic_staged.py {phases[phases.index(phase) + 1]}" in res.stdout
    record = json.loads((folder / "record.json").read_text())
    assert record["outcome"] == "committed" and record["goal"]["text"] == "add triple"
    branch = f"nomic/developer/{record['cycle_id']}"
    assert nomic_branches(repo) == [branch]
    assert run_git(repo, "rev-parse", branch).strip() == record["commit_sha"]
    assert worktrees(repo) == [str(repo)]  # the worktree is gone once the cycle ended
    assert CycleHistory(state_dir).get(record["cycle_id"]) is not None

    again = run(PY, STAGED, "commit", "--dir", str(folder))
    assert again.returncode == 1 and "already ran" in again.stderr


def test_staged_debate_without_a_context_runs_the_context_phase_first(tmp_path: Path) -> None:
    """`nomic_staged.py debate` on its own (as in the seed) makes the context it reads, says
    so on stderr, and uses the settings options for it (they are not ignored)."""
    repo = target(tmp_path)
    folder = tmp_path / "staged"
    res = run(PY, STAGED, "debate", "--dir", str(folder), "-q", *settings_args(repo))
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert "running the context phase first" in res.stderr
    assert "ignored" not in res.stderr
    context = json.loads((folder / "context.json").read_text())
    debate = json.loads((folder / "debate.json").read_text())
    assert context["cycle_id"] == debate["cycle_id"]
    assert context["settings"]["repo"] == str(repo)
    assert "debate" in debate["phase_durations"] and debate["outcome"] is None
    assert "nomic_staged.py design" in res.stdout
    res = run(PY, STAGED, "design", "--dir", str(folder), "-q")
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert json.loads((folder / "design.json").read_text())["cycle_id"] == context["cycle_id"]


def test_staged_all_never_commits_after_failed_verification(tmp_path: Path) -> None:
    repo = target(tmp_path)
    folder = tmp_path / "staged"
    res = run(PY, STAGED, "all", "--dir", str(folder), *settings_args(repo, ta.spec(ta.Breaker)))
    assert res.returncode == 1
    assert "verification_failed" in res.stdout
    assert "failed gates: tests_pass" in res.stdout
    assert sorted(p.name for p in folder.iterdir()) == [
        "context.json",
        "debate.json",
        "design.json",
        "implement.json",
        "record.json",
        "verify.json",
    ]  # no commit.json: the commit phase never ran
    assert nomic_branches(repo) == []
    assert worktrees(repo) == [str(repo)]
    res = run(PY, STAGED, "commit", "--dir", str(folder))
    assert res.returncode == 1 and "already ended: verification_failed" in res.stderr
    assert nomic_branches(repo) == []


def test_self_develop_dry_run_changes_nothing(tmp_path: Path, state_dir: Path) -> None:
    repo = target(tmp_path)
    (repo / "notes.txt").write_text("uncommitted\n")
    before = checkout_snapshot(repo)
    state_before = sorted(p.relative_to(state_dir).as_posix() for p in state_dir.rglob("*"))
    res = run(
        PY,
        SELF_DEVELOP,
        "--dry-run",
        *settings_args(repo),
        "--goal",
        "Improve test coverage",
        "--tracks",
        "developer",
        "qa",
        "--budget-limit",
        "5",
        "--max-cycles",
        "2",
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "goal:     Improve test coverage" in out
    assert f"target:   {repo}" in out and "base:     main at" in out
    assert "tracks:   developer, qa" in out and "agents:   good" in out
    assert "up to 2 per track" in out and "$5.0000 (for the whole run" in out
    assert "nothing was changed" in out
    assert checkout_snapshot(repo) == before
    assert nomic_branches(repo) == [] and worktrees(repo) == [str(repo)]
    assert sorted(p.relative_to(state_dir).as_posix() for p in state_dir.rglob("*")) == state_before

    bad = run(PY, SELF_DEVELOP, "--dry-run", "--repo", str(repo), "--agents", "no-such-agent")
    assert bad.returncode == 1 and "unknown agent 'no-such-agent'" in bad.stderr


def test_self_develop_with_approval_stops_after_design(tmp_path: Path) -> None:
    repo = target(tmp_path)
    res = run(PY, SELF_DEVELOP, "--require-approval", *settings_args(repo), "--heartbeat", "0")
    assert res.returncode == 0, res.stderr
    assert "design awaiting approval (nothing implemented)" in res.stdout
    assert "files:   calc/ops.py" in res.stdout
    assert "design ..." in res.stderr and "implement" not in res.stderr  # progress lines
    assert nomic_branches(repo) == []
    # the design waits durably for a person (issue 5): rejecting it ends the cycle
    cycle_id = res.stdout.split("reject:   nomic reject ")[1].split()[0]
    assert cycle_id in run(NOMIC, "pending").stdout
    rejected = run(NOMIC, "reject", cycle_id, "--by", "tester", "--note", "not now")
    assert rejected.returncode == 0, rejected.stderr
    assert "rejected by tester" in rejected.stdout and "rejected_by_human" in rejected.stdout
    assert worktrees(repo) == [str(repo)] and nomic_branches(repo) == []


def test_nomic_run_history_and_status(tmp_path: Path) -> None:
    repo = target(tmp_path)
    res = run(NOMIC, "run", *settings_args(repo), "--goal", "add triple")
    assert res.returncode == 0, res.stderr
    assert ": committed" in res.stdout
    for phase in ("context", "debate", "design", "implement", "verify", "commit"):
        assert f": {phase} done in" in res.stderr  # progress while it ran
    (branch,) = nomic_branches(repo)
    cycle_id = branch.rsplit("/", 1)[1]

    history = run(NOMIC, "history")
    assert history.returncode == 0
    header, row = history.stdout.splitlines()
    assert header.split()[:4] == ["CYCLE", "FINISHED", "(UTC)", "TRACK"]
    assert row.split()[0] == cycle_id and "committed" in row and "good:scripted" in row
    as_json = json.loads(run(NOMIC, "history", "--json").stdout)
    assert [r["cycle_id"] for r in as_json] == [cycle_id]

    status = run(NOMIC, "status")
    assert status.returncode == 0
    assert "cycles: 1 (committed 1)" in status.stdout and cycle_id in status.stdout
    assert json.loads(run(NOMIC, "status", "--json").stdout)["latest"]["cycle_id"] == cycle_id


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([NOMIC, "run", "--repo", "/no/such/repo"], "does not exist"),
        ([NOMIC, "run", "--max-files", "0"], "max_files"),
        ([NOMIC, "run", "--track", "nope"], "invalid choice"),
        ([NOMIC, "run", "--repo", "."], "not a git repository"),
        ([NOMIC, "history", "--limit", "0"], "--limit"),
        ([NOMIC, "frobnicate"], "invalid choice"),
        ([PY, STAGED, "design", "--dir", "{tmp}/empty"], "run `nomic_staged.py debate` first"),
        ([PY, STAGED, "all", "--repo", "demo", "--agents", "x:Y"], "cannot be imported"),
        (
            [NOMIC, "run", "--agents", GOOD],
            "pass --repo PATH (repo=PATH from Python) or set NOMIC_REPO",
        ),
        ([PY, STAGED, "context"], "is not inside a git repository"),
        ([PY, SELF_DEVELOP, "--max-cycles", "0"], "--max-cycles"),
        ([PY, SELF_DEVELOP, "--require-approval", "--no-approval"], "not allowed with"),
    ],
)
def test_bad_input_is_a_message_and_exit_1(argv: list[str], message: str, tmp_path: Path) -> None:
    res = run(*(a.replace("{tmp}", str(tmp_path)) for a in argv), cwd=tmp_path)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert message in res.stderr + res.stdout


SLOW_ONCE = """
import os, sys, time
marker = sys.argv[1]
if not os.path.exists(marker):  # the first test run hangs (until Ctrl-C), later ones are real
    open(marker, "w").close()
    time.sleep(60)
os.execv(sys.executable, [sys.executable, "-m", "pytest", *sys.argv[2:]])
"""


def interrupt_when(argv: list[str], line: str) -> tuple[int, str]:
    """Start argv, wait for a progress line, wait a second (into the test run), Ctrl-C."""
    proc = subprocess.Popen(
        argv, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        seen = ""
        while line not in seen and time.monotonic() < deadline and proc.poll() is None:
            seen += proc.stderr.readline()  # type: ignore[union-attr]
        assert line in seen, seen
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        return code, seen + proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()


def slow_once_command(tmp_path: Path) -> str:
    script = tmp_path / "slow_once.py"
    script.write_text(SLOW_ONCE)
    return (
        f"python {script} {tmp_path / 'marker'} -q -p no:hypothesispytest -p no:anyio -p no:xdist"
    )


def test_ctrl_c_exits_130_and_nomic_resume_finishes_the_cycle(tmp_path: Path) -> None:
    repo = target(tmp_path)
    command = slow_once_command(tmp_path)
    code, err = interrupt_when(
        [NOMIC, "run", "--repo", str(repo), "--agents", GOOD, "--test-command", command],
        ": context ...",
    )
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert nomic_branches(repo) == []
    hint = err.split("its checkpoint is kept: `nomic resume ", 1)[1]
    cycle_id = hint.split("`", 1)[0]

    resumed = run(NOMIC, "resume", cycle_id)
    assert resumed.returncode == 0, resumed.stderr
    assert f"cycle {cycle_id}" in resumed.stdout and ": committed" in resumed.stdout
    assert nomic_branches(repo) == [f"nomic/developer/{cycle_id}"]
    assert worktrees(repo) == [str(repo)]
    again = run(NOMIC, "resume", cycle_id)
    assert again.returncode == 1 and "cannot resume" in again.stderr


def test_ctrl_c_during_a_staged_phase_ends_the_cycle_cleanly(
    tmp_path: Path, state_dir: Path
) -> None:
    repo = target(tmp_path)
    code, err = interrupt_when(
        [
            PY,
            STAGED,
            "context",
            "--dir",
            str(tmp_path / "staged"),
            "--repo",
            str(repo),
            "--agents",
            GOOD,
            "--test-command",
            slow_once_command(tmp_path),
        ],
        ": context ...",
    )
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert worktrees(repo) == [str(repo)] and nomic_branches(repo) == []
    (record,) = CycleHistory(state_dir).all()
    assert record.outcome.value == "error" and "interrupted" in record.reason
