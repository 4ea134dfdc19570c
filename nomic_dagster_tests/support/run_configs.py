"""Run configs for the cycle jobs (one place that knows where a cycle's settings go), and the
record a cycle run leaves in the instance."""

from __future__ import annotations

from typing import Any

import dagster as dg

from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND

CYCLE_RECORDS = dg.AssetKey("cycle_records")


def cycle_config(**fields: Any) -> dict[str, Any]:
    """The run config of a nomic_cycle job whose context_op gets `fields` (CycleSettings
    fields; the op builds the cycle's settings from them)."""
    return {"ops": {"context_op": {"config": fields}}}


def fast_cycle_config(**fields: Any) -> dict[str, Any]:
    """`cycle_config` with the fast test command for small targets, unless `fields` name one."""
    return cycle_config(**{"test_command": FAST_TEST_COMMAND, **fields})


def cycle_record_materialization(
    instance: dg.DagsterInstance, cycle_id: str
) -> dg.AssetMaterialization:
    """The latest materialization of the cycle's `cycle_records` partition (it must exist)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=CYCLE_RECORDS, asset_partitions=[cycle_id]), limit=1
    ).records
    assert records, f"no cycle_records materialization for {cycle_id}"
    mat = records[0].asset_materialization
    assert mat is not None
    return mat
