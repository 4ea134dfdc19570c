"""Assets: the record of every cycle, and the learning tables computed from all of them.

Lineage (as the UI draws it):

    cycle_records ─┬─> agent_performance ─────┐
                   └─> pattern_reinforcements ─┴─> meta_planner_priorities

`cycle_records` is materialized whenever a cycle ends, whatever the outcome and whichever
driver ran it (`orchestration/record_sink.py`: in the run of a cycle job, or as a runless
event from the CLI and the state machine), so the asset catalog lists each cycle with its
latest outcome, winner, files and commit.
The three learning assets read the cycle store (which the cycle jobs fill) and refresh by
declarative automation (`AutomationCondition.eager()`) when new cycle records land; the
`nomic_learning_automation` sensor (definitions.py) evaluates them and runs by default.
They carry numeric metadata the UI plots over time, and asset checks that fail on
nonsense (rates outside 0-1, negative cost, no goal although there are signals).
"""

import math
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from nomic_dagster.core.records import Track
from nomic_dagster.core.settings import TrackChoice
from nomic_dagster.orchestration.autonomy import PlannerResource, store_for
from nomic_dagster.orchestration.partitions import cycles_partitions
from nomic_dagster.orchestration.resources import NomicResource
from nomic_dagster.planning.learning import (
    ALL_TRACKS,
    agent_performance_table,
    pattern_table,
    validate_agent_performance,
    validate_patterns,
)
from nomic_dagster.planning.meta_planner import MetaPlanner, Priorities, plan_targets

CYCLE_RECORDS = dg.AssetKey("cycle_records")
AGENT_PERFORMANCE = dg.AssetKey("agent_performance")
PATTERN_REINFORCEMENTS = dg.AssetKey("pattern_reinforcements")
META_PLANNER_PRIORITIES = dg.AssetKey("meta_planner_priorities")
LEARNING_GROUP = "nomic_learning"
AGENT_TABLE_COLUMNS = ["agent", "track", "cycles", "wins", "verified", "commits", "failures"]
AGENT_TABLE_COLUMNS += ["usd", "usd_per_commit", "commit_rate", "rating"]
PATTERN_TABLE_COLUMNS = ["kind", "attempts", "successes", "success_rate", "ci_low", "ci_high"]
PATTERN_TABLE_COLUMNS += ["median_usd", "median_lines"]

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


def markdown_table(frame: pd.DataFrame, columns: list[str], limit: int = 30) -> str:
    """A small markdown table for the UI (no optional dependency)."""
    if frame.empty:
        return "_no rows yet_"
    shown = frame[columns].head(limit)

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in shown.itertuples(False)]
    return "\n".join(lines)


@dg.asset(
    deps=[cycle_records],
    automation_condition=dg.AutomationCondition.eager(),
    group_name=LEARNING_GROUP,
    kinds={"pandas"},
    description="Per agent (track 'all') and per agent and track: proposals, wins, "
    "implementations verified, commits landed, failures, tokens, USD, cost per landed "
    "commit, rates and an Elo-like rating updated from outcomes.",
)
def agent_performance(nomic: NomicResource, planner: PlannerResource) -> dg.Output[pd.DataFrame]:
    records = store_for(nomic).all_records(planner.history)
    frame = agent_performance_table(records)
    overall = frame[frame["track"] == ALL_TRACKS]
    commits = sum(1 for r in records if r.success)
    usd = float(sum(r.cost_usd for r in records))
    metadata: dict[str, Any] = {
        "cycles_counted": len(records),
        "agents": len(overall),
        "commits_landed": commits,
        "commit_rate": commits / len(records) if records else 0.0,
        "usd_total": usd,
        "tokens_total": int(sum(r.tokens for r in records)),
        "dagster/row_count": len(frame),
        "table": dg.MetadataValue.md(
            markdown_table(
                frame,
                AGENT_TABLE_COLUMNS,
            )
        ),
    }
    if commits:
        metadata["usd_per_landed_commit"] = usd / commits
    for row in overall.itertuples(False):
        metadata[f"rating/{row.agent}"] = float(row.rating)
    return dg.Output(frame, metadata=metadata)


@dg.asset(
    deps=[cycle_records],
    automation_condition=dg.AutomationCondition.eager(),
    group_name=LEARNING_GROUP,
    kinds={"pandas"},
    description="Per kind of improvement (lint-fix, add-tests, remove-dead-code, ...): "
    "attempts, successes, success rate with a 95% Wilson interval, typical cost.",
)
def pattern_reinforcements(
    nomic: NomicResource, planner: PlannerResource
) -> dg.Output[pd.DataFrame]:
    records = store_for(nomic).all_records(planner.history)
    frame = pattern_table(records)
    attempts = int(frame["attempts"].sum()) if len(frame) else 0
    successes = int(frame["successes"].sum()) if len(frame) else 0
    metadata: dict[str, Any] = {
        "cycles_counted": len(records),
        "kinds": len(frame),
        "attempts": attempts,
        "success_rate": successes / attempts if attempts else 0.0,
        "dagster/row_count": len(frame),
        "table": dg.MetadataValue.md(
            markdown_table(
                frame,
                PATTERN_TABLE_COLUMNS,
            )
        ),
    }
    for row in frame.itertuples(False):
        metadata[f"success_rate/{row.kind}"] = float(row.success_rate)
    return dg.Output(frame, metadata=metadata)


