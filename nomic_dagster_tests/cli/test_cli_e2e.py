"""End to end through the real `dagster` CLI in a subprocess, with the offline agents.

A temporary git repository with planted defects (written here, not the demo) gets a
verified commit on nomic/...; the commit's tests pass on a fresh clone; the user's
checkout (with an uncommitted file) is byte-for-byte untouched; the instance holds the
cycle_records materialization.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from nomic_dagster.orchestration.instance import isolated_home
from nomic_dagster_tests.support.repo_builders import make_repo, run_git
from nomic_dagster_tests.support.snapshots import checkout_snapshot, nomic_branches, worktrees

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).parent / "dagster")
EXECUTE = ["job", "execute", "-m", "nomic_dagster.definitions", "-j", "nomic_cycle"]

PLANTED = {
    "shapes/__init__.py": '"""Shapes."""\n',
    "shapes/geometry.py": (
        '"""Areas and perimeters."""\nimport math\nimport os\n\n\n'
        "def circle_area(r: float) -> float:\n    return round(math.pi*r*r, 4)\n\n\n"
        "def square_perimeter(side: int) -> int:\n    if side < 0:\n        raise ValueError('negative side')\n    return 4 * side\n\n\n"
        "def clamp(value: int, low: int = 0, high: int = 10) -> int:\n    return max(low, min(high, value))\n"
    ),
    "tests/test_geometry.py": (
        "from shapes.geometry import circle_area\n\n\ndef test_circle_area():\n    assert circle_area(1.0) == 3.1416\n"
    ),
}


def dagster_home(tmp_path: Path) -> Path:
    return isolated_home(tmp_path / "dagster_home")


def run_cli(args: list[str], home: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "DAGSTER_HOME": str(home), **env}
    res = subprocess.run(
        [DAGSTER, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        print(res.stdout[-6000:], res.stderr[-6000:])
    return res


def cycle_record(home: Path, cycle_id: str) -> dict:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert cycle_id in instance.get_dynamic_partitions("cycles")
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("cycle_records"), asset_partitions=[cycle_id]
            ),
            limit=1,
        ).records
        assert records, "cycle_records was not materialized"
        return records[0].asset_materialization.metadata["record"].value  # type: ignore[union-attr]


def test_cli_lands_a_verified_commit_and_leaves_the_checkout_alone(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "target", PLANTED)
    (repo / "scratch_notes.md").write_text("uncommitted, must survive\n")
    before = checkout_snapshot(repo)
    home = dagster_home(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {"ops": {"context_op": {"config": {"repo": str(repo), "goal": "improve it"}}}}
        )
    )

    res = run_cli(
        [*EXECUTE, "-c", str(config), "--tags", '{"nomic/cycle_id": "e2e-1"}'],
        home,
        cwd=tmp_path,
    )
    assert res.returncode == 0
    record = cycle_record(home, "e2e-1")
    assert record["outcome"] == "committed", record["reason"]
    assert nomic_branches(repo) == ["nomic/developer/e2e-1"]
    assert checkout_snapshot(repo) == before
    assert worktrees(repo) == [str(repo)]

    clone = tmp_path / "fresh-clone"
    subprocess.run(
        ["git", "clone", "--quiet", "--branch", "nomic/developer/e2e-1", str(repo), str(clone)],
        check=True,
    )
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=clone,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout
    assert run_git(clone, "log", "-1", "--format=%H").strip() == record["commit_sha"]


def test_short_form_with_env_target_and_report(tmp_path: Path) -> None:
    """`dagster job execute -j nomic_cycle` as the README documents it, target from $NOMIC_REPO."""
    repo = make_repo(tmp_path / "target", PLANTED)
    home = dagster_home(tmp_path)
    res = run_cli(
        ["job", "execute", "-j", "nomic_cycle", "--tags", '{"nomic/cycle_id": "e2e-short"}'],
        home,
        cwd=tmp_path,
        DAGSTER_CLI_JOB_EXECUTE_MODULE_NAME="nomic_dagster.definitions",
        NOMIC_REPO=str(repo),
    )
    assert res.returncode == 0
    record = cycle_record(home, "e2e-short")
    assert record["outcome"] == "committed" and record["origin"] == str(repo)
    report = subprocess.run(
        [str(Path(sys.executable).parent / "nomic-report"), "e2e-short", "--no-patch"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "committed" in report.stdout and record["commit_sha"] in report.stdout


def test_demo_is_the_default_target(tmp_path: Path) -> None:
    home = dagster_home(tmp_path)
    res = run_cli(
        [*EXECUTE, "--tags", '{"nomic/cycle_id": "e2e-demo"}'],
        home,
        cwd=tmp_path,
    )
    assert res.returncode == 0
    record = cycle_record(home, "e2e-demo")
    assert record["origin"] == "demo" and record["outcome"] == "committed", record["reason"]
    assert "nomic" in res.stderr + res.stdout  # progress lines of the cycle reach the run log


def test_bad_input_exits_non_zero_with_the_fix(tmp_path: Path) -> None:
    home = dagster_home(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"ops": {"context_op": {"config": {"repo": str(tmp_path)}}}}))
    res = run_cli(
        [*EXECUTE, "-c", str(config)],
        home,
        cwd=tmp_path,
    )
    assert res.returncode != 0
    assert "is not a git repository" in res.stdout + res.stderr
