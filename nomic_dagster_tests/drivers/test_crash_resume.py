"""Kill -9 a cycle at every phase boundary and in the middle of phases, then resume it in a
new process: it completes with exactly one commit, no leftover worktree or branch, a final
COMPLETED checkpoint, and no finished phase done twice (the debate runs once).

Each run is a small driver script (written here) running the state machine in its own
process on a temporary repository. Kills at a boundary come from a bus listener in the
driver (SIGKILL to itself when a checkpoint is saved); kills in the middle of a phase come
from the scripted agent (mid-design, mid-implement), from the target's own test (mid-context
while the baseline runs, mid-verify), and from the commit phase's forwarded event (after the
commit landed, before the machine heard of it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nomic_dagster.core.settings import state_dir
from nomic_dagster.core.states import NomicState
from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster.drivers.checkpoints import load_checkpoint
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, make_repo, run_git
from nomic_dagster_tests.support.snapshots import nomic_branches, worktrees

ROOT = Path(__file__).resolve().parents[2]
CYCLE = "crash01"
BRANCH = f"nomic/developer/{CYCLE}"

DRIVER = """
import asyncio, json, os, signal, sys

from nomic_dagster.drivers.checkpoints import CheckpointError
from nomic_dagster.core.events import EventType, bus
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.drivers.state_machine import create_nomic_state_machine

mode, checkpoint_dir, repo, cycle_id, kill_at, agent, test_command = sys.argv[1:8]
os.environ["CRASH_RUNNER_PID"] = str(os.getpid())  # the scripted agent and tests kill this


def kill_myself(event):
    kind, _, what = kill_at.partition(":")
    saved = event.type is EventType.CHECKPOINT_SAVED and event.data.get("state") == what
    if (
        (kind == "entered" and saved and not event.data["phase_complete"])
        or (kind == "finished" and saved and event.data["phase_complete"])
        or (kind == "phase_finished" and event.type is EventType.PHASE_FINISHED
            and event.data.get("phase") == what)
    ):
        os.kill(os.getpid(), signal.SIGKILL)


if kill_at:
    bus.subscribe(kill_myself)


async def main():
    sm = create_nomic_state_machine(
        checkpoint_dir=checkpoint_dir,
        settings=CycleSettings(
            repo=repo, agents=[agent], test_command=test_command, test_timeout_s=120
        ),
    )
    try:
        if mode == "run":
            record = await sm.run(goal="add a helper", cycle_id=cycle_id)
        else:
            record = await sm.resume_from_checkpoint(cycle_id)
    except CheckpointError as exc:
        print(json.dumps({"error": str(exc)}))
        sys.exit(3)
    print(json.dumps({"outcome": record.outcome.value, "sha": record.commit_sha,
                      "state": sm.current_state.value}))


asyncio.run(main())
"""

KILLER_TEST = """
import os
import pathlib
import signal
import time


def test_the_runner_may_be_killed_here():
    at, marker = os.environ.get("CRASH_AT", ""), os.environ.get("CRASH_MARKER", "")
    ops = pathlib.Path(__file__).resolve().parent.parent / "calc" / "ops.py"
    phase = "verify" if "def triple" in ops.read_text() else "context"
    if at == phase and marker and not os.path.exists(marker):
        pathlib.Path(marker).write_text(phase)
        os.kill(int(os.environ["CRASH_RUNNER_PID"]), signal.SIGKILL)
        time.sleep(60)
