"""The `cycle_records` asset as a record sink of `finish_cycle`.

One materialization per cycle end, in the cycle's partition of `cycles` (added first),
with the record as metadata. It is built here once and written two ways:

- `RunRecordSink`: inside a Dagster run (the cycle's `record_cycle_op`, a failing
  implement/verify/commit op), as an event of that run, which is where the UI's run view
  and the orchestrator look for the cycle's outcome;
- `DagsterRecordSink`: outside any run (the CLI, the state machine, `nomic approve` and
  `nomic reject`), reported to the instance as a runless event, so the asset catalog shows
  a cycle's last outcome whichever driver ended it. `finish_cycle` loads it through
  `from_environment` when $DAGSTER_HOME holds a dagster.yaml.

No `from __future__ import annotations` here, as in the ops: Dagster types at runtime.
"""

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from nomic_dagster.core.records import CycleRecord, Outcome
from nomic_dagster.core.state import CycleState
from nomic_dagster.cycle.approvals import approval_hint
from nomic_dagster.orchestration.assets import CYCLE_RECORDS
from nomic_dagster.orchestration.partitions import cycles_partitions


def record_metadata(record: CycleRecord) -> dict[str, Any]:
    """What the `cycle_records` partition of a cycle shows (and the orchestrator reads)."""
    return {
        "outcome": record.outcome.value,
        "reason": record.reason,
        "goal": record.goal.text,
        "track": record.track.value,
        "repo": record.origin,
        "winner": record.winner or "",
        "winner_agent": record.winner_agent or "",
        "vote_only_winner": record.first_round_winner or "",
        "changed_by_debate": record.changed_by_debate,
        "files": dg.MetadataValue.json(record.files),
        "files_changed": len(record.files),
        "lines_added": record.lines_added,
        "lines_removed": record.lines_removed,
        "tests_passed": bool(record.tests_passed),
        "tests_collected": record.tests_collected if record.tests_collected is not None else -1,
        "failed_gates": dg.MetadataValue.json(record.failed_gates),
        "branch": record.branch or "",
        "commit_sha": record.commit_sha or "",
        "cost_usd": record.cost_usd,
        "tokens": record.tokens,
        "llm_calls": record.llm_calls,
        "cost_by_phase": dg.MetadataValue.json(record.cost_by_phase),
        "cost_by_agent": dg.MetadataValue.json(record.cost_by_agent),
        "tokens_by_phase": dg.MetadataValue.json(record.tokens_by_phase),
        "tokens_by_agent": dg.MetadataValue.json(record.tokens_by_agent),
        "cassette": dg.MetadataValue.path(record.cassette) if record.cassette else "",
        "phase_durations_s": dg.MetadataValue.json(record.phase_durations),
        "duration_s": round(record.duration_s, 3),
        "record": dg.MetadataValue.json(record.model_dump(mode="json")),
    } | (
        {"approve_with": approval_hint(record.cycle_id)}
        if record.outcome is Outcome.AWAITING_APPROVAL
        else {}
    )


def cycle_materialization(
    instance: dg.DagsterInstance, record: CycleRecord
) -> dg.AssetMaterialization:
    """The cycle's `cycle_records` materialization, its partition added to `instance`."""
    instance.add_dynamic_partitions(cycles_partitions.name, [record.cycle_id])
    return dg.AssetMaterialization(
        asset_key=CYCLE_RECORDS,
        partition=record.cycle_id,
        description=f"{record.outcome.value}: {record.reason}"[:1000],
        metadata=record_metadata(record),
    )


class RunRecordSink:
    """`cycle_records`, materialized as an event of the Dagster run `context` belongs to."""

    def __init__(self, context: dg.OpExecutionContext) -> None:
        self.context = context

    def record(self, record: CycleRecord, state: CycleState) -> None:
        self.context.log_event(cycle_materialization(self.context.instance, record))


class DagsterRecordSink:
    """`cycle_records`, materialized on `instance` outside any run (a runless event)."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance

    def record(self, record: CycleRecord, state: CycleState) -> None:
        self.instance.report_runless_asset_event(cycle_materialization(self.instance, record))


class DagsterHomeRecordSink:
    """`DagsterRecordSink` on the instance in `home`, opened for each record and closed
    again: a CLI run or a long-lived state machine holds no instance between cycles."""

    def __init__(self, home: str) -> None:
        self.home = home

    def record(self, record: CycleRecord, state: CycleState) -> None:
        with dg.DagsterInstance.from_config(self.home) as instance:
            DagsterRecordSink(instance).record(record, state)


def from_environment(environ: Mapping[str, str] = os.environ) -> DagsterHomeRecordSink | None:
    """The sink of the instance $DAGSTER_HOME names (`cycle.finish.DAGSTER_SINK`); None
    when it names none."""
    home = environ.get("DAGSTER_HOME", "")
    return DagsterHomeRecordSink(os.path.abspath(home)) if home else None
