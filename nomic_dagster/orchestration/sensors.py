"""Sensors: autonomy (launch cycles from the planner's priorities), the failure pause, and
the automation sensor that refreshes the learning assets.

- `nomic_planner_sensor` (STOPPED by default: a person switches autonomy on) launches one
  run per goal of the newest `meta_planner_priorities` materialization on its track's job
  `nomic_cycle_<track>`, tagged `nomic/track`, `nomic/trigger: planner`, `nomic/goal_source`
  and `nomic/cycle_id`. Its cursor is the materialization's storage id, so a
  materialization is read once; each goal's `run_key` (track, target, goal, base commit),
  also remembered in the cycle store, keeps a goal from being launched twice. Runs are
  queued: the instance's run queue holds each track to its limit (dagster.yaml).
  Autonomous goals are held back by the stopping rules (`nomic_dagster.planning.stopping`) and by
  a paused track; a goal a person asked for is not (W6).
  On a fresh instance there are no priorities yet, and the learning assets' eager
  automation waits for a first cycle record, so the sensor makes the first plan itself:
  it launches the `nomic_refresh_learning` asset job once (run key `nomic-first-plan`),
  and a later tick launches the goals of that materialization. Should that run fail, the
  sensor says so on every tick instead of retrying (the fix is a person's).
  Goals of a new materialization wait until the automation sensor has evaluated the
  learning assets after it (at most `AUTOMATION_WAIT_LIMIT_S`): eager automation treats a
  cycle record that lands in the same tick window as the assets' own materialization as
  handled, so a cycle launched sooner could leave the learning tables without its record.
- `nomic_track_failure_sensor` (RUNNING) records every failed cycle run in the cycle store
  and, after `failure_threshold` failed runs in a row on a track (default 3, counted in the
  instance's run history since the track's last reset), pauses the track: the planner
  sensor and the schedules stop launching on it until a person resets it with the
  `nomic_reset_track` job or `python -m nomic_dagster.orchestration.sensors reset <track>`.
- `nomic_learning_automation` (RUNNING) evaluates the learning assets' automation
  conditions (Dagster's default automation sensor is stopped by default).

No `from __future__ import annotations` here: Dagster reads the annotations at runtime.
"""

import argparse
import getpass
import sys
import time
from collections.abc import Sequence

import dagster as dg
from pydantic import Field

from nomic_dagster.core.records import Record, Track
from nomic_dagster.orchestration.assets import (
    META_PLANNER_PRIORITIES,
    learning_assets,
    validate_priorities,
)
from nomic_dagster.orchestration.autonomy import (
    GOAL_ID_TAG,
    GOAL_SOURCE_TAG,
    TRIGGER_TAG,
    PlannerResource,
    store_for,
)
from nomic_dagster.orchestration.jobs import nomic_cycle, track_jobs
from nomic_dagster.orchestration.ops import CYCLE_ID_TAG, TRACK_TAG
from nomic_dagster.orchestration.resources import NomicResource
from nomic_dagster.planning.cycle_store import CycleStore, Launch, RunFailure, get_cycle_store
from nomic_dagster.planning.meta_planner import Priorities, PrioritizedGoal, run_config_for
from nomic_dagster.planning.stopping import StopDecision, applies_to, should_stop

PLANNER_SENSOR = "nomic_planner_sensor"
FAILURE_SENSOR = "nomic_track_failure_sensor"
AUTOMATION_SENSOR = "nomic_learning_automation"
REFRESH_LEARNING_JOB = "nomic_refresh_learning"
FIRST_PLAN_RUN_KEY = "nomic-first-plan"
CYCLE_JOB_NAMES = frozenset({nomic_cycle.name, *(j.name for j in track_jobs)})
SENSOR_NAME_TAG = "dagster/sensor_name"  # Dagster tags every run a sensor launched with it
# how long goals wait for the automation sensor (a few of its 30 s ticks): longer means it
# is stopped or stuck, and launching beats waiting forever
AUTOMATION_WAIT_LIMIT_S = 120.0

