"""Autonomy: the planner sensor, the failure pause and its reset, the stopping rules (W6)
and the per-track schedules, evaluated against real Dagster instances."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from nomic_dagster.core.records import Track
from nomic_dagster.definitions import build_defs
from nomic_dagster.orchestration.assets import learning_assets
from nomic_dagster.orchestration.autonomy import PlannerResource
from nomic_dagster.orchestration.schedules import schedule_name, track_schedules
from nomic_dagster.orchestration.sensors import (
    AUTOMATION_SENSOR,
    FAILURE_SENSOR,
    FIRST_PLAN_RUN_KEY,
    PLANNER_SENSOR,
    REFRESH_LEARNING_JOB,
    SENSOR_NAME_TAG,
    main,
    plan_launches,
    planner_sensor,
    track_failure_sensor,
)
from nomic_dagster.planning.cycle_store import CycleStore, Launch, get_cycle_store
from nomic_dagster.planning.meta_planner import Priorities, PrioritizedGoal
from nomic_dagster.planning.stopping import StoppingRules, should_stop
from nomic_dagster_tests.planning.test_learning import RICH_REPO
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.learning_fixtures import planted_record, resources
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, make_repo
from nomic_dagster_tests.support.run_configs import cycle_config, fast_cycle_config

WHEN = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)


def materialize_priorities(
    instance: dg.DagsterInstance, res: dict[str, object], **config: object
) -> Priorities:
    result = dg.materialize(
        learning_assets,
        instance=instance,
        resources=res,
        run_config={"ops": {"meta_planner_priorities": {"config": config}}} if config else None,
    )
    assert result.success
    return result.output_for_node("meta_planner_priorities")


def evaluate_planner(
    defs: dg.Definitions, instance: dg.DagsterInstance, res: dict, cursor: str | None
) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(
        instance=instance, definitions=defs, cursor=cursor, resources=res
    ) as context:  # closed: nothing it opened outlives the test's instance
        return planner_sensor(context)


def test_planner_sensor_launches_each_goal_once(instance, state_dir: Path, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "rich", RICH_REPO)
    res = resources(state_dir, repo=str(repo))
    defs = build_defs(res)
    # a fresh instance: the first tick asks for the first plan, once (the run key)
    first = evaluate_planner(defs, instance, res, None)
    assert isinstance(first, dg.SensorResult) and first.cursor is None
    (request,) = first.run_requests
    assert request.job_name == REFRESH_LEARNING_JOB and request.run_key == FIRST_PLAN_RUN_KEY
    again_first = evaluate_planner(defs, instance, res, None)
    assert isinstance(again_first, dg.SensorResult)
    assert [r.run_key for r in again_first.run_requests] == [FIRST_PLAN_RUN_KEY]

    # the daemon runs it (tagged with the sensor's name, as the daemon does): the three
    # learning assets, and the next tick launches the goals of that plan
    run = defs.resolve_job_def(request.job_name).execute_in_process(
        instance=instance, tags={**request.tags, SENSOR_NAME_TAG: PLANNER_SENSOR}
    )
    assert run.success
    assert {m.asset_key for m in run.get_asset_materialization_events() if m.asset_key} == {
        a.key for a in learning_assets
    }
    priorities = run.output_for_node("meta_planner_priorities")
    assert len(priorities.goals) >= 3
    result = evaluate_planner(defs, instance, res, None)
    assert isinstance(result, dg.SensorResult)
    requests = result.run_requests
    assert [r.run_key for r in requests] == [g.run_key for g in priorities.goals]
    assert len({r.run_key for r in requests}) == len(requests)
    for request, goal in zip(requests, priorities.goals, strict=True):
        assert request.job_name == f"nomic_cycle_{goal.track.value}"
        assert request.tags["nomic/track"] == goal.track.value
        assert request.tags["nomic/trigger"] == "planner"
        assert request.tags["nomic/goal_source"] == "planner"
        assert request.tags["nomic/cycle_id"] == goal.cycle_id
        config = request.run_config["ops"]["context_op"]["config"]
        assert config["goal"] == goal.goal and config["repo"] == str(repo)
        assert config["track"] == goal.track.value and config["test_command"] == FAST_TEST_COMMAND
        assert config["agents"] == ["lint-fixer", "test-writer", "dead-code"]
        job = defs.get_job_def(request.job_name)
        assert dg.validate_run_config(job, request.run_config)  # the launch would be accepted
    cursor = result.cursor
    latest = instance.fetch_materializations(
        dg.AssetKey("meta_planner_priorities"), limit=1
    ).records[0]
    assert cursor == str(latest.storage_id)

    # not twice: the same materialization is skipped by the cursor...
    again = evaluate_planner(defs, instance, res, cursor)
    assert isinstance(again, dg.SkipReason) and "no new priorities" in again.skip_message
    # ...a lost cursor finds every goal launched before...
    lost = evaluate_planner(defs, instance, res, None)
    assert isinstance(lost, dg.SensorResult) and lost.run_requests == []
    assert "launched before" in (lost.skip_reason.skip_message if lost.skip_reason else "")
    # ...and a new plan with the same goals launches nothing new either
    materialize_priorities(instance, res)
    fresh = evaluate_planner(defs, instance, res, cursor)
    assert isinstance(fresh, dg.SensorResult) and fresh.run_requests == []
    assert int(fresh.cursor or 0) > int(cursor or 0)
    store = get_cycle_store(state_dir)
    assert {launch.run_key for launch in store.launches()} == {r.run_key for r in requests}

    # priorities wiped after the first plan succeeded: its run key is spent, so the sensor
    # says what to do instead of asking for a run the daemon would drop
    instance.wipe_assets([dg.AssetKey("meta_planner_priorities")])
    wiped = evaluate_planner(defs, instance, res, None)
    assert isinstance(wiped, dg.SkipReason) and "succeeded but" in wiped.skip_message


def test_first_plan_waits_for_its_run_and_reports_a_failed_one(
    instance, state_dir: Path, tmp_path: Path
) -> None:
    res = resources(state_dir)
    defs = build_defs(res)
    job = defs.resolve_job_def(REFRESH_LEARNING_JOB)
    launched_by_sensor = {SENSOR_NAME_TAG: PLANNER_SENSOR}
    created = instance.create_run_for_job(job, tags=launched_by_sensor)  # not started yet
    waiting = evaluate_planner(defs, instance, res, None)
    assert isinstance(waiting, dg.SkipReason)
    assert f"waiting for the first plan: run {created.run_id[:8]}" in waiting.skip_message
    instance.delete_run(created.run_id)

    # the store folder is a file: the learning assets cannot open the cycle store
    (tmp_path / "not_a_folder").write_text("")
    broken = build_defs(resources(tmp_path / "not_a_folder"))
    failed = broken.resolve_job_def(REFRESH_LEARNING_JOB).execute_in_process(
        instance=instance, tags=launched_by_sensor, raise_on_error=False
    )
    assert not failed.success
    reported = evaluate_planner(defs, instance, res, None)
    assert isinstance(reported, dg.SkipReason)
    message = reported.skip_message or ""
    assert f"run {failed.run_id[:8]} of {REFRESH_LEARNING_JOB}) ended FAILURE" in message
    assert "Materialize all" in message  # the fix


def record_automation_tick(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """Evaluate the automation conditions and store the evaluation, as the automation
    sensor's tick does (the daemon is not running here)."""
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert instance.schedule_storage is not None
    newest = instance.schedule_storage.get_auto_materialize_asset_evaluations(
        dg.AssetKey("meta_planner_priorities"), limit=1
    )
    instance.schedule_storage.add_auto_materialize_asset_evaluations(
        newest[0].evaluation_id + 1 if newest else 1,
        [r.serializable_evaluation.with_run_ids(set()) for r in result.results],
    )


