"""Schedules: one per track, STOPPED by default, each running a cycle on a cron.

`nomic_cycle_<track>_schedule` launches `nomic_cycle_<track>` (cron `0 3 * * *` UTC, or
`$NOMIC_SCHEDULE_CRON_<TRACK>` / `$NOMIC_SCHEDULE_CRON`) on the planner resource's target,
objective and test command, tagged `nomic/track` and `nomic/trigger: schedule`. A
scheduled cycle is an autonomous launch: a paused track or a stopping rule skips the tick.

No `from __future__ import annotations` here: Dagster reads the annotations at runtime.
"""

import os
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from nomic_dagster.core.records import Track
from nomic_dagster.core.settings import DEFAULT_GOAL
from nomic_dagster.orchestration.autonomy import TRIGGER_TAG, PlannerResource, store_for
from nomic_dagster.orchestration.jobs import track_jobs
from nomic_dagster.orchestration.ops import CYCLE_ID_TAG, TRACK_TAG
from nomic_dagster.orchestration.resources import NomicResource
from nomic_dagster.planning.cycle_store import Launch
from nomic_dagster.planning.stopping import should_stop

DEFAULT_CRON = "0 3 * * *"


def cron_for(track: Track) -> str:
    return (
        os.environ.get(f"NOMIC_SCHEDULE_CRON_{track.value.upper()}")
        or os.environ.get("NOMIC_SCHEDULE_CRON")
        or DEFAULT_CRON
    )


def schedule_name(track: Track) -> str:
    return f"nomic_cycle_{track.value}_schedule"


def make_track_schedule(job: dg.JobDefinition, track: Track) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=schedule_name(track),
        job=job,
        cron_schedule=cron_for(track),
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"A {track.value} cycle on the planner's target, on a cron (stopped until "
        "a person starts it). Skips while the track is paused or a stopping rule holds.",
    )
    def _schedule(
        context: dg.ScheduleEvaluationContext, planner: PlannerResource, nomic: NomicResource
    ):
        store = store_for(nomic)
        state = store.track_state(track)
        if state.paused:
            return dg.SkipReason(f"track {track.value} is paused: {state.reason}")
        stop = should_stop(store, planner.rules())
        if stop is not None:
            return dg.SkipReason(f"{stop.rule}: {stop.detail}")
        when = context.scheduled_execution_time or datetime.now(UTC)
        cycle_id = f"s-{track.value}-{when:%Y%m%dT%H%M}"
        config: dict[str, Any] = {"track": track.value}
        if planner.repo:
            config["repo"] = planner.repo
        if planner.base_branch:
            config["base_branch"] = planner.base_branch
        if planner.objective:
            config["goal"] = planner.objective
        if planner.test_command:
            config["test_command"] = planner.test_command
        store.record_launch(
            Launch(
                run_key=cycle_id,
                cycle_id=cycle_id,
                track=track,
                goal=planner.objective or DEFAULT_GOAL,
                source="schedule",
                repo=planner.repo,
            )
        )
        return dg.RunRequest(
            run_key=cycle_id,
            run_config={"ops": {"context_op": {"config": config}}},
            tags={TRACK_TAG: track.value, TRIGGER_TAG: "schedule", CYCLE_ID_TAG: cycle_id},
        )

    return _schedule


track_schedules = [make_track_schedule(job, Track(job.tags[TRACK_TAG])) for job in track_jobs]
