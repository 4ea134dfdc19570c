"""Cross-cycle learning: real cycles fill the cycle store, the learning assets are
materialized from it and checked against the records, declarative automation asks for
them after each new cycle, and the meta-planner ranks goals from real signals.

Real Dagster instances (`instance_for_test`), real git repositories, scripted agents.
"""

from __future__ import annotations

import math
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from nomic_dagster.core.records import Track
from nomic_dagster.definitions import build_defs
from nomic_dagster.orchestration.assets import learning_assets, learning_checks
from nomic_dagster.planning.cycle_store import get_cycle_store
from nomic_dagster.planning.learning import (
    agent_performance_table,
    pattern_factor,
    pattern_table,
    wilson_interval,
)
from nomic_dagster.planning.meta_planner import MetaPlanner, PlanTarget, Priorities, PrioritizedGoal
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.learning_fixtures import planted_record, resources
from nomic_dagster_tests.support.repo_builders import make_repo
from nomic_dagster_tests.support.run_configs import (
    cycle_record_materialization,
    fast_cycle_config,
)

LEARNING_KEYS = {
    dg.AssetKey("agent_performance"),
    dg.AssetKey("pattern_reinforcements"),
    dg.AssetKey("meta_planner_priorities"),
}

# GATE_REPO (what the scripted agents expect) plus a module full of signals.
SIGNAL_REPO = {
    **ta.GATE_REPO,
    "calc/extra.py": (
        "import os\nimport sys\n\n\n"
        "def untested_a(x):\n    # TODO: handle negative numbers\n    return x\n\n\n"
        "def untested_b(y):\n    return y * 2\n"
    ),
}

RICH_REPO = {
    "pkg/__init__.py": "",
    "pkg/rich.py": (
        "import os\nimport sys\nimport json\nimport re\n\n\n"
        "def parse(text):\n    # FIXME: this breaks on empty input\n    return text.split()\n\n\n"
        "def render(items):\n    # TODO: escape html\n    return ', '.join(items)\n\n\n"
        "def total(values):\n    # HACK: floats\n    return sum(values)\n\n\n"
        "class Cache:\n    def lookup(self, key):\n        return key\n\n"
        "    def store(self, key, value):\n        return value\n"
    ),
    "pkg/poor.py": "def helper(x):\n    return x\n\n\ndef checked(y):\n    return y\n",
    "tests/test_poor.py": "from pkg.poor import checked\n\n\ndef test_checked():\n    assert checked(1) == 1\n",
}


def requested(result: dg.EvaluateAutomationConditionsResult) -> set[dg.AssetKey]:
    return {key for key in LEARNING_KEYS if result.get_requested_partitions(key)}


def run_cycle_job(
    defs: dg.Definitions, instance, repo: Path, agents: list[type], cycle_id: str
) -> str:
    result = defs.get_job_def("nomic_cycle").execute_in_process(
        instance=instance,
        run_config=fast_cycle_config(repo=str(repo), agents=[ta.spec(a) for a in agents]),
        tags={"nomic/cycle_id": cycle_id},
        raise_on_error=False,
    )
    outcome = cycle_record_materialization(instance, cycle_id).metadata["outcome"].value
    # a cycle that fails in IMPLEMENT or VERIFY fails that step (re-executable from failure)
    assert result.success == (outcome not in ("implementation_failed", "verification_failed"))
    return outcome


def materialize_learning(instance, res: dict[str, object]) -> dg.ExecuteInProcessResult:
    result = dg.materialize([*learning_assets, *learning_checks], instance=instance, resources=res)
    assert result.success
    return result


