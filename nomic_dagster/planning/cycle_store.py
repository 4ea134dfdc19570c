"""The cycle store: one `NomicCycleRecord` per finished cycle, for cross-cycle learning.

`CycleRecord` (records.py) says what a cycle did; `NomicCycleRecord` adds what the
learning tables and the meta-planner need and the short record leaves out: each agent's
contributions (proposals made and won, critiques, votes, alignment with the consensus,
implementations verified and committed, failures, tokens and USD), surprise events
(expected vs actual), pattern reinforcements (which kind of improvement was tried and
whether it landed), the tests that failed, and the cycle's cost. `record_from_state`
builds it from the final `CycleState` and its `CycleRecord`; `store_cycle` is the one
call `finish_cycle` makes.

Backends, one interface (`CycleStore`):

- SQLite (default): `<state dir>/cycles.db` (`nomic_dagster.core.settings.state_dir`).
- PostgreSQL when `$NOMIC_CYCLE_STORE_URL` is `postgresql://user:pw@host:port/db`
  (psycopg2; the record is a JSONB column, agent queries use JSONB operators).

Besides cycles the store keeps what autonomy needs durably: the launches the planner
sensor and the schedules made (run key, cycle id, source), the run failures per track,
and which tracks are paused after repeated failures (until a person resets them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from nomic_dagster.core.records import (
    CycleRecord,
    Outcome,
    Phase,
    Record,
    TestInventory,
    Track,
    utcnow,
)
from nomic_dagster.core.settings import state_dir

if TYPE_CHECKING:
    from nomic_dagster.core.state import CycleState
    from nomic_dagster.core.usage import LLMCall

log = logging.getLogger("nomic_dagster.planning.cycle_store")

STORE_URL_ENV = "NOMIC_CYCLE_STORE_URL"
SQLITE_FILE = "cycles.db"
Impact = Literal["low", "medium", "high"]
LaunchSource = Literal["planner", "schedule", "user"]
# Outcomes where the debate's winner was designed and then tried: these reinforce (or
# weaken) the winner's kind of improvement. An earlier end says nothing about the kind.
TRIED = (
    Outcome.COMMITTED,
    Outcome.REJECTED_BY_SCOPE,
    Outcome.IMPLEMENTATION_FAILED,
    Outcome.VERIFICATION_FAILED,
)
WINNER_FAILURES = (
    Outcome.REJECTED_BY_SCOPE,
    Outcome.IMPLEMENTATION_FAILED,
    Outcome.VERIFICATION_FAILED,
)


# ---------------------------------------------------------------- records


class AgentContribution(Record):
    """What one agent did in one cycle (summed over cycles by `__add__`)."""

    proposals_made: int = Field(0, ge=0)
    proposals_won: int = Field(0, ge=0)
    critiques_given: int = Field(0, ge=0)
    critiques_valuable: int = Field(0, ge=0)  # its stance on the winner matched the outcome
    votes_cast: int = Field(0, ge=0)
    consensus_aligned: int = Field(0, ge=0)  # final-round votes for the consensus winner
    implemented: int = Field(0, ge=0)  # its design was implemented (a non-empty change)
    verified: int = Field(0, ge=0)
    committed: int = Field(0, ge=0)
    failures: int = Field(0, ge=0)  # failed in the debate, or its winning change failed
    tokens: int = Field(0, ge=0)
    usd: float = Field(0.0, ge=0.0)
    quality_score: float = Field(0.5, ge=0.0, le=1.0)

    def __add__(self, other: AgentContribution) -> AgentContribution:
        summed = {
            name: getattr(self, name) + getattr(other, name)
            for name in type(self).model_fields
            if name != "quality_score"
        }
        summed["usd"] = round(summed["usd"], 8)
        return AgentContribution(
            **summed, quality_score=(self.quality_score + other.quality_score) / 2
        )


class SurpriseEvent(Record):
    """Something the cycle expected that did not happen."""

    phase: Phase
    description: str
    expected: str
    actual: str
    impact: Impact = "medium"
    timestamp: datetime = Field(default_factory=utcnow)


class PatternReinforcement(Record):
    """One try of a kind of improvement ("lint-fix", "add-tests", "remove-dead-code", ...)."""

    pattern_type: str
    description: str
    success: bool
    confidence: float = Field(0.5, ge=0.0, le=1.0)  # the consensus' strength for the try
    agent: str | None = None
    files: list[str] = Field(default_factory=list)
    context: dict[str, str] = Field(default_factory=dict)


# The keys an item of a list of contributions may name its agent by (the seed's list form).
CONTRIBUTION_AGENT_KEYS = ("agent", "agent_name", "agent_id")


def _contributions_by_agent(items: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """The seed's list of contributions, keyed by the agent each item names."""
    keyed: dict[str, Any] = {}
    for n, item in enumerate(items):
        fields = dict(item) if isinstance(item, dict) else None
        names = [fields.pop(k) for k in CONTRIBUTION_AGENT_KEYS if k in fields] if fields else []
        if fields is None or len(names) != 1 or not isinstance(names[0], str) or not names[0]:
            raise ValueError(
                f"agent_contributions[{n}] names no agent: give each item of the list one of "
                f"{', '.join(CONTRIBUTION_AGENT_KEYS)} (e.g. {{'agent': 'claude', "
                "'proposals_made': 1}), or pass a dict agent -> contribution"
            )
        if names[0] in keyed:
            raise ValueError(
                f"agent_contributions names {names[0]!r} twice: give one item per agent"
            )
        keyed[names[0]] = fields
    return keyed


