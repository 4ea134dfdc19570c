"""Per-track run limits hold for queued runs: the real daemon drains `dagster job launch` runs.

Three cycles are queued on the self_hosted track (limit 1 in dagster.yaml); polling the
instance while the daemon works never shows two of them running at once, and all land.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from nomic_dagster.orchestration.instance import PROJECT_ROOT
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.dagster_home import BIN, DagsterHome
from nomic_dagster_tests.support.repo_builders import make_repo
from nomic_dagster_tests.support.run_configs import cycle_config
from nomic_dagster_tests.support.snapshots import nomic_branches

pytestmark = pytest.mark.slow
ACTIVE = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def cycle_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """The cycle runs (the automation sensor may add a run of the learning assets)."""
    return [r for r in instance.get_runs() if r.job_name.startswith("nomic_cycle")]


def test_self_hosted_runs_are_held_to_one_at_a_time(
    tmp_path: Path, launch_home: DagsterHome
) -> None:
    instance = launch_home.instance
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cycle_config(repo=str(repo), agents=[ta.spec(ta.GoodAgent)])))
    for n in range(3):
        subprocess.run(
            [str(BIN / "dagster"), "job", "launch", "-w", "workspace.yaml", "-j", "nomic_cycle_self_hosted",
             "-c", str(config), "--tags", f'{{"nomic/cycle_id": "q-{n}"}}'],
            cwd=PROJECT_ROOT, env=launch_home.env, check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    most_active = 0
    with launch_home.daemon():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            runs = cycle_runs(instance)
            assert len(runs) == 3
            most_active = max(most_active, sum(r.status in ACTIVE for r in runs))
            if all(r.status in DONE for r in runs):
                break
            time.sleep(0.5)
        statuses = sorted(r.status.value for r in cycle_runs(instance))
    assert statuses == ["SUCCESS"] * 3
    assert most_active == 1
    assert sorted(nomic_branches(repo)) == [f"nomic/self_hosted/q-{n}" for n in range(3)]
