"""The cycle graph and its jobs: `nomic_cycle` plus one job per track."""

from __future__ import annotations

import dagster as dg

from nomic_dagster.core.records import Track
from nomic_dagster.orchestration.config import CycleConfig
from nomic_dagster.orchestration.ops import (
    TRACK_TAG,
    commit_op,
    context_op,
    debate_op,
    design_op,
    implement_op,
    record_cycle_op,
    verify_op,
)


@dg.graph(description="CONTEXT → DEBATE → DESIGN → IMPLEMENT → VERIFY → COMMIT, then record.")
def nomic_cycle_graph():
    state, ended_context = context_op()
    state, ended_debate = debate_op(state)
    state, ended_design = design_op(state)
    state, ended_implement = implement_op(state)
    state, ended_verify = verify_op(state)
    _, ended_commit = commit_op(state)
    record_cycle_op(
        [ended_context, ended_debate, ended_design, ended_implement, ended_verify, ended_commit]
    )


def _default_config() -> dg.RunConfig:
    # In-process by default: the phases run one after another anyway, and each step in its
    # own process costs ~1.5 s (select `multiprocess` in the launchpad to isolate steps).
    # The track is not in the default config: it comes from the job's nomic/track tag, so
    # a run config that names only `repo` keeps the job's track.
    return dg.RunConfig(ops={"context_op": CycleConfig()}, execution={"config": {"in_process": {}}})


def make_cycle_job(track: Track | None = None) -> dg.JobDefinition:
    """`nomic_cycle` (developer track by default, any track by config) or `nomic_cycle_<track>`."""
    name = "nomic_cycle" if track is None else f"nomic_cycle_{track.value}"
    effective = track or Track.DEVELOPER
    return nomic_cycle_graph.to_job(
        name=name,
        description=(
            "One nomic cycle on the configured repository (default: the bundled demo), "
            f"track {effective.value} unless the config names another. Lands a verified "
            "commit on nomic/<track>/<cycle_id>."
        ),
        tags={TRACK_TAG: effective.value},
        config=_default_config(),
    )


nomic_cycle = make_cycle_job()
track_jobs = [make_cycle_job(t) for t in Track]
