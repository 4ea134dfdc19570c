"""The cycle graph and its jobs: `nomic_cycle` plus one job per track."""

from __future__ import annotations

import dagster as dg

from nomic_dagster.core.phases import PHASES
from nomic_dagster.core.records import Phase, Track
from nomic_dagster.orchestration.config import CycleConfig
from nomic_dagster.orchestration.ops import PHASE_OPS, TRACK_TAG, context_op, record_cycle_op
from nomic_dagster.orchestration.phase_limits import run_limit_tags


@dg.graph(description=" → ".join(p.name for p in PHASES) + ", then record.")
def nomic_cycle_graph():
    state, ended = context_op()
    endings = [ended]
    for phase in PHASES:  # the phase table's order
        if phase is not Phase.CONTEXT:
            state, ended = PHASE_OPS[phase](state)
            endings.append(ended)
    record_cycle_op(endings)


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
        # run monitoring stops a run past the worst case of the phase limits
        tags={TRACK_TAG: effective.value, **run_limit_tags()},
        config=_default_config(),
    )


nomic_cycle = make_cycle_job()
track_jobs = [make_cycle_job(t) for t in Track]
