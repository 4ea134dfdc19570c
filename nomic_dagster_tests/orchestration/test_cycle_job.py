"""The cycle as a Dagster job, in process, on a real (temporary SQLite) instance."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from nomic_dagster.definitions import build_defs
from nomic_dagster.orchestration.resources import NomicResource
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import make_repo, run_git
from nomic_dagster_tests.support.run_configs import cycle_config, cycle_record_materialization
from nomic_dagster_tests.support.snapshots import checkout_snapshot, nomic_branches


@pytest.fixture
def job(state_dir: Path, instance: dg.DagsterInstance) -> dg.JobDefinition:
    # Built while the test's instance is current: Dagster resolves definitions against the
    # current instance's state storage, which must not be a finished test's instance.
    return build_defs({"nomic": NomicResource(state_dir=str(state_dir))}).get_job_def("nomic_cycle")


def test_demo_cycle_lands_a_commit_and_records_it(
    job: dg.JobDefinition, instance, state_dir: Path
) -> None:
    result = job.execute_in_process(instance=instance, tags={"nomic/cycle_id": "c-demo"})
    assert result.success
    record = result.output_for_node("record_cycle_op")
    assert record.outcome.value == "committed", record.reason
    assert record.cycle_id == "c-demo" and record.branch == "nomic/developer/c-demo"
    demo = Path(record.repo)
    assert demo.is_relative_to(state_dir / "demo")
    assert run_git(demo, "rev-parse", record.branch).strip() == record.commit_sha
    trailers = run_git(demo, "log", "-1", "--format=%(trailers:only,unfold)", record.commit_sha)
    assert "Nomic-Cycle: c-demo" in trailers and f"Nomic-Run-Id: {result.run_id}" in trailers
    assert instance.get_dynamic_partitions("cycles") == ["c-demo"]
    md = cycle_record_materialization(instance, "c-demo").metadata
    assert md["outcome"].value == "committed"
    assert md["commit_sha"].value == record.commit_sha
    assert md["files_changed"].value == len(record.files) > 0
    assert set(md["phase_durations_s"].value) == {
        "context",
        "debate",
        "design",
        "implement",
        "verify",
        "commit",
    }


def test_closed_gate_skips_the_rest_and_the_run_succeeds(
    job: dg.JobDefinition, instance, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    agents = [ta.spec(a) for a in (ta.SelfishA, ta.SelfishB, ta.SelfishC)]
    result = job.execute_in_process(
        instance=instance,
        run_config=cycle_config(repo=str(repo), agents=agents),
        tags={"nomic/cycle_id": "c-nc"},
    )
    assert result.success
    skipped = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"}
    assert skipped == {"design_op", "implement_op", "verify_op", "commit_op"}
    assert result.output_for_node("record_cycle_op").outcome.value == "no_consensus"
    assert (
        cycle_record_materialization(instance, "c-nc").metadata["outcome"].value == "no_consensus"
    )
    assert nomic_branches(repo) == []


def test_bad_input_fails_the_run_but_is_still_recorded(
    job: dg.JobDefinition, instance, tmp_path: Path
) -> None:
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    result = job.execute_in_process(
        instance=instance,
        run_config=cycle_config(repo=str(plain)),
        tags={"nomic/cycle_id": "c-bad"},
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "is not a git repository" in str(failure.event_specific_data)
    assert cycle_record_materialization(instance, "c-bad").metadata["outcome"].value == "bad_input"
    assert list(plain.iterdir()) == []


def test_track_job_names_the_branch_after_its_track(
    state_dir: Path, instance, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    before = checkout_snapshot(repo)
    job = build_defs({"nomic": NomicResource(state_dir=str(state_dir))}).get_job_def(
        "nomic_cycle_security"
    )
    result = job.execute_in_process(
        instance=instance,
        run_config=cycle_config(repo=str(repo), agents=[ta.spec(ta.GoodAgent)], track="security"),
        tags={"nomic/cycle_id": "c-sec"},
    )
    assert result.success
    assert result.dagster_run.tags["nomic/track"] == "security"
    assert nomic_branches(repo) == ["nomic/security/c-sec"]
    assert checkout_snapshot(repo) == before
