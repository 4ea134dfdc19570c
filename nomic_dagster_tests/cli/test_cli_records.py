"""Every driver ends a cycle in the `cycle_records` asset of the Dagster instance
$DAGSTER_HOME names (as `make demo` sets it up), not only the Dagster jobs: a cycle paused
by a job and approved with `nomic approve`, one rejected with `nomic reject`, and a
`nomic run` through the state machine all show their final outcome in the asset catalog.
The CLI runs in a subprocess; the instance is a real one with the project's dagster.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from nomic_dagster.core.records import Outcome
from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster.cycle.steps import run_cycle
from nomic_dagster.definitions import build_defs
from nomic_dagster.orchestration.instance import isolated_home
from nomic_dagster.orchestration.resources import NomicResource
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, make_repo, settings_for

ROOT = Path(__file__).resolve().parents[2]
CYCLE_RECORDS = dg.AssetKey("cycle_records")
AGENT = ta.spec(ta.GoodAgent)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target", ta.GATE_REPO)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return isolated_home(tmp_path / "dagster_home")


def nomic(*args: str, home: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nomic_dagster.cli.main", *args, "--state-dir", str(state_dir)],
        cwd=ROOT,  # nomic_dagster_tests importable for the scripted agent
        env={**os.environ, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def materializations(home: Path, cycle_id: str) -> list[dg.EventLogRecord]:
    """The cycle's `cycle_records` materializations, newest first."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert cycle_id in instance.get_dynamic_partitions("cycles")
        return list(
            instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=CYCLE_RECORDS, asset_partitions=[cycle_id]),
                limit=10,
            ).records
        )


def shown_outcome(home: Path, cycle_id: str) -> str:
    """What the asset catalog shows for the cycle: its latest materialization's outcome."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(CYCLE_RECORDS)
        assert event is not None and event.asset_materialization is not None
        assert event.asset_materialization.partition == cycle_id
    newest = materializations(home, cycle_id)[0].asset_materialization
    assert newest is not None
    return str(newest.metadata["outcome"].value)


def test_nomic_approve_of_a_cycle_a_job_paused_updates_cycle_records(
    repo: Path, home: Path, state_dir: Path
) -> None:
    defs = build_defs({"nomic": NomicResource(state_dir=str(state_dir))})
    config = {"repo": str(repo), "agents": [AGENT], "test_command": FAST_TEST_COMMAND}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        paused = defs.get_job_def("nomic_cycle").execute_in_process(
            instance=instance,
            run_config={"ops": {"context_op": {"config": {**config, "require_approval": True}}}},
            tags={"nomic/cycle_id": "c-cli-ok"},
        )
    assert paused.success
    assert shown_outcome(home, "c-cli-ok") == "awaiting_approval"
    (in_run,) = materializations(home, "c-cli-ok")
    assert in_run.event_log_entry.run_id == paused.run_id  # the job's own, in its run

    done = nomic("approve", "c-cli-ok", "--by", "carol", "-q", home=home, state_dir=state_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    record = CycleHistory(state_dir).get("c-cli-ok")
    assert record is not None and record.outcome is Outcome.COMMITTED, record

    assert shown_outcome(home, "c-cli-ok") == "committed"  # was: still awaiting_approval
    newest = materializations(home, "c-cli-ok")[0]
    md = newest.asset_materialization.metadata  # type: ignore[union-attr]
    assert md["commit_sha"].value == record.commit_sha
    assert md["record"].value == json.loads(record.model_dump_json())
    assert newest.event_log_entry.run_id == ""  # reported outside any run: no job ran it


def test_nomic_reject_updates_cycle_records(
    repo: Path, home: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # the plain driver, in this process
    paused = run_cycle(settings_for(repo, agents=[AGENT], require_approval=True))
    assert paused.outcome is Outcome.AWAITING_APPROVAL, paused.reason
    assert shown_outcome(home, paused.cycle_id) == "awaiting_approval"
    md = materializations(home, paused.cycle_id)[0].asset_materialization.metadata  # type: ignore[union-attr]
    assert f"nomic approve {paused.cycle_id}" in md["approve_with"].value

    done = nomic("reject", paused.cycle_id, "--by", "dora", home=home, state_dir=state_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert shown_outcome(home, paused.cycle_id) == "rejected_by_human"
    assert len(materializations(home, paused.cycle_id)) == 2


def test_nomic_run_through_the_state_machine_materializes_cycle_records(
    repo: Path, home: Path, state_dir: Path
) -> None:
    ran = nomic(
        "run",
        "--repo",
        str(repo),
        "--agents",
        AGENT,
        "--test-command",
        FAST_TEST_COMMAND,
        "--json",
        "-q",
        home=home,
        state_dir=state_dir,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    (record,) = json.loads(ran.stdout)
    assert record["outcome"] == "committed", record["reason"]
    assert shown_outcome(home, record["cycle_id"]) == "committed"
    (only,) = materializations(home, record["cycle_id"])  # once, though it ran in 7 processes
    assert only.asset_materialization.metadata["record"].value == record  # type: ignore[union-attr]