class PrioritiesConfig(dg.Config):
    """Per-materialization additions to the planner resource (the launchpad)."""

    objective: str = Field(default="", description="Overrides the planner's objective.")
    user_goals: list[str] = Field(
        default_factory=list,
        description="Goals a person asks for: ranked first, launched once, never held back "
        "by the stopping rules.",
    )
    user_goal_track: TrackChoice = Field(
        default="", description="Track of the user goals (empty: inferred from their words)."
    )


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    group_name=LEARNING_GROUP,
    kinds={"python"},
    description="Ranked goals for the next cycles (track, goal, rationale, expected impact, "
    "priority, focus areas, file hints, panel), from a scan of the targets' base branches "
    "and the learning tables. The planner sensor launches them.",
)
def meta_planner_priorities(
    context: dg.AssetExecutionContext,
    config: PrioritiesConfig,
    agent_performance: pd.DataFrame,
    pattern_reinforcements: pd.DataFrame,
    nomic: NomicResource,
    planner: PlannerResource,
) -> dg.Output[Priorities]:
    store = store_for(nomic)
    tracks = planner.track_list()
    planner_ = MetaPlanner(
        store,
        objective=config.objective or planner.objective,
        tracks=tracks,
        agents=planner.agents,
        max_goals=planner.max_goals,
        agent_performance=agent_performance,
        patterns=pattern_reinforcements,
        root=nomic.state_dir or None,
        mode=planner.mode,
        planner_agents=planner.planner_agents,
        budget_usd=planner.planner_budget_usd,
    )
    targets = plan_targets(store, planner.repo, planner.base_branch, planner.max_targets)
    priorities = planner_.prioritize(
        targets,
        config.user_goals,
        Track(config.user_goal_track) if config.user_goal_track else None,
    )
    for note in priorities.notes:
        context.log.warning(note)
    top = priorities.goals[0] if priorities.goals else None
    metadata: dict[str, Any] = {
        "goals": len(priorities.goals),
        "signals_total": priorities.signals_total,
        "targets": dg.MetadataValue.json(priorities.targets),
        "signals_by_source": dg.MetadataValue.json(priorities.signals_by_source),
        "top_score": top.score if top else 0.0,
        "top_goal": top.goal if top else "",
        "priorities": dg.MetadataValue.md(
            "\n".join(
                f"{g.priority}. **[{g.track.value}] {g.goal}** — {g.expected_impact} impact, "
                f"score {g.score:.2f}; {g.rationale}"
                for g in priorities.goals
            )
            or "_no goals_"
        ),
        "goals_json": dg.MetadataValue.json([g.model_dump(mode="json") for g in priorities.goals]),
        "mode": priorities.mode,
        "requested_mode": priorities.requested_mode,
        "fallback_reason": priorities.fallback_reason,
        "llm_calls": priorities.llm_calls,
        "cost_usd": priorities.cost_usd,
    }
    if priorities.requested_mode == "debate":
        metadata["debate"] = dg.MetadataValue.json(
            {
                "agents": priorities.planner_agents,
                "agent_failures": priorities.agent_failures,
                "votes": [v.model_dump(mode="json") for v in priorities.votes],
                "dropped": [d.model_dump(mode="json") for d in priorities.dropped],
            }
        )
    return dg.Output(priorities, metadata=metadata)


# ---------------------------------------------------------------- checks


def _check(problems: list[str], **metadata: Any) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems)[:2000] if problems else "all values make sense",
        metadata={"problems": len(problems), **metadata},
    )


@dg.asset_check(
    asset=agent_performance,
    blocking=True,
    description="Rates within 0-1, no negative count, token, USD or cost per commit, no "
    "more wins than proposals or commits than wins, finite ratings.",
)
def agent_performance_is_sane(agent_performance: pd.DataFrame) -> dg.AssetCheckResult:
    return _check(validate_agent_performance(agent_performance), rows=len(agent_performance))


@dg.asset_check(
    asset=pattern_reinforcements,
    blocking=True,
    description="Success rates and their confidence intervals within 0-1, the rate inside "
    "its interval, no more successes than attempts, no negative cost.",
)
def pattern_reinforcements_are_sane(
    pattern_reinforcements: pd.DataFrame,
) -> dg.AssetCheckResult:
    return _check(validate_patterns(pattern_reinforcements), rows=len(pattern_reinforcements))


def validate_priorities(priorities: Priorities) -> list[str]:
    problems = []
    if priorities.signals_total > 0 and not priorities.goals:
        problems.append(f"{priorities.signals_total} signals but an empty priority list")
    ranks = [g.priority for g in priorities.goals]
    if ranks != list(range(1, len(ranks) + 1)):
        problems.append(f"priorities are not 1..n in order: {ranks}")
    for g in priorities.goals:
        if not g.goal.strip():
            problems.append(f"goal {g.priority} has no text")
        if g.score < 0 or math.isnan(g.score):
            problems.append(f"goal {g.priority} has score {g.score}")
    if len({g.id for g in priorities.goals}) != len(priorities.goals):
        problems.append("two goals share an id")
    return problems


@dg.asset_check(
    asset=meta_planner_priorities,
    description="A non-empty priority list whenever there are signals; priorities 1..n; "
    "every goal has text, a score >= 0 and its own id.",
)
def meta_planner_priorities_are_sane(meta_planner_priorities: Priorities) -> dg.AssetCheckResult:
    p = meta_planner_priorities
    return _check(validate_priorities(p), goals=len(p.goals), signals=p.signals_total)


learning_assets = [agent_performance, pattern_reinforcements, meta_planner_priorities]
learning_checks = [
    agent_performance_is_sane,
    pattern_reinforcements_are_sane,
    meta_planner_priorities_are_sane,
]
