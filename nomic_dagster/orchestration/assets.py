"""Assets: the record of every cycle, partitioned by cycle id.

`cycle_records` is materialized by the `record_cycle_op` of every cycle job, whatever the
outcome, so the asset catalog lists each cycle with its outcome, winner, files and commit.
"""

from __future__ import annotations

import dagster as dg

from nomic_dagster.orchestration.partitions import cycles_partitions

CYCLE_RECORDS = dg.AssetKey("cycle_records")

cycle_records = dg.AssetSpec(
    key=CYCLE_RECORDS,
    description=(
        "One partition per nomic cycle: its outcome (committed, no_consensus, "
        "rejected_by_scope, verification_failed, ...), goal, debate winner, changed files, "
        "lines, tests and commit sha. Written by the cycle jobs, not materialized on its own."
    ),
    partitions_def=cycles_partitions,
    group_name="nomic",
    kinds={"git"},
)