refresh_learning_job = dg.define_asset_job(
    REFRESH_LEARNING_JOB,
    selection=dg.AssetSelection.assets(*learning_assets),
    description="Recompute agent_performance, pattern_reinforcements and "
    "meta_planner_priorities. The planner sensor launches it once on a fresh instance "
    "(the first plan); afterwards the automation sensor refreshes them after every cycle.",
)


def job_for(track: Track) -> str:
    return f"nomic_cycle_{track.value}"


# ---------------------------------------------------------------- planning launches


class HeldBack(Record):
    goal_id: str
    track: Track
    reason: str


class LaunchPlan(Record):
    """What one planner tick decided: the goals to launch and the ones held back (why)."""

    launch: list[PrioritizedGoal] = Field(default_factory=list)
    held_back: list[HeldBack] = Field(default_factory=list)
    stop: StopDecision | None = None


def plan_launches(
    priorities: Priorities, store: CycleStore, planner: PlannerResource, record: bool = True
) -> LaunchPlan:
    """Decide which goals to launch. Autonomous goals stop at a stopping rule or a paused
    track; user goals only at a goal launched before. With `record`, launches are written
    to the cycle store (so a goal is launched once, and the rules count them)."""
    rules = planner.rules()
    plan = LaunchPlan()
    pending = 0
    for goal in priorities.goals:
        autonomous = applies_to(goal.source)
        if store.launch(goal.run_key) is not None:
            plan.held_back.append(
                HeldBack(goal_id=goal.id, track=goal.track, reason="launched before")
            )
            continue
        if autonomous:
            state = store.track_state(goal.track)
            if state.paused:
                plan.held_back.append(
                    HeldBack(
                        goal_id=goal.id,
                        track=goal.track,
                        reason=f"track {goal.track.value} is paused: {state.reason}",
                    )
                )
                continue
            stop = should_stop(store, rules, pending=pending)
            if stop is not None:
                plan.stop = stop
                plan.held_back.append(
                    HeldBack(
                        goal_id=goal.id, track=goal.track, reason=f"{stop.rule}: {stop.detail}"
                    )
                )
                continue
        plan.launch.append(goal)
        if record:
            store.record_launch(
                Launch(
                    run_key=goal.run_key,
                    cycle_id=goal.cycle_id,
                    track=goal.track,
                    goal=goal.goal,
                    source="planner" if autonomous else "user",
                    repo=goal.repo or "",
                )
            )
        pending += int(autonomous and not record)  # recorded launches are counted by the store
    return plan


def run_request_for(goal: PrioritizedGoal, planner: PlannerResource) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=goal.run_key,
        job_name=job_for(goal.track),
        run_config=run_config_for(goal, planner.test_command),
        tags={
            TRACK_TAG: goal.track.value,
            TRIGGER_TAG: "planner",
            GOAL_SOURCE_TAG: goal.source,
            GOAL_ID_TAG: goal.id,
            CYCLE_ID_TAG: goal.cycle_id,
        },
    )


def last_automation_evaluation(instance: dg.DagsterInstance) -> float | None:
    """When the automation sensor last stored an evaluation of meta_planner_priorities
    (None: never, e.g. an instance without a daemon). Dagster stores one only when the
    evaluation changed or requested a run, so a quiet tick leaves no trace: the planner
    then waits out its cap (see `planner_sensor`) rather than launching early."""
    storage = instance.schedule_storage
    if storage is None:
        return None
    records = storage.get_auto_materialize_asset_evaluations(META_PLANNER_PRIORITIES, limit=1)
    return records[0].timestamp if records else None


