"""The definitions load; jobs, tags, config and instance files are what the README promises."""

from __future__ import annotations

import itertools
from pathlib import Path

import dagster as dg
import pytest
import yaml

from nomic_dagster.core.records import ConsensusRule, Track
from nomic_dagster.core.settings import CycleSettings, RuleName, TrackName
from nomic_dagster.definitions import build_defs, defs
from nomic_dagster.orchestration.config import CycleConfig
from nomic_dagster_tests.support.run_configs import cycle_config

ROOT = Path(__file__).resolve().parents[2]
TRACK_LIMITS = {"sme": 2, "developer": 2, "self_hosted": 1, "qa": 3, "core": 1, "security": 2}


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)


def test_a_job_per_track_plus_nomic_cycle() -> None:
    names = {job.name for job in defs.resolve_all_job_defs()}
    assert {"nomic_cycle", *(f"nomic_cycle_{t.value}" for t in Track)} <= names
    for track in Track:
        job = defs.get_job_def(f"nomic_cycle_{track.value}")
        assert job.tags["nomic/track"] == track.value
    assert defs.get_job_def("nomic_cycle").tags["nomic/track"] == "developer"


def test_cycle_graph_order() -> None:
    deps = defs.get_job_def("nomic_cycle").graph.dependency_structure
    phases = ["context_op", "debate_op", "design_op", "implement_op", "verify_op", "commit_op"]
    for upstream, downstream in itertools.pairwise(phases):
        (source,) = deps.input_to_upstream_outputs_for_node(downstream).values()
        assert [(o.node.name, o.output_def.name) for o in source] == [(upstream, "state")]
    (fan_in,) = deps.input_to_upstream_outputs_for_node("record_cycle_op").values()
    assert sorted(o.node.name for o in fan_in) == sorted(phases)
    assert {o.output_def.name for o in fan_in} == {"ended"}


def test_cycle_records_is_a_dynamically_partitioned_asset() -> None:
    spec = next(s for s in defs.resolve_all_asset_specs() if s.key == dg.AssetKey("cycle_records"))
    assert isinstance(spec.partitions_def, dg.DynamicPartitionsDefinition)
    assert spec.partitions_def.name == "cycles"


def test_config_and_settings_share_one_definition() -> None:
    assert set(CycleConfig.model_fields) == set(CycleSettings.model_fields)
    assert set(TrackName.__args__) == {t.value for t in Track}
    assert set(RuleName.__args__) == {r.value for r in ConsensusRule}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("track", "research", "not in enum"),
        ("consensus_rule", "most", "not in enum"),
        ("bogus", 1, "bogus"),
    ],
)
def test_bad_run_config_is_rejected_before_the_run(field: str, value: object, message: str) -> None:
    job = defs.get_job_def("nomic_cycle")
    with pytest.raises(dg.DagsterInvalidConfigError, match=message):
        job.execute_in_process(run_config=cycle_config(**{field: value}))


def test_build_defs_overrides_resources(tmp_path: Path) -> None:
    from nomic_dagster.orchestration.resources import NomicResource

    custom = build_defs({"nomic": NomicResource(state_dir=str(tmp_path))})
    dg.Definitions.validate_loadable(custom)
    assert custom.get_job_def("nomic_cycle").resource_defs["nomic"] is not None


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_instance_files_set_the_per_track_run_limits() -> None:
    local, postgres = (
        _yaml(ROOT / "dagster.yaml"),
        _yaml(ROOT / "deploy" / "postgres" / "dagster.yaml"),
    )
    assert local["concurrency"] == postgres["concurrency"]
    limits = {
        lim["value"]: lim["limit"] for lim in local["concurrency"]["runs"]["tag_concurrency_limits"]
    }
    assert limits == TRACK_LIMITS
    assert postgres["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    overrides = {
        k: v
        for k, v in local.items()
        if k not in ("storage", "local_artifact_storage", "compute_logs")
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        run_queue = instance.get_concurrency_config().run_queue_config
        assert run_queue is not None
        loaded = {lim["value"]: lim["limit"] for lim in run_queue.tag_concurrency_limits}
        assert loaded == TRACK_LIMITS


def test_workspace_points_at_the_definitions() -> None:
    ws = _yaml(ROOT / "workspace.yaml")
    assert ws["load_from"][0]["python_module"]["module_name"] == "nomic_dagster.definitions"