class NomicCycleRecord(Record):
    """The learning record of one cycle (the seed's `NomicCycleRecord`).

    `record_from_state` fills every field. Written by hand, as in the seed
    (`NomicCycleRecord(cycle_id=..., agent_contributions=[...], surprise_events=[...],
    pattern_reinforcements=[...])`), only `cycle_id` is needed: the target and goal default
    to empty, the times to now, `success` to whether `outcome` is committed and `outcome`
    to committed when `success` says so, else abandoned (nothing landed that the record
    knows of). Contributions may be the seed's list, each item naming its `agent`; they
    are stored keyed by agent, as `record_from_state` writes them.
    """

    schema_version: int = 1
    cycle_id: str
    run_id: str | None = None
    track: Track = Track.DEVELOPER
    origin: str = ""  # the target as named (path or URL); defaults to `repo`
    repo: str = ""
    base_branch: str | None = None
    base_sha: str | None = None
    goal: str = ""
    goal_source: str = "default"
    outcome: Outcome
    success: bool  # a verified commit landed
    error_message: str = ""  # the cycle's reason when it did not succeed
    started_at: datetime = Field(default_factory=utcnow)
    completed_at: datetime
    duration_seconds: float = Field(0.0, ge=0.0)
    ended_in: Phase | None = None
    phases_completed: list[Phase] = Field(default_factory=list)
    phases_skipped: list[Phase] = Field(default_factory=list)
    phase_durations: dict[str, float] = Field(default_factory=dict)
    # debate
    topics_debated: list[str] = Field(default_factory=list)
    consensus_reached: bool = False
    changed_by_debate: bool = False
    first_round_winner: str | None = None
    winner: str | None = None
    winner_agent: str | None = None
    winner_kind: str | None = None
    design_risk: str | None = None
    dissent: dict[str, str] = Field(
        default_factory=dict
    )  # final-round voter -> proposal, if not the winner
    debate_proposals: int = 0
    debate_critiques: int = 0
    debate_votes: int = 0
    agent_contributions: dict[str, AgentContribution] = Field(default_factory=dict)
    agent_reliability: dict[str, float] = Field(default_factory=dict)
    agent_failures: dict[str, str] = Field(default_factory=dict)
    # the change
    files_modified: list[str] = Field(default_factory=list)
    files_created: list[str] = Field(default_factory=list)
    files_deleted: list[str] = Field(default_factory=list)
    lines_added: int = Field(0, ge=0)
    lines_removed: int = Field(0, ge=0)
    failed_gates: list[str] = Field(default_factory=list)
    # tests (the verification run when there was one, else the baseline)
    tests_green: bool | None = None
    tests_collected: int | None = None
    tests_passed: int | None = None
    tests_failed: int | None = None
    tests_skipped: int | None = None
    failing_tests: list[str] = Field(default_factory=list)  # failed under the change
    baseline_failing_tests: list[str] = Field(default_factory=list)  # failed before any change
    # learning
    surprise_events: list[SurpriseEvent] = Field(default_factory=list)
    pattern_reinforcements: list[PatternReinforcement] = Field(default_factory=list)
    # the commit and the cost
    commit_sha: str | None = None
    branch_name: str | None = None
    merged: bool = False
    cost_usd: float = Field(0.0, ge=0.0)
    tokens: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _seed_form(cls, data: Any) -> Any:
        """Defaults that depend on other fields, and the seed's list of contributions."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("agent_contributions"), list | tuple):
            data["agent_contributions"] = _contributions_by_agent(data["agent_contributions"])
        if "outcome" not in data:
            data["outcome"] = Outcome.COMMITTED if data.get("success") else Outcome.ABANDONED
        if "success" not in data:
            data["success"] = Outcome(data["outcome"]) is Outcome.COMMITTED
        data.setdefault("origin", data.get("repo", ""))
        data.setdefault("started_at", utcnow())
        data.setdefault("completed_at", data["started_at"])
        return data

    @property
    def files(self) -> list[str]:
        return sorted({*self.files_modified, *self.files_created, *self.files_deleted})

    @property
    def topics_text(self) -> str:
        return "\n".join(self.topics_debated)


# ---------------------------------------------------------------- from a cycle

_FAILED_TEST = re.compile(r"^(?:FAILED|ERROR) (\S+::\S+|\S+\.py)", re.MULTILINE)
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?)\b")


def failing_tests(inventory: TestInventory | None) -> list[str]:
    """The test ids pytest's short summary names as failed or erroring."""
    if inventory is None or inventory.passed:
        return []
    return sorted(set(_FAILED_TEST.findall(inventory.output_tail)))


def _counts(inventory: TestInventory | None) -> dict[str, int]:
    """passed / failed (errors included) / skipped, from pytest's summary line."""
    found: dict[str, int] = {}
    for n, word in _COUNT.findall(inventory.output_tail if inventory else ""):
        key = "errors" if word.startswith("error") else word
        found[key] = max(found.get(key, 0), int(n))
    counts = {k: found[k] for k in ("passed", "skipped") if k in found}
    if "failed" in found or "errors" in found:
        counts["failed"] = found.get("failed", 0) + found.get("errors", 0)
    return counts


def _usage_by_agent(calls: Sequence[LLMCall]) -> dict[str, tuple[int, float]]:
    usage: dict[str, tuple[int, float]] = {}
    for call in calls:
        tokens, usd = usage.get(call.agent, (0, 0.0))
        usage[call.agent] = (tokens + call.usage.total_tokens, usd + call.usage.usd)
    return usage