"""


def drive(
    tmp_path: Path, mode: str, repo: Path, kill_at: str = "", crash_at: str = ""
) -> subprocess.CompletedProcess[str]:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NOMIC_TEST_CALLS": str(tmp_path / "calls.txt"),
        "CRASH_MARKER": str(tmp_path / "crashed.marker"),
    }
    if crash_at:
        env["CRASH_AT"] = crash_at
    return subprocess.run(
        [
            sys.executable,
            str(driver),
            mode,
            str(tmp_path / "checkpoints"),
            str(repo),
            CYCLE,
            kill_at,
            ta.spec(ta.CrashAgent),
            FAST_TEST_COMMAND,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


SCENARIOS = [
    # (kill_at, crash_at): kill at a phase boundary ...
    ("entered:context", ""),
    ("entered:debate", ""),
    ("entered:design", ""),
    ("entered:implement", ""),
    ("entered:verify", ""),
    ("entered:commit", ""),
    ("entered:completed", ""),
    ("finished:debate", ""),
    ("finished:commit", ""),
    # ... and in the middle of a phase
    ("", "context"),
    ("", "design"),
    ("", "implement"),
    ("", "verify"),
    ("phase_finished:commit", ""),
]


@pytest.mark.parametrize(
    ("kill_at", "crash_at"),
    SCENARIOS,
    ids=[k.replace(":", "-") or f"mid-{c}" for k, c in SCENARIOS],
)
@pytest.mark.slow
def test_a_killed_cycle_resumes_to_exactly_one_commit(
    tmp_path: Path, kill_at: str, crash_at: str
) -> None:
    files = dict(ta.GATE_REPO)
    files["tests/test_killer.py"] = KILLER_TEST
    repo = make_repo(tmp_path / "target", files)
    base = run_git(repo, "rev-parse", "main").strip()

    killed = drive(tmp_path, "run", repo, kill_at=kill_at, crash_at=crash_at)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr[-3000:])
    if crash_at:
        assert (tmp_path / "crashed.marker").read_text() == crash_at
    landed = (
        run_git(repo, "rev-parse", "--verify", "--quiet", BRANCH).strip()
        if (BRANCH in nomic_branches(repo))
        else None
    )

    resumed = drive(tmp_path, "resume", repo)
    out = json.loads(resumed.stdout.strip().splitlines()[-1])
    if kill_at == "entered:completed":  # it had finished: resuming changes nothing
        assert resumed.returncode == 3 and "already ended (COMPLETED" in out["error"], out
    else:
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert out["outcome"] == "committed" and out["state"] == "completed", out

    # exactly one commit, on the cycle branch, and nothing else left behind
    assert nomic_branches(repo) == [BRANCH]
    assert run_git(repo, "rev-list", f"{base}..{BRANCH}").split() == [
        run_git(repo, "rev-parse", BRANCH).strip()
    ]
    assert run_git(repo, "rev-parse", "main").strip() == base
    if landed and landed != base:  # a commit that landed before the kill was adopted
        assert run_git(repo, "rev-parse", BRANCH).strip() == landed
    assert worktrees(repo) == [str(repo)]
    assert list((state_dir() / "worktrees").iterdir()) == []
    committed = run_git(repo, "show", f"{BRANCH}:calc/ops.py")
    assert committed.count("def triple") == 1 and "partial edit" not in committed
    tree = run_git(repo, "ls-tree", "-r", "--name-only", BRANCH).split()
    assert "half_done.py" not in tree and "tests/test_killer.py" in tree
    trailers = run_git(repo, "log", "-1", "--format=%(trailers:only,unfold)", BRANCH)
    assert f"Nomic-Cycle: {CYCLE}" in trailers

    final = load_checkpoint(CYCLE, tmp_path / "checkpoints")
    assert final.state is NomicState.COMPLETED and final.record is not None
    assert final.record.outcome.value == "committed"
    assert final.record.commit_sha == run_git(repo, "rev-parse", BRANCH).strip()
    assert [r.cycle_id for r in CycleHistory(state_dir()).all()] == [CYCLE]

    calls = (tmp_path / "calls.txt").read_text().split()
    assert calls.count("propose") == 1, calls  # a finished debate is never run again
    assert calls.count("design") == (2 if crash_at == "design" else 1), calls
    assert calls.count("implement") == (2 if crash_at == "implement" else 1), calls
    if kill_at != "entered:completed":
        loaded = [e for e in final.events if e.type.value == "checkpoint_loaded"]
        assert len(loaded) == 1 and final.resumes == 1