def test_goals_wait_for_an_automation_tick_after_their_plan(
    instance, state_dir: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "rich", RICH_REPO)
    res = resources(state_dir, repo=str(repo))
    defs = build_defs(res)
    record_automation_tick(defs, instance)  # the automation sensor runs (ticked before)
    materialize_priorities(instance, res)
    held = evaluate_planner(defs, instance, res, None)
    assert isinstance(held, dg.SkipReason)
    assert f"waiting for {AUTOMATION_SENSOR}" in (held.skip_message or "")
    # evaluations are stored to the second: the next tick is a second later
    planned_at = (
        instance.fetch_materializations(dg.AssetKey("meta_planner_priorities"), limit=1)
        .records[0]
        .timestamp
    )
    time.sleep(max(0.0, int(planned_at) + 1.05 - time.time()))
    record_automation_tick(defs, instance)
    launched = evaluate_planner(defs, instance, res, None)
    assert isinstance(launched, dg.SensorResult) and len(launched.run_requests) >= 3


def _bad_input_run(defs: dg.Definitions, instance, tmp_path: Path) -> dg.ExecuteInProcessResult:
    result = defs.get_job_def("nomic_cycle_qa").execute_in_process(
        instance=instance,
        run_config=cycle_config(repo=str(tmp_path / "missing")),
        raise_on_error=False,
    )
    assert not result.success
    return result