def cycle_calls(state: CycleState) -> list[LLMCall]:
    """The model calls the cycle paid for: the state carries them from phase to phase, so
    they are complete whichever process ran each phase."""
    return list(state.llm_calls)


def record_from_state(
    state: CycleState, record: CycleRecord, calls: Sequence[LLMCall] | None = None
) -> NomicCycleRecord:
    """The learning record of a finished cycle: `record` says what happened, `state` holds
    the debate, design, change and gates behind it; `calls` are the model calls the cycle
    paid for (default: those its state carries)."""
    debate, design, changes, report = (
        state.debate,
        state.design,
        state.changeset,
        state.verification,
    )
    outcome = record.outcome
    winner = debate.winner if debate else None
    committed = outcome is Outcome.COMMITTED
    usage = _usage_by_agent(cycle_calls(state) if calls is None else calls)

    contributions: dict[str, AgentContribution] = {}

    def bump(agent: str, **delta: int) -> None:
        current = contributions.get(agent, AgentContribution())
        contributions[agent] = current.model_copy(
            update={k: getattr(current, k) + v for k, v in delta.items()}
        )

    final_votes = []
    if debate:
        for p in debate.proposals:
            bump(p.agent, proposals_made=1)
        for c in debate.critiques:
            valuable = 0
            if winner and c.proposal_id == winner.id and outcome in TRIED:
                valuable = int(
                    (c.stance == "support" and committed)
                    or (c.stance == "oppose" and not committed)
                )
            bump(c.critic, critiques_given=1, critiques_valuable=valuable)
        final_votes = [v for v in debate.votes if v.round >= 1] or list(debate.votes)
        for v in debate.votes:
            bump(v.voter, votes_cast=1)
        for v in final_votes:
            if debate.consensus.reached and v.proposal_id == debate.consensus.winner_id:
                bump(v.voter, consensus_aligned=1)
        for agent in debate.agent_failures:
            bump(agent, failures=1)
    if winner:
        bump(winner.agent, proposals_won=1)
        if changes is not None and not changes.empty:
            bump(winner.agent, implemented=1)
        if report is not None and report.passed:
            bump(winner.agent, verified=1)
        if committed:
            bump(winner.agent, committed=1)
        if outcome in WINNER_FAILURES:
            bump(winner.agent, failures=1)
    for agent, (tokens, usd) in usage.items():
        current = contributions.get(agent, AgentContribution())
        contributions[agent] = current.model_copy(
            update={"tokens": current.tokens + tokens, "usd": round(current.usd + usd, 8)}
        )

    reliability: dict[str, float] = {}
    for agent, c in contributions.items():
        steps = c.proposals_made + c.critiques_given + c.votes_cast + c.proposals_won
        reliability[agent] = round(max(0.0, 1.0 - c.failures / max(1, steps)), 4)
        votes = sum(1 for v in final_votes if v.voter == agent)
        aligned = c.consensus_aligned / votes if votes else 0.5
        result = 0.5
        if c.proposals_won:
            result = 1.0 if c.committed else 0.0
        quality = (aligned + result + reliability[agent]) / 3
        contributions[agent] = c.model_copy(update={"quality_score": round(quality, 4)})

    dissent: dict[str, str] = {}
    if debate and debate.consensus.winner_id:
        dissent = {
            v.voter: v.proposal_id
            for v in final_votes
            if v.proposal_id != debate.consensus.winner_id
        }

    # ------------------------------------------------------------ surprises
    surprises: list[SurpriseEvent] = []
    if outcome is Outcome.BASELINE_RED:
        surprises.append(
            SurpriseEvent(
                phase=Phase.CONTEXT,
                description="the target's tests were red before any change",
                expected="a green baseline",
                actual=record.reason,
                impact="high",
            )
        )
    if debate:
        c = debate.consensus
        if c.changed_by_debate:
            surprises.append(
                SurpriseEvent(
                    phase=Phase.DEBATE,
                    description="the critiques changed the winner",
                    expected=f"the vote-only winner {c.first_round_winner_id}",
                    actual=f"{c.winner_id or 'no winner'}",
                    impact="medium",
                )
            )
        for agent, failure in sorted(debate.agent_failures.items()):
            surprises.append(
                SurpriseEvent(
                    phase=Phase.DEBATE,
                    description=f"agent {agent} failed",
                    expected=f"{agent} takes part in the debate",
                    actual=failure[:300],
                    impact="medium",
                )
            )
    predicted_risk = design.risk if design else None
    if winner and predicted_risk is None:
        predicted_risk = "low" if winner.risk < 0.25 else "medium" if winner.risk < 0.6 else "high"
    if winner and outcome is Outcome.VERIFICATION_FAILED and predicted_risk == "low":
        surprises.append(
            SurpriseEvent(
                phase=Phase.VERIFY,
                description=f"a low-risk {winner.kind} change failed verification",
                expected="a low-risk change passes verification",
                actual=", ".join(g.name for g in report.failed_gates) if report else record.reason,
                impact="high",
            )
        )
    if winner and outcome is Outcome.IMPLEMENTATION_FAILED:
        surprises.append(
            SurpriseEvent(
                phase=Phase.IMPLEMENT,
                description=f"{winner.agent} could not implement its own design",
                expected="the winner implements what it designed",
                actual=record.reason[:300],
                impact="high" if predicted_risk == "low" else "medium",
            )
        )
    if winner and outcome is Outcome.REJECTED_BY_SCOPE:
        surprises.append(
            SurpriseEvent(
                phase=Phase.DESIGN,
                description=f"{winner.agent}'s design left the allowed scope",
                expected="a design within the protected paths and the file budget",
                actual=record.reason[:300],
                impact="medium",
            )
        )
    if winner and changes is not None and not changes.empty:
        actual_lines = changes.lines_added + changes.lines_removed
        if actual_lines > 3 * max(10, winner.estimated_lines):
            surprises.append(
                SurpriseEvent(
                    phase=Phase.IMPLEMENT,
                    description="the change was much larger than proposed",
                    expected=f"about {winner.estimated_lines} changed lines",
                    actual=f"{actual_lines} changed lines",
                    impact="low",
                )
            )

    # ------------------------------------------------------------ reinforcements
    reinforcements: list[PatternReinforcement] = []
    if winner and outcome in TRIED:
        c = debate.consensus if debate else None
        confidence = c.votes_for_winner / c.voters if c and c.voters else 0.5
        reinforcements.append(
            PatternReinforcement(
                pattern_type=winner.kind,
                description=winner.title,
                success=committed,
                confidence=round(min(1.0, max(0.0, confidence)), 4),
                agent=winner.agent,
                files=list(record.files or winner.files),
                context={
                    "outcome": outcome.value,
                    "track": record.track.value,
                    "origin": record.origin,
                    **(
                        {"failed_gates": ",".join(record.failed_gates)}
                        if record.failed_gates
                        else {}
                    ),
                },
            )
        )

    # ------------------------------------------------------------ tests and files
    final_tests = report.tests if report and report.tests else None
    baseline = state.context.tests if state.context else None
    shown = final_tests or baseline
    counts = _counts(shown)
    by_status: dict[str, list[str]] = {"added": [], "deleted": [], "modified": []}
    for f in changes.files if changes else []:
        by_status[
            "added" if f.status == "added" else "deleted" if f.status == "deleted" else "modified"
        ].append(f.path)

    durations = record.phase_durations
    completed = [
        p
        for p in Phase
        if p.value in durations and not (p == state.ended_in and outcome is not Outcome.COMMITTED)
    ]
    skipped = [p for p in Phase if p.value not in durations]
    topics = [record.goal.text]
    if debate:
        topics += [f"{p.kind}: {p.title}" for p in debate.proposals]
    total_tokens = sum(t for t, _ in usage.values())
    total_usd = round(sum(u for _, u in usage.values()), 8)
    return NomicCycleRecord(
        cycle_id=record.cycle_id,
        run_id=record.run_id,
        track=record.track,
        origin=record.origin,
        repo=record.repo,
        base_branch=record.base_branch,
        base_sha=record.base_sha,
        goal=record.goal.text,
        goal_source=record.goal.source,
        outcome=outcome,
        success=committed,
        error_message="" if committed else record.reason,
        started_at=record.started_at,
        completed_at=record.finished_at,
        duration_seconds=max(0.0, round(record.duration_s, 3)),
        ended_in=state.ended_in,
        phases_completed=completed,
        phases_skipped=skipped,
        phase_durations=dict(durations),
        topics_debated=topics,
        consensus_reached=bool(debate and debate.consensus.reached),
        changed_by_debate=record.changed_by_debate,
        first_round_winner=record.first_round_winner,
        winner=record.winner,
        winner_agent=record.winner_agent,
        winner_kind=record.winner_kind,
        design_risk=design.risk if design else None,
        dissent=dissent,
        debate_proposals=len(debate.proposals) if debate else 0,
        debate_critiques=len(debate.critiques) if debate else 0,
        debate_votes=len(debate.votes) if debate else 0,
        agent_contributions=contributions,
        agent_reliability=reliability,
        agent_failures=dict(debate.agent_failures) if debate else {},
        files_modified=by_status["modified"],
        files_created=by_status["added"],
        files_deleted=by_status["deleted"],
        lines_added=record.lines_added,
        lines_removed=record.lines_removed,
        failed_gates=list(record.failed_gates),
        tests_green=record.tests_passed,
        tests_collected=record.tests_collected,
        tests_passed=counts.get("passed"),
        tests_failed=counts.get("failed", 0 if shown and shown.passed else None),
        tests_skipped=counts.get("skipped"),
        failing_tests=failing_tests(final_tests),
        baseline_failing_tests=failing_tests(baseline),
        surprise_events=surprises,
        pattern_reinforcements=reinforcements,
        commit_sha=record.commit_sha,
        branch_name=record.branch,
        merged=record.merged,
        cost_usd=total_usd,
        tokens=total_tokens,
    )