def first_plan(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """No priorities yet: launch the learning assets' job once (the run key keeps the daemon
    from launching it again), or say why nothing is launched while that run is under way or
    after it failed."""
    launched = context.instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=REFRESH_LEARNING_JOB, tags={SENSOR_NAME_TAG: PLANNER_SENSOR}
        ),
        limit=1,
    )
    if launched:
        run = launched[0].dagster_run
        if run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            return dg.SkipReason(
                f"the first plan (run {run.run_id[:8]} of {REFRESH_LEARNING_JOB}) ended "
                f"{run.status.value}; see that run's logs, fix the cause, then materialize "
                "the nomic_learning assets once (Assets -> Materialize all) or re-execute it"
            )
        if not run.is_finished:
            return dg.SkipReason(
                f"waiting for the first plan: run {run.run_id[:8]} of {REFRESH_LEARNING_JOB} "
                f"is {run.status.value}"
            )
        # it succeeded, yet no priorities exist (wiped since): the run key is spent, so a
        # new request would be dropped silently
        return dg.SkipReason(
            f"the first plan (run {run.run_id[:8]}) succeeded but meta_planner_priorities has "
            "no materialization now; materialize the nomic_learning assets once (Assets -> "
            "Materialize all)"
        )
    reason = (
        "meta_planner_priorities has never been materialized (and the learning assets' "
        "automation waits for a first cycle record): launching "
        f"{REFRESH_LEARNING_JOB} once for the first plan"
    )
    context.log.info(reason)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=FIRST_PLAN_RUN_KEY,
                job_name=REFRESH_LEARNING_JOB,
                tags={TRIGGER_TAG: "first-plan"},
            )
        ]
    )


@dg.sensor(
    name=PLANNER_SENSOR,
    jobs=[*track_jobs, refresh_learning_job],
    # twice per automation tick: goals wait for one after their plan (see the docstring)
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Launch one cycle per goal of the newest meta_planner_priorities on its "
    "track's job (queued; per-track run limits apply). Stopping rules and paused tracks "
    "hold back autonomous goals, never a user's. On a fresh instance it first launches "
    "nomic_refresh_learning once for the first plan.",
)
def planner_sensor(
    context: dg.SensorEvaluationContext, planner: PlannerResource, nomic: NomicResource
):
    found = context.instance.fetch_materializations(META_PLANNER_PRIORITIES, limit=1).records
    if not found:
        return first_plan(context)
    storage_id = found[0].storage_id
    last = int(context.cursor) if context.cursor else -1
    if storage_id <= last:
        return dg.SkipReason(f"no new priorities since materialization {last}")
    materialized_at = found[0].timestamp
    evaluated_at = last_automation_evaluation(context.instance)
    waited = time.time() - materialized_at
    if (
        evaluated_at is not None
        and evaluated_at <= materialized_at
        and waited < AUTOMATION_WAIT_LIMIT_S
    ):
        return dg.SkipReason(
            f"waiting for {AUTOMATION_SENSOR} to evaluate the learning assets after "
            f"materialization {storage_id} ({waited:.0f}s ago), so the records of the cycles "
            "launched now land in a later automation window and refresh them"
        )
    priorities = context.repository_def.load_asset_value(
        META_PLANNER_PRIORITIES, instance=context.instance
    )
    problems = validate_priorities(priorities)
    if problems:  # what the asset check rejects is not launched either
        return dg.SensorResult(
            skip_reason=f"priorities make no sense: {'; '.join(problems)}", cursor=str(storage_id)
        )
    plan = plan_launches(priorities, store_for(nomic), planner)
    for held in plan.held_back:
        context.log.info(f"held back goal {held.goal_id} ({held.track.value}): {held.reason}")
    if not plan.launch:
        reason = "; ".join(sorted({h.reason for h in plan.held_back})) or "no goals"
        return dg.SensorResult(skip_reason=f"nothing to launch: {reason}", cursor=str(storage_id))
    return dg.SensorResult(
        run_requests=[run_request_for(g, planner) for g in plan.launch], cursor=str(storage_id)
    )


# ---------------------------------------------------------------- failures and the pause