def _report_failure(instance, res: dict, result: dg.ExecuteInProcessResult) -> None:
    context = dg.build_run_status_sensor_context(
        sensor_name=FAILURE_SENSOR,
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources=res,
    ).for_run_failure()
    track_failure_sensor(context)


def test_failure_sensor_pauses_a_track_after_n_failures_until_reset(
    instance, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert PlannerResource().failure_threshold == 3  # the default N; 2 here keeps it short
    res = resources(state_dir, failure_threshold=2)
    defs = build_defs(res)
    store = get_cycle_store(state_dir)

    def fail_once() -> None:
        _report_failure(instance, res, _bad_input_run(defs, instance, tmp_path))

    fail_once()
    assert not store.track_state("qa").paused
    # a run that succeeds breaks the streak (here: a cycle that ends at a closed gate)
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    ok = defs.get_job_def("nomic_cycle_qa").execute_in_process(
        instance=instance,
        run_config=fast_cycle_config(
            repo=str(repo), agents=[ta.spec(a) for a in (ta.SelfishA, ta.SelfishB, ta.SelfishC)]
        ),
    )
    assert ok.success
    fail_once()
    assert not store.track_state("qa").paused  # one in a row since the success
    fail_once()
    state = store.track_state("qa")
    assert state.paused and "2 failed runs in a row" in state.reason
    assert len(store.run_failures("qa")) == 3
    assert not store.track_state("developer").paused

    # a paused track holds back autonomous goals on it, not on other tracks
    goals = [_goal(Track.QA, "qa goal"), _goal(Track.DEVELOPER, "dev goal")]
    plan = plan_launches(Priorities(goals=goals), store, PlannerResource(), record=False)
    assert [g.goal for g in plan.launch] == ["dev goal"]
    assert "track qa is paused" in plan.held_back[0].reason
    tick = defs.resolve_schedule_def(schedule_name(Track.QA))
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=WHEN, resources=res
    ) as tick_context:
        skipped = tick(tick_context)
    assert isinstance(skipped, dg.SkipReason) and "paused" in skipped.skip_message

    # a person resets it: from the command line...
    monkeypatch.setenv("NOMIC_STATE_DIR", str(state_dir))
    assert main(["reset", "qa", "--by", "alice"]) == 0
    state = store.track_state("qa")
    assert not state.paused and state.reset_by == "alice"
    plan = plan_launches(Priorities(goals=goals), store, PlannerResource(), record=False)
    assert len(plan.launch) == 2
    fail_once()  # failures before the reset no longer count
    assert not store.track_state("qa").paused
    # ...or with the reset job in the UI
    store.pause_track("qa", "paused by hand")
    reset = defs.get_job_def("nomic_reset_track").execute_in_process(
        instance=instance,
        run_config={"ops": {"reset_track_op": {"config": {"track": "qa", "by": "bob"}}}},
    )
    assert reset.success and store.track_state("qa").reset_by == "bob"
    assert not store.track_state("qa").paused


def _goal(track: Track, text: str, source: str = "planner") -> PrioritizedGoal:
    return PrioritizedGoal(
        id=text.replace(" ", "-"),
        priority=1,
        track=track,
        goal=text,
        kind="user" if source == "user" else "lint-fix",
        rationale="-",
        expected_impact="low",
        score=1.0,
        signals=1,
        source=source,  # type: ignore[arg-type]
        requested_at=WHEN if source == "user" else None,
    )


def _autonomous_history(store: CycleStore, costs: list[float], success: bool = True) -> None:
    for i, cost in enumerate(costs):
        cycle_id = f"auto-{i}"
        store.record_launch(
            Launch(run_key=cycle_id, cycle_id=cycle_id, track=Track.QA, goal="g", source="planner")
        )
        store.save_sync(planted_record(cycle_id, cost_usd=cost, success=success, minutes=i))


def test_stopping_rules(state_dir: Path) -> None:
    store = get_cycle_store(state_dir)
    assert should_stop(store, StoppingRules()) is None
    _autonomous_history(store, [0.6, 0.6])
    budget = should_stop(store, StoppingRules(budget_usd=1.0))
    assert budget is not None and budget.rule == "budget_spent"
    assert should_stop(store, StoppingRules(budget_usd=0)) is None  # <= 0: no budget rule
    limit = should_stop(store, StoppingRules(budget_usd=0, max_cycles=3), pending=1)
    assert limit is not None and limit.rule == "cycle_limit"
    assert should_stop(store, StoppingRules(budget_usd=0, diminishing_window=2)) is None
    store.save_sync(planted_record("auto-0", success=False))
    store.save_sync(planted_record("auto-1", success=False, minutes=1))
    dim = should_stop(store, StoppingRules(budget_usd=0, diminishing_window=2))
    assert dim is not None and dim.rule == "diminishing_returns"
    # a user's own cycles never count towards autonomy's limits
    store.record_launch(Launch(run_key="u", cycle_id="u", track=Track.QA, goal="g", source="user"))
    store.save_sync(planted_record("u", cost_usd=100.0, minutes=5))
    assert store.autonomous_spend() == 0.0 and store.autonomous_launch_count() == 2