@pytest.mark.slow
def test_cycles_feed_the_learning_assets_and_automation_refreshes_them(
    instance, state_dir: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "target", SIGNAL_REPO)
    res = resources(state_dir, repo=str(repo))
    defs = build_defs(res)
    store = get_cycle_store(state_dir)

    start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert requested(start) == set()  # no cycle yet: nothing to learn from
    assert run_cycle_job(defs, instance, repo, [ta.SpendingAgent], "learn-1") == "committed"
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)
    assert requested(first) == LEARNING_KEYS
    materialize_learning(instance, res)
    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert requested(quiet) == set()

    outcome = run_cycle_job(defs, instance, repo, [ta.Breaker, ta.ProposeRaiser], "learn-2")
    assert outcome == "verification_failed"
    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=quiet.cursor)
    assert requested(again) == LEARNING_KEYS  # a new cycle record: refresh all three
    result = materialize_learning(instance, res)

    # the asset checks ran on real data and passed
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "agent_performance_is_sane": True,
        "pattern_reinforcements_are_sane": True,
        "meta_planner_priorities_are_sane": True,
    }

    # the tables agree with the records
    records = store.all_records()
    assert [r.cycle_id for r in records] == ["learn-1", "learn-2"]
    perf = defs.load_asset_value("agent_performance", instance=instance)
    overall = perf[perf["track"] == "all"].set_index("agent")
    assert set(overall.index) == {"spender", "breaker", "propose-raiser"}
    spender = overall.loc["spender"]
    assert (spender.cycles, spender.wins, spender.verified, spender.commits) == (1, 1, 1, 1)
    assert spender.tokens == sum(ta.SpendingAgent.TOKENS) and spender.usd == ta.SpendingAgent.USD
    assert spender.usd_per_commit == pytest.approx(ta.SpendingAgent.USD)
    assert spender.rating > 1500 > overall.loc["breaker"].rating
    breaker = overall.loc["breaker"]
    assert (breaker.wins, breaker.commits, breaker.failures, breaker.verify_rate) == (1, 0, 1, 0)
    assert math.isnan(breaker.usd_per_commit)
    assert overall.loc["propose-raiser"].failures == 1
    assert overall.loc["propose-raiser"].proposals == 0
    assert set(perf[perf["track"] != "all"]["track"]) == {"developer"}

    patterns = defs.load_asset_value("pattern_reinforcements", instance=instance).set_index("kind")
    assert patterns.loc["scripted-paid", ["attempts", "successes"]].tolist() == [1, 1]
    assert patterns.loc["scripted", ["attempts", "successes"]].tolist() == [1, 0]
    low, high = wilson_interval(1, 1)
    assert patterns.loc["scripted-paid", "ci_low"] == pytest.approx(low)
    assert patterns.loc["scripted-paid", "ci_high"] == pytest.approx(high) == 1.0
    assert patterns.loc["scripted-paid", "median_usd"] == pytest.approx(ta.SpendingAgent.USD)

    learned = store.get("learn-2")
    assert learned is not None and learned.agent_failures.keys() == {"propose-raiser"}
    assert any(e.phase.value == "verify" for e in learned.surprise_events)  # low risk, failed
    assert learned.failing_tests and learned.failing_tests[0].startswith("tests/")

    # numeric metadata for the UI's plots
    mats = {
        m.asset_key: m.metadata for m in result.asset_materializations_for_node("agent_performance")
    }
    md = mats[dg.AssetKey("agent_performance")]
    assert md["cycles_counted"].value == 2 and md["commits_landed"].value == 1
    assert md["usd_per_landed_commit"].value == pytest.approx(ta.SpendingAgent.USD)
    pmd = result.asset_materializations_for_node("pattern_reinforcements")[0].metadata
    assert pmd["success_rate"].value == 0.5 and pmd["success_rate/scripted"].value == 0.0

    # the priorities come from the target's signals, with the panel it learned
    priorities: Priorities = defs.load_asset_value("meta_planner_priorities", instance=instance)
    assert priorities.targets == [str(repo)] and priorities.signals_total > 0
    assert priorities.goals and all(g.file_hints == ["calc/extra.py"] for g in priorities.goals)
    assert {g.kind for g in priorities.goals} >= {"lint-fix", "add-tests"}


def _planted_frame(**values: object) -> pd.DataFrame:
    frame = agent_performance_table([planted_record("x1")])
    for column, value in values.items():
        frame[column] = value
    return frame


@pytest.mark.slow
def test_asset_checks_fail_on_planted_nonsense(instance) -> None:
    @dg.asset(name="agent_performance")
    def planted_performance() -> pd.DataFrame:
        return _planted_frame(win_rate=1.5, usd=-2.0)

    @dg.asset(name="pattern_reinforcements")
    def planted_patterns() -> pd.DataFrame:
        frame = pattern_table([planted_record("x1"), planted_record("x2", success=False)])
        frame["success_rate"] = -0.2
        return frame

    @dg.asset(name="meta_planner_priorities")
    def planted_priorities() -> Priorities:
        return Priorities(signals_total=7, goals=[])

    result = dg.materialize(
        [planted_performance, planted_patterns, planted_priorities, *learning_checks],
        instance=instance,
        raise_on_error=False,
    )
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {name: e.passed for name, e in evaluations.items()} == {
        "agent_performance_is_sane": False,
        "pattern_reinforcements_are_sane": False,
        "meta_planner_priorities_are_sane": False,
    }
    perf = evaluations["agent_performance_is_sane"].description or ""
    assert "win_rate outside 0-1" in perf and "usd is negative" in perf
    assert "success_rate outside 0-1" in (
        evaluations["pattern_reinforcements_are_sane"].description or ""
    )
    assert "empty priority list" in (
        evaluations["meta_planner_priorities_are_sane"].description or ""
    )