# ---------------------------------------------------------------- query results


class TrajectoryPoint(Record):
    cycle_id: str
    completed_at: datetime
    track: Track
    outcome: Outcome
    contribution: AgentContribution
    won: bool
    landed: bool  # its winning change was committed


class AgentTrajectory(Record):
    """One agent over its last cycles, oldest first."""

    agent: str
    cycles: int
    points: list[TrajectoryPoint]
    totals: AgentContribution
    acceptance_rate: float  # proposals won / cycles it proposed in
    commit_rate: float  # commits / wins
    failure_rate: float  # cycles with a failure / cycles


class PatternStats(Record):
    pattern_type: str
    attempts: int
    successes: int
    success_rate: float
    avg_confidence: float
    examples: list[str]  # up to 3 cycle ids, newest first


class Launch(Record):
    run_key: str
    cycle_id: str
    track: Track
    goal: str
    source: LaunchSource
    repo: str = ""
    launched_at: datetime = Field(default_factory=utcnow)


class TrackState(Record):
    track: Track
    paused: bool = False
    reason: str = ""
    paused_at: datetime | None = None
    reset_at: datetime | None = None
    reset_by: str = ""


class RunFailure(Record):
    run_id: str
    track: Track
    job_name: str = ""
    cycle_id: str = ""
    message: str = ""
    failed_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------- the store