def test_w6_stopping_rules_hold_autonomous_goals_but_never_a_user_goal(
    instance, state_dir: Path, tmp_path: Path
) -> None:
    """W6: the original ran its stopping rules before every goal, explicit ones included."""
    repo = make_repo(tmp_path / "rich", RICH_REPO)
    res = resources(state_dir, repo=str(repo), budget_usd=1.0)
    defs = build_defs(res)
    store = get_cycle_store(state_dir)
    _autonomous_history(store, [0.7, 0.7])  # $1.40 spent autonomously: over the budget
    priorities = materialize_priorities(
        instance, res, user_goals=["Add tests for pkg/rich.py parse()"], user_goal_track="qa"
    )
    user = priorities.goals[0]
    assert user.source == "user" and user.priority == 1 and user.track is Track.QA
    assert len(priorities.goals) > 1
    result = evaluate_planner(defs, instance, res, None)
    assert isinstance(result, dg.SensorResult)
    assert [r.run_key for r in result.run_requests] == [user.run_key]
    request = result.run_requests[0]
    assert request.tags["nomic/goal_source"] == "user" and request.job_name == "nomic_cycle_qa"
    assert request.run_config["ops"]["context_op"]["config"]["goal"] == user.goal
    # the same rules stop the schedules, which are autonomous too
    tick = defs.resolve_schedule_def(schedule_name(Track.DEVELOPER))
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=WHEN, resources=res
    ) as tick_context:
        held = tick(tick_context)
    assert isinstance(held, dg.SkipReason) and "budget_spent" in held.skip_message
    # and a paused track does not hold back what a person asked for either
    store.pause_track("qa", "3 failed runs")
    again = PrioritizedGoal(**{**user.model_dump(), "requested_at": datetime.now(UTC)})
    plan = plan_launches(Priorities(goals=[again]), store, PlannerResource(budget_usd=1.0))
    assert [g.goal for g in plan.launch] == [user.goal]


def test_schedules_exist_per_track_stopped_and_tick_with_the_tracks_tags(
    instance, state_dir: Path
) -> None:
    res = resources(state_dir, repo="/srv/target", objective="Add tests")
    defs = build_defs(res)
    names = {s.name for s in defs.schedules}
    assert names == {schedule_name(t) for t in Track}
    for track in Track:
        schedule = defs.resolve_schedule_def(schedule_name(track))
        assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
        assert schedule.job_name == f"nomic_cycle_{track.value}"
        assert schedule.cron_schedule == "0 3 * * *" and schedule.execution_timezone == "UTC"
    assert len(track_schedules) == len(Track)
    schedule = defs.resolve_schedule_def(schedule_name(Track.SECURITY))
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=WHEN, resources=res
    ) as tick_context:
        request = schedule(tick_context)
    assert isinstance(request, dg.RunRequest)
    assert request.tags["nomic/track"] == "security" and request.tags["nomic/trigger"] == "schedule"
    assert request.tags["nomic/cycle_id"] == request.run_key == "s-security-20260301T0300"
    config = request.run_config["ops"]["context_op"]["config"]
    assert config == {
        "track": "security",
        "repo": "/srv/target",
        "goal": "Add tests",
        "test_command": FAST_TEST_COMMAND,
    }
    assert dg.validate_run_config(defs.get_job_def("nomic_cycle_security"), request.run_config)
    launches = get_cycle_store(state_dir).launches()
    assert [(x.source, x.track) for x in launches] == [("schedule", Track.SECURITY)]


def test_sensor_default_statuses() -> None:
    defs = build_defs()
    statuses = {s.name: s.default_status for s in defs.sensors}
    assert statuses == {
        PLANNER_SENSOR: dg.DefaultSensorStatus.STOPPED,
        FAILURE_SENSOR: dg.DefaultSensorStatus.RUNNING,
        AUTOMATION_SENSOR: dg.DefaultSensorStatus.RUNNING,
    }
    automation = next(s for s in defs.sensors if s.name == AUTOMATION_SENSOR)
    assert isinstance(automation, dg.AutomationConditionSensorDefinition)