@pytest.mark.slow
def test_priorities_rank_the_signal_rich_module_first(
    instance, state_dir: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "rich", RICH_REPO)
    res = resources(state_dir, repo=str(repo))
    materialize_learning(instance, res)
    priorities: Priorities = build_defs(res).load_asset_value(
        "meta_planner_priorities", instance=instance
    )
    goals = priorities.goals
    assert goals and goals[0].file_hints[0] == "pkg/rich.py"
    assert all(g.file_hints[0] == "pkg/rich.py" for g in goals)
    assert [g.priority for g in goals] == list(range(1, len(goals) + 1))
    assert [g.score for g in goals] == sorted((g.score for g in goals), reverse=True)
    by_kind = {g.kind: g for g in goals}
    assert by_kind["add-tests"].track is Track.QA and by_kind["lint-fix"].track is Track.DEVELOPER
    assert "pkg/poor.py" in by_kind["add-tests"].file_hints  # helper() is untested too
    assert by_kind["resolve-markers"].file_hints == ["pkg/rich.py"]
    assert by_kind["lint-fix"].goal.startswith("Fix the lint findings in pkg/rich.py")
    assert goals[0].repo == str(repo) and goals[0].base_sha
    assert priorities.signals_by_source.keys() >= {"ruff", "coverage", "marker"}
    # the planner read a worktree of the base branch and removed it
    assert not any((state_dir / "worktrees").iterdir())


def test_objective_keeps_goals_on_topic_or_falls_back(state_dir: Path, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "rich", RICH_REPO)
    store = get_cycle_store(state_dir)
    target = [PlanTarget(origin=str(repo))]
    on_topic = MetaPlanner(store, objective="increase test coverage").prioritize(target)
    assert [g.kind for g in on_topic.goals] == ["add-tests"]
    assert "objective: increase test coverage" in on_topic.goals[0].goal
    off_topic = MetaPlanner(store, objective="write the deployment documentation website")
    (fallback,) = off_topic.prioritize(target).goals
    assert fallback.goal.startswith("[") and fallback.goal.endswith(
        "] write the deployment documentation website"
    )
    assert fallback.track is Track.SELF_HOSTED  # "deploy"


def test_failing_kinds_rank_down_and_failing_agents_leave_the_panel(
    state_dir: Path, tmp_path: Path
) -> None:
    """Learning from the tables (and W13: contributions are read by agent name)."""
    repo = make_repo(tmp_path / "rich", RICH_REPO)
    history = [
        planted_record(f"f{i}", agent="test-writer", kind="add-tests", success=False, minutes=i)
        for i in range(4)
    ] + [planted_record("l1", agent="lint-fixer", kind="lint-fix", success=True, minutes=9)]
    perf, patterns = agent_performance_table(history), pattern_table(history)
    assert pattern_factor(patterns, "add-tests") < 1.0 < pattern_factor(patterns, "lint-fix")
    store = get_cycle_store(state_dir)
    target = [PlanTarget(origin=str(repo))]
    naive = MetaPlanner(store).prioritize(target)
    learned = MetaPlanner(store, agent_performance=perf, patterns=patterns).prioritize(target)
    rank = {g.kind: g.priority for g in naive.goals}
    learned_rank = {g.kind: g.priority for g in learned.goals}
    assert rank["add-tests"] < rank["lint-fix"]  # more untested functions than lint...
    assert learned_rank["add-tests"] > learned_rank["lint-fix"]  # ...but adding tests keeps failing
    tests_goal = next(g for g in learned.goals if g.kind == "add-tests")
    assert "test-writer" not in tests_goal.agents and "lint-fixer" in tests_goal.agents
    assert "left test-writer out: it failed in 4 of 4 cycles" in tests_goal.rationale
    assert "add-tests landed 0 of 4 tries" in tests_goal.rationale
    assert all(g.agents == ["lint-fixer", "test-writer", "dead-code"] for g in naive.goals)


def test_failing_and_flaky_tests_come_from_the_store(state_dir: Path, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "rich", RICH_REPO)
    store = get_cycle_store(state_dir)
    origin = str(repo)
    store.save_sync(
        planted_record("b1", origin=origin, minutes=1, baseline_failing=["tests/test_a.py::test_x"])
    )
    store.save_sync(planted_record("b2", origin=origin, minutes=2))
    store.save_sync(
        planted_record("b3", origin=origin, minutes=3, baseline_failing=["tests/test_b.py::test_y"])
    )
    priorities = MetaPlanner(store).prioritize([PlanTarget(origin=origin)])
    by_kind = {g.kind: g for g in priorities.goals}
    assert by_kind["fix-tests"].file_hints == ["tests/test_b.py"]
    assert by_kind["stabilize-tests"].file_hints == ["tests/test_a.py"]
    assert priorities.signals_by_source["failing-test"] == 1
    assert priorities.signals_by_source["flaky-test"] == 1


def test_goal_run_key_is_stable_per_goal_and_base() -> None:
    base = dict(
        id="x",
        priority=1,
        track=Track.QA,
        goal="Add tests",
        kind="add-tests",
        rationale="-",
        expected_impact="low",
        score=1.0,
        signals=1,
        base_sha="a" * 40,
    )
    one, same = PrioritizedGoal(**base), PrioritizedGoal(**{**base, "priority": 3, "id": "y"})
    moved = PrioritizedGoal(**{**base, "base_sha": "b" * 40})
    assert one.run_key == same.run_key != moved.run_key
    assert one.cycle_id.startswith("p") and len(one.cycle_id) == 12