def consecutive_failures(
    instance: dg.DagsterInstance, track: Track, since_timestamp: float | None, limit: int = 50
) -> int:
    """Failed cycle runs on `track` since the last one that succeeded (or since the reset)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            tags={TRACK_TAG: track.value},
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
        ),
        limit=limit,
    )
    count = 0
    for r in records:  # newest first
        if r.dagster_run.job_name not in CYCLE_JOB_NAMES:
            continue
        if since_timestamp is not None and r.create_timestamp.timestamp() < since_timestamp:
            break
        if r.dagster_run.status != dg.DagsterRunStatus.FAILURE:
            break
        count += 1
    return count


def handle_run_failure(
    instance: dg.DagsterInstance,
    store: CycleStore,
    run: dg.DagsterRun,
    message: str,
    threshold: int,
) -> tuple[int, bool]:
    """Record the failed run; pause its track at `threshold` failures in a row.
    (failures in a row, whether the track is paused now)."""
    raw = run.tags.get(TRACK_TAG, "")
    if raw not in {t.value for t in Track}:
        return 0, False
    track = Track(raw)
    store.record_run_failure(
        RunFailure(
            run_id=run.run_id,
            track=track,
            job_name=run.job_name,
            cycle_id=run.tags.get(CYCLE_ID_TAG, run.run_id[:8]),
            message=message,
        )
    )
    state = store.track_state(track)
    since = state.reset_at.timestamp() if state.reset_at else None
    failures = consecutive_failures(instance, track, since, limit=max(50, threshold * 4))
    if failures >= threshold and not state.paused:
        store.pause_track(
            track,
            f"{failures} failed runs in a row (last: {run.run_id[:8]}: {message[:200]}); "
            f"reset with: python -m nomic_dagster.orchestration.sensors reset {track.value}",
        )
    return failures, store.track_state(track).paused


@dg.run_failure_sensor(
    name=FAILURE_SENSOR,
    monitored_jobs=[nomic_cycle, *track_jobs],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Record failed cycle runs; pause a track after N failed runs in a row "
    "(planner.failure_threshold, default 3) until a person resets it.",
)
def track_failure_sensor(
    context: dg.RunFailureSensorContext, planner: PlannerResource, nomic: NomicResource
):
    run = context.dagster_run
    message = (context.failure_event.message or "") if context.failure_event else ""
    failures, paused = handle_run_failure(
        context.instance, store_for(nomic), run, message, planner.failure_threshold
    )
    context.log.info(
        f"run {run.run_id[:8]} on track {run.tags.get(TRACK_TAG)} failed: "
        f"{failures} in a row{', track paused' if paused else ''}"
    )


learning_automation_sensor = dg.AutomationConditionSensorDefinition(
    AUTOMATION_SENSOR,
    target=dg.AssetSelection.assets(*learning_assets),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Refresh agent_performance, pattern_reinforcements and "
    "meta_planner_priorities when new cycle records land (AutomationCondition.eager()).",
)


# ---------------------------------------------------------------- reset


class ResetTrackConfig(dg.Config):
    track: str = Field(description="The paused track to resume (sme, developer, ...).")
    by: str = Field(default="", description="Who resets it (recorded).")


@dg.op(description="Resume launching on a track paused after repeated failures.")
def reset_track_op(
    context: dg.OpExecutionContext, config: ResetTrackConfig, nomic: NomicResource
) -> None:
    state = store_for(nomic).reset_track(Track(config.track), by=config.by or "ui")
    context.log.info(f"track {state.track.value} resumed (by {state.reset_by})")
    context.add_output_metadata({"track": state.track.value, "reset_by": state.reset_by})


@dg.job(
    name="nomic_reset_track",
    description="Resume autonomous launches on a track that the failure sensor paused.",
)
def reset_track_job() -> None:
    reset_track_op()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m nomic_dagster.orchestration.sensors reset <track> | status`."""
    parser = argparse.ArgumentParser(
        prog="python -m nomic_dagster.orchestration.sensors",
        description="Pause state of the tracks (the cycle store of $NOMIC_STATE_DIR, "
        "$DAGSTER_HOME/nomic or $NOMIC_CYCLE_STORE_URL).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    reset = sub.add_parser("reset", help="resume autonomous launches on a paused track")
    reset.add_argument("track", choices=[t.value for t in Track])
    reset.add_argument("--by", default="", help="who resets it (default: the OS user)")
    sub.add_parser("status", help="show which tracks are paused, and why")
    args = parser.parse_args(argv)
    store = get_cycle_store()
    if args.command == "reset":
        state = store.reset_track(Track(args.track), by=args.by or getpass.getuser())
        print(f"track {state.track.value} resumed by {state.reset_by}")
        return 0
    for track in Track:
        state = store.track_state(track)
        status = (
            f"paused since {state.paused_at:%Y-%m-%d %H:%M} UTC: {state.reason}"
            if (state.paused and state.paused_at)
            else "launching"
        )
        print(f"{track.value:12} {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