def _ts(value: datetime) -> float:
    return value.timestamp()


def _from_ts(value: float | None) -> datetime | None:
    if value is None:
        return None
    from datetime import UTC

    return datetime.fromtimestamp(float(value), UTC)


class CycleStore(ABC):
    """Where `NomicCycleRecord`s live. SQL is written once, with `?` placeholders; a backend
    supplies connections (and may answer a query its own way, as PostgreSQL does with JSONB)."""

    backend: str
    json_type: str
    real_type: str
    bool_type: str

    def __init__(self) -> None:
        self._init_lock = threading.Lock()
        self._ready = False

    # ------------------------------------------------------------ plumbing

    @abstractmethod
    @contextmanager
    def _connect(self) -> Iterator[Any]: ...

    @abstractmethod
    def _sql(self, sql: str) -> str:
        """The statement in the driver's placeholder style."""

    def _schema_lock(self, cur: Any) -> None:  # noqa: B027  (optional hook)
        """Serialize schema creation across processes (PostgreSQL)."""

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._ensure_schema()
        with self._connect() as conn:
            cur = conn.cursor()
            cur.execute(self._sql(sql), tuple(params))

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._ensure_schema()
        with self._connect() as conn:
            cur = conn.cursor()
            cur.execute(self._sql(sql), tuple(params))
            return [tuple(row) for row in cur.fetchall()]

    def _ensure_schema(self) -> None:
        if self._ready:
            return
        with self._init_lock:
            if self._ready:
                return
            j, r, b = self.json_type, self.real_type, self.bool_type
            statements = [
                f"""CREATE TABLE IF NOT EXISTS nomic_cycles (
                    cycle_id TEXT PRIMARY KEY,
                    started_ts {r} NOT NULL,
                    completed_ts {r} NOT NULL,
                    track TEXT NOT NULL,
                    origin TEXT NOT NULL,
                    outcome TEXT NOT NULL,
                    success {b} NOT NULL,
                    cost_usd {r} NOT NULL,
                    tokens BIGINT NOT NULL,
                    topics TEXT NOT NULL,
                    data {j} NOT NULL)""",
                "CREATE INDEX IF NOT EXISTS nomic_cycles_completed ON nomic_cycles (completed_ts DESC)",
                "CREATE INDEX IF NOT EXISTS nomic_cycles_origin ON nomic_cycles (origin, completed_ts DESC)",
                "CREATE INDEX IF NOT EXISTS nomic_cycles_success ON nomic_cycles (success)",
                f"""CREATE TABLE IF NOT EXISTS nomic_launches (
                    run_key TEXT PRIMARY KEY,
                    cycle_id TEXT NOT NULL,
                    track TEXT NOT NULL,
                    goal TEXT NOT NULL,
                    source TEXT NOT NULL,
                    repo TEXT NOT NULL,
                    launched_ts {r} NOT NULL)""",
                "CREATE INDEX IF NOT EXISTS nomic_launches_cycle ON nomic_launches (cycle_id)",
                f"""CREATE TABLE IF NOT EXISTS nomic_track_state (
                    track TEXT PRIMARY KEY,
                    paused {b} NOT NULL,
                    reason TEXT NOT NULL,
                    paused_ts {r},
                    reset_ts {r},
                    reset_by TEXT NOT NULL)""",
                f"""CREATE TABLE IF NOT EXISTS nomic_run_failures (
                    run_id TEXT PRIMARY KEY,
                    track TEXT NOT NULL,
                    job_name TEXT NOT NULL,
                    cycle_id TEXT NOT NULL,
                    message TEXT NOT NULL,
                    failed_ts {r} NOT NULL)""",
            ]
            with self._connect() as conn:
                cur = conn.cursor()
                self._schema_lock(cur)
                for statement in statements:
                    cur.execute(statement)
            self._ready = True

    def _json_param(self, record: NomicCycleRecord) -> Any:
        return record.model_dump_json()

    @staticmethod
    def _load(raw: Any) -> NomicCycleRecord | None:
        try:
            if isinstance(raw, str | bytes):
                return NomicCycleRecord.model_validate_json(raw)
            return NomicCycleRecord.model_validate(raw)
        except ValueError:
            log.warning("skipping a stored cycle record that does not validate")
            return None

    def _records(self, rows: list[tuple[Any, ...]]) -> list[NomicCycleRecord]:
        return [r for r in (self._load(row[0]) for row in rows) if r is not None]

    # ------------------------------------------------------------ cycles

    def save_sync(self, record: NomicCycleRecord) -> None:
        """Insert the record, or replace the one with its cycle id (a resumed cycle)."""
        self._execute(
            """INSERT INTO nomic_cycles
                 (cycle_id, started_ts, completed_ts, track, origin, outcome, success,
                  cost_usd, tokens, topics, data)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (cycle_id) DO UPDATE SET
                 started_ts = excluded.started_ts, completed_ts = excluded.completed_ts,
                 track = excluded.track, origin = excluded.origin, outcome = excluded.outcome,
                 success = excluded.success, cost_usd = excluded.cost_usd,
                 tokens = excluded.tokens, topics = excluded.topics, data = excluded.data""",
            (
                record.cycle_id,
                _ts(record.started_at),
                _ts(record.completed_at),
                record.track.value,
                record.origin,
                record.outcome.value,
                record.success,
                record.cost_usd,
                record.tokens,
                record.topics_text,
                self._json_param(record),
            ),
        )

    async def save(self, record: NomicCycleRecord) -> None:
        """`await store.save(record)`, as in the seed; the write runs in a worker thread."""
        await asyncio.to_thread(self.save_sync, record)

    def get(self, cycle_id: str) -> NomicCycleRecord | None:
        rows = self._query("SELECT data FROM nomic_cycles WHERE cycle_id = ?", (cycle_id,))
        found = self._records(rows)
        return found[0] if found else None

    def recent(self, n: int = 10, origin: str | None = None) -> list[NomicCycleRecord]:
        """The last `n` cycles (of one target when `origin` is given), newest first."""
        if origin is None:
            rows = self._query(
                "SELECT data FROM nomic_cycles ORDER BY completed_ts DESC, cycle_id DESC LIMIT ?",
                (n,),
            )
        else:
            rows = self._query(
                "SELECT data FROM nomic_cycles WHERE origin = ? "
                "ORDER BY completed_ts DESC, cycle_id DESC LIMIT ?",
                (origin, n),
            )
        return self._records(rows)

    def successful(self, n: int = 10) -> list[NomicCycleRecord]:
        rows = self._query(
            "SELECT data FROM nomic_cycles WHERE success = ? "
            "ORDER BY completed_ts DESC, cycle_id DESC LIMIT ?",
            (True, n),
        )
        return self._records(rows)

    def by_topic(self, text: str, n: int = 20) -> list[NomicCycleRecord]:
        """Cycles whose goal or debated proposals mention `text` (case-insensitive), newest first."""
        escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._query(
            "SELECT data FROM nomic_cycles WHERE lower(topics) LIKE ? ESCAPE '\\' "
            "ORDER BY completed_ts DESC, cycle_id DESC LIMIT ?",
            (f"%{escaped}%", n),
        )
        return self._records(rows)

    def count(self, origin: str | None = None) -> int:
        if origin is None:
            rows = self._query("SELECT count(*) FROM nomic_cycles")
        else:
            rows = self._query("SELECT count(*) FROM nomic_cycles WHERE origin = ?", (origin,))
        return int(rows[0][0])

    def _with_agent(self, agent: str, n: int) -> list[NomicCycleRecord]:
        """The last `n` cycles in which `agent` has a contribution, newest first."""
        found: list[NomicCycleRecord] = []
        offset, page = 0, max(50, n * 2)
        while len(found) < n:
            rows = self._query(
                "SELECT data FROM nomic_cycles ORDER BY completed_ts DESC, cycle_id DESC "
                "LIMIT ? OFFSET ?",
                (page, offset),
            )
            if not rows:
                break
            found += [r for r in self._records(rows) if agent in r.agent_contributions]
            offset += page
        return found[:n]

    def agent_trajectory(self, agent: str, n: int = 20) -> AgentTrajectory:
        """How one agent did over its last `n` cycles. `agent_contributions` is a mapping
        name -> contribution (W13: the original iterated it as a list)."""
        records = list(reversed(self._with_agent(agent, n)))
        points: list[TrajectoryPoint] = []
        totals = AgentContribution()
        failed_cycles = 0
        proposed_cycles = 0
        for r in records:
            contribution = r.agent_contributions[agent]
            totals = totals + contribution
            failed_cycles += int(contribution.failures > 0)
            proposed_cycles += int(contribution.proposals_made > 0)
            points.append(
                TrajectoryPoint(
                    cycle_id=r.cycle_id,
                    completed_at=r.completed_at,
                    track=r.track,
                    outcome=r.outcome,
                    contribution=contribution,
                    won=contribution.proposals_won > 0,
                    landed=contribution.committed > 0,
                )
            )
        if records:
            totals = totals.model_copy(
                update={
                    "quality_score": round(
                        sum(p.contribution.quality_score for p in points) / len(points), 4
                    )
                }
            )
        return AgentTrajectory(
            agent=agent,
            cycles=len(records),
            points=points,
            totals=totals,
            acceptance_rate=_rate(totals.proposals_won, proposed_cycles),
            commit_rate=_rate(totals.committed, totals.proposals_won),
            failure_rate=_rate(failed_cycles, len(records)),
        )

    def pattern_statistics(self, n: int = 100) -> dict[str, PatternStats]:
        """Per kind of improvement over the last `n` cycles: tries, successes, success rate,
        average consensus confidence and up to three example cycles."""
        acc: dict[str, list[tuple[str, PatternReinforcement]]] = {}
        for r in self.recent(n):
            for p in r.pattern_reinforcements:
                acc.setdefault(p.pattern_type, []).append((r.cycle_id, p))
        stats = {}
        for kind, tries in sorted(acc.items()):
            successes = sum(1 for _, p in tries if p.success)
            stats[kind] = PatternStats(
                pattern_type=kind,
                attempts=len(tries),
                successes=successes,
                success_rate=_rate(successes, len(tries)),
                avg_confidence=round(sum(p.confidence for _, p in tries) / len(tries), 4),
                examples=[cid for cid, _ in tries[:3]],
            )
        return stats

    def surprises_by_phase(self, n: int = 50) -> dict[str, list[SurpriseEvent]]:
        """The surprise events of the last `n` cycles, grouped by phase, newest first."""
        grouped: dict[str, list[SurpriseEvent]] = {}
        for r in self.recent(n):
            for event in r.surprise_events:
                grouped.setdefault(event.phase.value, []).append(event)
        return dict(sorted(grouped.items()))

    def all_records(self, limit: int = 10_000) -> list[NomicCycleRecord]:
        """Up to `limit` records, oldest first (what the learning tables are computed over)."""
        return list(reversed(self.recent(limit)))

    def delete(self, cycle_id: str) -> None:
        self._execute("DELETE FROM nomic_cycles WHERE cycle_id = ?", (cycle_id,))

    # ------------------------------------------------------------ launches (autonomy)

    def record_launch(self, launch: Launch) -> bool:
        """Remember a launch; False when its run key was launched before."""
        if self.launch(launch.run_key) is not None:
            return False
        self._execute(
            """INSERT INTO nomic_launches (run_key, cycle_id, track, goal, source, repo, launched_ts)
               VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_key) DO NOTHING""",
            (
                launch.run_key,
                launch.cycle_id,
                launch.track.value,
                launch.goal,
                launch.source,
                launch.repo,
                _ts(launch.launched_at),
            ),
        )
        return True

    def launch(self, run_key: str) -> Launch | None:
        rows = self._query(
            "SELECT run_key, cycle_id, track, goal, source, repo, launched_ts "
            "FROM nomic_launches WHERE run_key = ?",
            (run_key,),
        )
        return self._launch(rows[0]) if rows else None

    @staticmethod
    def _launch(row: tuple[Any, ...]) -> Launch:
        return Launch(
            run_key=row[0],
            cycle_id=row[1],
            track=Track(row[2]),
            goal=row[3],
            source=row[4],
            repo=row[5],
            launched_at=_from_ts(row[6]) or utcnow(),
        )

    def launches(self, autonomous_only: bool = False) -> list[Launch]:
        where = "WHERE source <> 'user' " if autonomous_only else ""
        rows = self._query(
            "SELECT run_key, cycle_id, track, goal, source, repo, launched_ts "
            f"FROM nomic_launches {where}ORDER BY launched_ts, run_key"
        )
        return [self._launch(row) for row in rows]

    def autonomous_launch_count(self) -> int:
        return int(self._query("SELECT count(*) FROM nomic_launches WHERE source <> 'user'")[0][0])

    def autonomous_cycles(self, n: int | None = None) -> list[NomicCycleRecord]:
        """Finished cycles that an autonomous launch (planner or schedule) started, newest first."""
        sql = (
            "SELECT c.data FROM nomic_cycles c JOIN nomic_launches l ON l.cycle_id = c.cycle_id "
            "WHERE l.source <> 'user' ORDER BY c.completed_ts DESC, c.cycle_id DESC"
        )
        rows = self._query(sql + " LIMIT ?", (n,)) if n is not None else self._query(sql)
        return self._records(rows)

    def autonomous_spend(self) -> float:
        rows = self._query(
            "SELECT coalesce(sum(c.cost_usd), 0) FROM nomic_cycles c "
            "JOIN nomic_launches l ON l.cycle_id = c.cycle_id WHERE l.source <> 'user'"
        )
        return round(float(rows[0][0] or 0.0), 8)

    # ------------------------------------------------------------ tracks (failure pause)

    def record_run_failure(self, failure: RunFailure) -> bool:
        """Remember a failed run; False when it was recorded before."""
        rows = self._query("SELECT 1 FROM nomic_run_failures WHERE run_id = ?", (failure.run_id,))
        if rows:
            return False
        self._execute(
            """INSERT INTO nomic_run_failures (run_id, track, job_name, cycle_id, message, failed_ts)
               VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING""",
            (
                failure.run_id,
                failure.track.value,
                failure.job_name,
                failure.cycle_id,
                failure.message[:2000],
                _ts(failure.failed_at),
            ),
        )
        return True

    def run_failures(self, track: Track | str | None = None) -> list[RunFailure]:
        if track is None:
            rows = self._query(
                "SELECT run_id, track, job_name, cycle_id, message, failed_ts "
                "FROM nomic_run_failures ORDER BY failed_ts"
            )
        else:
            rows = self._query(
                "SELECT run_id, track, job_name, cycle_id, message, failed_ts "
                "FROM nomic_run_failures WHERE track = ? ORDER BY failed_ts",
                (Track(track).value,),
            )
        return [
            RunFailure(
                run_id=row[0],
                track=Track(row[1]),
                job_name=row[2],
                cycle_id=row[3],
                message=row[4],
                failed_at=_from_ts(row[5]) or utcnow(),
            )
            for row in rows
        ]

    def track_state(self, track: Track | str) -> TrackState:
        t = Track(track)
        rows = self._query(
            "SELECT paused, reason, paused_ts, reset_ts, reset_by FROM nomic_track_state "
            "WHERE track = ?",
            (t.value,),
        )
        if not rows:
            return TrackState(track=t)
        paused, reason, paused_ts, reset_ts, reset_by = rows[0]
        return TrackState(
            track=t,
            paused=bool(paused),
            reason=reason,
            paused_at=_from_ts(paused_ts),
            reset_at=_from_ts(reset_ts),
            reset_by=reset_by,
        )

    def _put_track_state(self, state: TrackState) -> None:
        self._execute(
            """INSERT INTO nomic_track_state (track, paused, reason, paused_ts, reset_ts, reset_by)
               VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT (track) DO UPDATE SET paused = excluded.paused,
                 reason = excluded.reason, paused_ts = excluded.paused_ts,
                 reset_ts = excluded.reset_ts, reset_by = excluded.reset_by""",
            (
                state.track.value,
                state.paused,
                state.reason,
                _ts(state.paused_at) if state.paused_at else None,
                _ts(state.reset_at) if state.reset_at else None,
                state.reset_by,
            ),
        )

    def pause_track(self, track: Track | str, reason: str) -> TrackState:
        state = self.track_state(track).model_copy(
            update={"paused": True, "reason": reason, "paused_at": utcnow()}
        )
        self._put_track_state(state)
        return state

    def reset_track(self, track: Track | str, by: str = "") -> TrackState:
        """Resume launching on a paused track; failures before now no longer count."""
        state = self.track_state(track).model_copy(
            update={"paused": False, "reason": "", "reset_at": utcnow(), "reset_by": by}
        )
        self._put_track_state(state)
        return state

    def paused_tracks(self) -> list[TrackState]:
        return [s for s in (self.track_state(t) for t in Track) if s.paused]


