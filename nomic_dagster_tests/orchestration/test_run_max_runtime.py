"""`dagster/max_runtime` holds for a queued cycle run: the real daemon's run monitoring (on
in dagster.yaml) stops a run that goes past the tag, and the step's test suite dies with it.

The cycle jobs carry the tag with the worst case of their phase limits (hours); this run
gets 10 s through a launch tag, and a baseline suite that would take two minutes.
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
from nomic_dagster.orchestration.phase_limits import MAX_RUNTIME_TAG
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import make_repo

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def _suites_running(under: Path) -> list[int]:
    """Pids of slow_suite.py processes working under `under` (the cycle's worktrees)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if b"slow_suite.py" in cmdline and cwd.is_relative_to(under):
            found.append(int(proc.name))
    return found


def test_run_monitoring_stops_a_cycle_run_past_its_max_runtime(
    tmp_path: Path, state_dir: Path
) -> None:
    home = isolated_home(tmp_path / "home")
    config_path = home / "dagster.yaml"
    instance_config = yaml.safe_load(config_path.read_text())
    assert instance_config["run_monitoring"]["enabled"] is True  # as the project ships it
    instance_config["run_monitoring"]["poll_interval_seconds"] = 1  # a quick test, not a rule
    config_path.write_text(yaml.safe_dump(instance_config, sort_keys=False))
    env = {**os.environ, "DAGSTER_HOME": str(home)}

    suite = "import time\ntime.sleep(120)\n"
    repo = make_repo(tmp_path / "target", {"app.py": "X = 1\n", "slow_suite.py": suite})
    run_config = tmp_path / "run.yaml"
    run_config.write_text(
        yaml.safe_dump(
            {
                "ops": {
                    "context_op": {
                        "config": {
                            "repo": str(repo),
                            "test_command": "python slow_suite.py",
                            "test_timeout_s": 300,
                            "agents": [ta.spec(ta.GoodAgent)],
                        }
                    }
                }
            }
        )
    )
    subprocess.run(
        [str(BIN / "dagster"), "job", "launch", "-w", "workspace.yaml", "-j", "nomic_cycle",
         "-c", str(run_config), "--tags", f'{{"nomic/cycle_id": "mr-1", "{MAX_RUNTIME_TAG}": "10"}}'],
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
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 240
            suite_seen = False
            while time.monotonic() < deadline:
                suite_seen = suite_seen or bool(_suites_running(state_dir))
                [run] = instance.get_runs()
                if run.status in DONE:
                    break
                time.sleep(0.5)
            time.sleep(3)  # the interrupted step kills its suite as it unwinds
            left = _suites_running(state_dir)
            [run] = instance.get_runs()
            record = instance.get_run_record_by_id(run.run_id)
            events = [e.message or "" for e in instance.all_logs(run.run_id)]
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()
        for pid in _suites_running(state_dir):  # do not leave a failed test's suite behind
            os.kill(pid, signal.SIGKILL)
    assert run.tags[MAX_RUNTIME_TAG] == "10"
    assert run.status is dg.DagsterRunStatus.FAILURE, run.status
    assert any("maximum runtime of 10 seconds" in m for m in events), events[-5:]
    assert record is not None and record.start_time and record.end_time
    assert record.end_time - record.start_time < 60  # stopped, not run to the suite's end
    assert suite_seen  # the baseline suite was running when the limit hit
    assert not left, f"the step's test suite outlived its run: {left}"
