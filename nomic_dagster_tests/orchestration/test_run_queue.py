"""Per-track run limits hold for queued runs: the real daemon drains `dagster job launch` runs.

Three cycles are queued on the self_hosted track (limit 1 in dagster.yaml); polling the
instance while the daemon works never shows two of them running at once, and all land.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from nomic_dagster.orchestration.instance import PROJECT_ROOT, isolated_home
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import make_repo
from nomic_dagster_tests.support.snapshots import nomic_branches

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ACTIVE = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def cycle_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """The cycle runs (the automation sensor may add a run of the learning assets)."""
    return [r for r in instance.get_runs() if r.job_name.startswith("nomic_cycle")]


def test_self_hosted_runs_are_held_to_one_at_a_time(tmp_path: Path) -> None:
    home = isolated_home(tmp_path / "home")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ops": {
                    "context_op": {"config": {"repo": str(repo), "agents": [ta.spec(ta.GoodAgent)]}}
                }
            }
        )
    )
    for n in range(3):
        subprocess.run(
            [str(BIN / "dagster"), "job", "launch", "-w", "workspace.yaml", "-j", "nomic_cycle_self_hosted",
             "-c", str(config), "--tags", f'{{"nomic/cycle_id": "q-{n}"}}'],
            cwd=PROJECT_ROOT, env=env, check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    most_active = 0
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                runs = cycle_runs(instance)
                assert len(runs) == 3
                most_active = max(most_active, sum(r.status in ACTIVE for r in runs))
                if all(r.status in DONE for r in runs):
                    break
                time.sleep(0.5)
            statuses = sorted(r.status.value for r in cycle_runs(instance))
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()
    assert statuses == ["SUCCESS"] * 3
    assert most_active == 1
    assert sorted(nomic_branches(repo)) == [f"nomic/self_hosted/q-{n}" for n in range(3)]
