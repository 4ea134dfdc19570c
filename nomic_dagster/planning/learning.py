"""Cross-cycle learning tables, computed from the cycle store's records (no Dagster here).

- `agent_performance_table`: one row per agent (track "all") and per agent and track:
  cycles, proposals, wins, implementations verified, commits landed, failures, tokens,
  USD, cost per landed commit, rates, and an Elo-like rating updated from outcomes.
- `pattern_table`: one row per kind of improvement: attempts, successes, success rate
  with a 95 % Wilson interval, typical (median) cost, lines and duration.
- `validate_*`: what the asset checks enforce (empty list: the table makes sense).

The rating: every agent starts at 1500. When a cycle tries the debate winner's change
(committed, verification or implementation failed, or rejected by scope) the winner plays
one Elo game against "the task" (rated 1500): a landed commit is a win, anything else a
loss (K = 32). An agent that failed during the debate loses a half-weight game (K = 16).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd

from nomic_dagster.planning.cycle_store import TRIED, NomicCycleRecord

ALL_TRACKS = "all"
BASE_RATING = 1500.0
TASK_RATING = 1500.0
K_FACTOR = 32.0
Z_95 = 1.959963984540054

# Counts and money per agent: never negative (the asset check says so).
AGENT_NONNEGATIVE = [
    "cycles",
    "proposals",
    "wins",
    "implemented",
    "verified",
    "commits",
    "failures",
    "failed_cycles",
    "votes",
    "consensus_aligned",
    "tokens",
    "usd",
    "usd_per_commit",
]
# Shares in 0..1 (checked too).
AGENT_RATES = [
    "win_rate",
    "verify_rate",
    "commit_rate",
    "failure_rate",
    "alignment_rate",
    "quality",
]
AGENT_COLUMNS = ["agent", "track", *AGENT_NONNEGATIVE, *AGENT_RATES, "rating", "last_cycle"]
PATTERN_COLUMNS = [
    "kind",
    "attempts",
    "successes",
    "failures",
    "success_rate",
    "ci_low",
    "ci_high",
    "avg_confidence",
    "median_usd",
    "total_usd",
    "median_lines",
    "median_duration_s",
    "tracks",
    "agents",
    "last_cycle",
]


def _rate(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def wilson_interval(successes: int, attempts: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a success rate ((0, 1) when nothing was tried)."""
    if attempts <= 0:
        return 0.0, 1.0
    p = successes / attempts
    denominator = 1 + z * z / attempts
    centre = (p + z * z / (2 * attempts)) / denominator
    half = z * math.sqrt(p * (1 - p) / attempts + z * z / (4 * attempts * attempts)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def elo_ratings(records: Iterable[NomicCycleRecord]) -> dict[str, float]:
    """Agent ratings after replaying `records` oldest first (see the module docstring)."""
    ratings: dict[str, float] = {}
    for r in sorted(records, key=lambda r: (r.completed_at, r.cycle_id)):
        for agent in r.agent_contributions:
            ratings.setdefault(agent, BASE_RATING)
        for agent in r.agent_failures:
            ratings[agent] = _elo(ratings.get(agent, BASE_RATING), 0.0, K_FACTOR / 2)
        if r.winner_agent and r.outcome in TRIED:
            current = ratings.get(r.winner_agent, BASE_RATING)
            ratings[r.winner_agent] = _elo(current, 1.0 if r.success else 0.0, K_FACTOR)
    return {a: round(v, 2) for a, v in ratings.items()}


def _elo(rating: float, score: float, k: float) -> float:
    expected = 1.0 / (1.0 + 10 ** ((TASK_RATING - rating) / 400.0))
    return rating + k * (score - expected)


def _agent_rows(records: Sequence[NomicCycleRecord], track: str) -> list[dict]:
    ratings = elo_ratings(records)
    rows = []
    agents = sorted({a for r in records for a in r.agent_contributions})
    for agent in agents:
        mine = [r for r in records if agent in r.agent_contributions]
        cs = [r.agent_contributions[agent] for r in mine]  # a mapping name -> contribution (W13)
        proposed = sum(1 for c in cs if c.proposals_made)
        wins = sum(c.proposals_won for c in cs)
        implemented = sum(c.implemented for c in cs)
        verified = sum(c.verified for c in cs)
        commits = sum(c.committed for c in cs)
        failed_cycles = sum(1 for c in cs if c.failures)
        # one final-round vote per cycle in which the panel reached a consensus
        final_votes = sum(
            1 for r, c in zip(mine, cs, strict=True) if r.consensus_reached and c.votes_cast
        )
        aligned = sum(c.consensus_aligned for c in cs)
        usd = round(sum(c.usd for c in cs), 8)
        rows.append(
            {
                "agent": agent,
                "track": track,
                "cycles": len(mine),
                "proposals": sum(c.proposals_made for c in cs),
                "wins": wins,
                "implemented": implemented,
                "verified": verified,
                "commits": commits,
                "failures": sum(c.failures for c in cs),
                "failed_cycles": failed_cycles,
                "votes": sum(c.votes_cast for c in cs),
                "consensus_aligned": aligned,
                "tokens": sum(c.tokens for c in cs),
                "usd": usd,
                "usd_per_commit": usd / commits if commits else math.nan,
                "win_rate": _rate(min(wins, proposed), proposed),
                "verify_rate": _rate(verified, implemented),
                "commit_rate": _rate(commits, wins),
                "failure_rate": _rate(failed_cycles, len(mine)),
                "alignment_rate": _rate(min(aligned, final_votes), final_votes),
                "quality": sum(c.quality_score for c in cs) / len(cs) if cs else 0.0,
                "rating": ratings.get(agent, BASE_RATING),
                "last_cycle": max(mine, key=lambda r: (r.completed_at, r.cycle_id)).cycle_id,
            }
        )
    return rows


def agent_performance_table(records: Sequence[NomicCycleRecord]) -> pd.DataFrame:
    """Per agent (track "all") and per agent and track; see the module docstring."""
    rows = _agent_rows(records, ALL_TRACKS)
    for track in sorted({r.track.value for r in records}):
        rows += _agent_rows([r for r in records if r.track.value == track], track)
    frame = pd.DataFrame(rows, columns=AGENT_COLUMNS)
    return frame.astype({"usd": float, "usd_per_commit": float, "rating": float})


def pattern_table(records: Sequence[NomicCycleRecord]) -> pd.DataFrame:
    """Per kind of improvement: how often it was tried and landed, and what it cost."""
    tries: dict[str, list[tuple[NomicCycleRecord, float, bool]]] = {}
    for r in records:
        for p in r.pattern_reinforcements:
            tries.setdefault(p.pattern_type, []).append((r, p.confidence, p.success))
    rows = []
    for kind, items in sorted(tries.items()):
        attempts = len(items)
        successes = sum(1 for _, _, ok in items if ok)
        low, high = wilson_interval(successes, attempts)
        cycles = [r for r, _, _ in items]
        usd = pd.Series([r.cost_usd for r in cycles], dtype=float)
        rows.append(
            {
                "kind": kind,
                "attempts": attempts,
                "successes": successes,
                "failures": attempts - successes,
                "success_rate": successes / attempts,
                "ci_low": low,
                "ci_high": high,
                "avg_confidence": sum(c for _, c, _ in items) / attempts,
                "median_usd": float(usd.median()),
                "total_usd": float(usd.sum()),
                "median_lines": float(
                    pd.Series([r.lines_added + r.lines_removed for r in cycles]).median()
                ),
                "median_duration_s": float(
                    pd.Series([r.duration_seconds for r in cycles]).median()
                ),
                "tracks": ",".join(sorted({r.track.value for r in cycles})),
                "agents": ",".join(sorted({r.winner_agent or "" for r in cycles} - {""})),
                "last_cycle": max(cycles, key=lambda r: (r.completed_at, r.cycle_id)).cycle_id,
            }
        )
    return pd.DataFrame(rows, columns=PATTERN_COLUMNS)


def pattern_factor(patterns: pd.DataFrame, kind: str) -> float:
    """How much the planner trusts a kind of improvement: 2 times the posterior mean success
    rate under a uniform prior, (successes + 1) / (attempts + 2). 1.0 when never tried;
    a kind that keeps failing sinks towards 0, one that keeps landing rises towards 2."""
    if patterns is None or patterns.empty or kind not in set(patterns["kind"]):
        return 1.0
    row = patterns[patterns["kind"] == kind].iloc[0]
    return 2.0 * (int(row["successes"]) + 1) / (int(row["attempts"]) + 2)


# ---------------------------------------------------------------- sanity (asset checks)


def _out_of_unit(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    problems = []
    for column in columns:
        if column not in frame:
            problems.append(f"column {column!r} is missing")
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = frame.loc[values.notna() & ((values < 0) | (values > 1)), column]
        if values.isna().any():
            problems.append(f"{column} is not a number in {int(values.isna().sum())} row(s)")
        if len(bad):
            problems.append(f"{column} outside 0-1: {bad.tolist()[:5]}")
    return problems


def _negative(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    problems = []
    for column in columns:
        if column not in frame:
            problems.append(f"column {column!r} is missing")
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = frame.loc[values < 0, column]
        if len(bad):
            problems.append(f"{column} is negative: {bad.tolist()[:5]}")
    return problems


def validate_agent_performance(frame: pd.DataFrame) -> list[str]:
    problems = _out_of_unit(frame, AGENT_RATES) + _negative(frame, AGENT_NONNEGATIVE)
    if not problems:
        if (frame["wins"] > frame["proposals"]).any():
            problems.append("an agent won more proposals than it made")
        if (frame["commits"] > frame["wins"]).any():
            problems.append("an agent landed more commits than it won debates")
        if not frame["rating"].map(math.isfinite).all():
            problems.append("a rating is not finite")
    return problems


def validate_patterns(frame: pd.DataFrame) -> list[str]:
    problems = _out_of_unit(frame, ["success_rate", "ci_low", "ci_high", "avg_confidence"])
    problems += _negative(frame, ["attempts", "successes", "median_usd", "total_usd"])
    if not problems and len(frame):
        if (frame["successes"] > frame["attempts"]).any():
            problems.append("more successes than attempts")
        outside = (frame["ci_low"] > frame["success_rate"] + 1e-9) | (
            frame["success_rate"] > frame["ci_high"] + 1e-9
        )
        if outside.any():
            problems.append("a success rate lies outside its confidence interval")
    return problems