def _rate(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 4) if denominator else 0.0


class SQLiteCycleStore(CycleStore):
    backend = "sqlite"
    json_type = "TEXT"
    real_type = "REAL"
    bool_type = "INTEGER"

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            with conn:  # commit, or roll back on error
                yield conn
        finally:
            conn.close()

    def _sql(self, sql: str) -> str:
        return sql

    def __repr__(self) -> str:
        return f"SQLiteCycleStore({str(self.path)!r})"


class PostgresCycleStore(CycleStore):
    backend = "postgresql"
    json_type = "JSONB"
    real_type = "DOUBLE PRECISION"
    bool_type = "BOOLEAN"

    def __init__(self, url: str) -> None:
        super().__init__()
        # SQLAlchemy-style URLs name the driver; psycopg2 wants a plain libpq URI.
        self.url = re.sub(r"^postgres(?:ql)?(?:\+psycopg2)?://", "postgresql://", url)

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        import psycopg2

        conn = psycopg2.connect(self.url, connect_timeout=10)
        try:
            with conn:  # commit, or roll back on error
                yield conn
        finally:
            conn.close()

    def _sql(self, sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def _schema_lock(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(726173001)")

    def _json_param(self, record: NomicCycleRecord) -> Any:
        return record.model_dump_json()

    def _with_agent(self, agent: str, n: int) -> list[NomicCycleRecord]:
        # JSONB key test, in SQL: `agent_contributions` is an object keyed by agent name.
        self._ensure_schema()
        with self._connect() as conn:
            cur = conn.cursor()
            cur.execute(
                "SELECT data FROM nomic_cycles WHERE (data -> 'agent_contributions') ? %s "
                "ORDER BY completed_ts DESC, cycle_id DESC LIMIT %s",
                (agent, n),
            )
            return self._records([tuple(row) for row in cur.fetchall()])

    def __repr__(self) -> str:
        return f"PostgresCycleStore({re.sub(r'://[^@]*@', '://***@', self.url)!r})"


# ---------------------------------------------------------------- picking a backend

_stores: dict[str, CycleStore] = {}
_stores_lock = threading.Lock()


def get_cycle_store(root: Path | str | None = None, url: str | None = None) -> CycleStore:
    """The cycle store: `url` (or `$NOMIC_CYCLE_STORE_URL`) when it is a PostgreSQL or
    `sqlite:///path` URL, else `cycles.db` in `root` (default: the nomic state folder)."""
    chosen = url if url is not None else os.environ.get(STORE_URL_ENV, "").strip()
    if chosen.startswith(("postgresql", "postgres://")):
        key = chosen
        factory: Any = lambda: PostgresCycleStore(chosen)  # noqa: E731
    else:
        if chosen.startswith("sqlite:///"):
            path = Path(chosen.removeprefix("sqlite:///"))  # sqlite:////abs or sqlite:///rel
        elif chosen:
            raise ValueError(
                f"{STORE_URL_ENV}={chosen!r} is neither postgresql://… nor sqlite:///…"
            )
        else:
            path = Path(root) / SQLITE_FILE if root else state_dir() / SQLITE_FILE
        path = path.expanduser().resolve()
        key = f"sqlite:{path}"
        factory = lambda: SQLiteCycleStore(path)  # noqa: E731
    with _stores_lock:
        if key not in _stores:
            _stores[key] = factory()
        return _stores[key]


def store_cycle(
    state: CycleState, record: CycleRecord, calls: Sequence[LLMCall] | None = None
) -> NomicCycleRecord | None:
    """Build the learning record of a finished cycle and save it in the cycle store.

    `finish_cycle` calls this after it appended the `CycleRecord` to the history; it never
    raises (a store that is down must not change a cycle's outcome) and returns the saved
    record, or None when it could not be saved.
    """
    try:
        learning = record_from_state(state, record, calls)
        get_cycle_store(state_dir(state.settings)).save_sync(learning)
        return learning
    except Exception:
        log.exception("cycle %s: could not save the learning record", record.cycle_id)
        return None
