"""The documented commands share one state folder, with or without scripts/env.sh.

A copy of the nomic_dagster checkout (its package, dagster.yaml and pyproject.toml) stands in
for a fresh clone, so nothing here writes into the checkout that runs the tests. A cycle run
by a bare `dagster job execute -m nomic_dagster.definitions` (no DAGSTER_HOME, no
NOMIC_STATE_DIR: the README's "without scripts/env.sh") is found by `nomic history` and
`nomic-report` run elsewhere, with or without the variables `make demo` exports, and the run
is in the instance the UI reads; and a `nomic run` under those variables lands in the same
history.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, make_repo

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).parent / "dagster")


def fresh_checkout(dest: Path) -> Path:
    shutil.copytree(
        ROOT / "nomic_dagster",
        dest / "nomic_dagster",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    for name in ("dagster.yaml", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def bare_env(checkout: Path, home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DAGSTER_HOME", "NOMIC_STATE_DIR", "XDG_STATE_HOME", "NOMIC_REPO")
    }
    # nomic_dagster from the copy; the scripted agents from this repository
    return {**env, "HOME": str(home), "PYTHONPATH": f"{checkout}{os.pathsep}{ROOT}", **extra}


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, (res.stdout[-4000:], res.stderr[-4000:])
    return res


def test_every_documented_command_reads_the_state_the_others_wrote(tmp_path: Path) -> None:
    checkout = fresh_checkout(tmp_path / "nomic_dagster_clone")
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    home = tmp_path / "home"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ops": {
                    "context_op": {"config": {"repo": str(repo), "test_command": FAST_TEST_COMMAND}}
                }
            }
        )
    )
    bare = bare_env(checkout, home, NOMIC_AGENTS=ta.spec(ta.GoodAgent))
    # `make demo` and `source scripts/env.sh` export this
    as_make = {**bare, "DAGSTER_HOME": str(checkout / ".dagster_home")}

    run(
        [DAGSTER, "job", "execute", "-m", "nomic_dagster.definitions", "-j", "nomic_cycle",
         "-c", str(config), "--tags", json.dumps({"nomic/cycle_id": "shared-1"})],
        cwd=checkout,
        env=bare,
    )  # fmt: skip

    nomic = [sys.executable, "-m", "nomic_dagster.cli.main"]
    report = [sys.executable, "-m", "nomic_dagster.cli.report"]
    for env in (bare, as_make):
        history = json.loads(run([*nomic, "history", "--json"], elsewhere, env).stdout)
        assert [r["cycle_id"] for r in history] == ["shared-1"]
        shown = run([*report, "shared-1", "--no-patch"], elsewhere, env).stdout
        assert "committed" in shown
    # the run is in the instance `make dev` shows
    with dg.DagsterInstance.from_config(str(checkout / ".dagster_home")) as instance:
        assert [r.tags.get("nomic/cycle_id") for r in instance.get_runs()] == ["shared-1"]
    assert not (home / ".local" / "state" / "nomic_dagster").exists()

    # and the other way: `nomic run` under make's variables, read by the bare commands
    run(
        [*nomic, "run", "--repo", str(repo), "--agents", ta.spec(ta.GoodAgent),
         "--test-command", FAST_TEST_COMMAND, "-q"],
        cwd=elsewhere,
        env=as_make,
    )  # fmt: skip
    status = json.loads(run([*nomic, "status", "--json"], elsewhere, bare).stdout)
    assert status["cycles"] == 2
    assert status["state_dir"] == str(checkout / ".dagster_home" / "nomic")
