"""The cycle store and its learning records, on SQLite and on the real PostgreSQL server.

Every contract test runs against both backends (PostgreSQL: a fresh database per test at
127.0.0.1:5432, user postgres; skipped when absent, a failure on CI).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nomic_dagster.core.records import Outcome, Phase, Track
from nomic_dagster.core.usage import LLMCall, Usage
from nomic_dagster.planning.cycle_store import (
    AgentContribution,
    CycleStore,
    Launch,
    NomicCycleRecord,
    PostgresCycleStore,
    RunFailure,
    SQLiteCycleStore,
    get_cycle_store,
    record_from_state,
    store_cycle,
)
from nomic_dagster_tests.conftest import service_missing
from nomic_dagster_tests.support.learning_fixtures import (
    debate_state,
    learning_record,
    planted_record,
)

PG_HOST = os.environ.get("NOMIC_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("NOMIC_PG_PORT", "5432"))


def _pg_admin():
    import psycopg2

    return psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", connect_timeout=3
    )


@pytest.fixture
def pg_url() -> Iterator[str]:
    try:
        admin = _pg_admin()
    except Exception as exc:
        service_missing(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}: {exc}")
    name = f"nomic_store_{uuid.uuid4().hex[:10]}"
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CycleStore:
    if request.param == "sqlite":
        return get_cycle_store(tmp_path / "state")
    return get_cycle_store(url=request.getfixturevalue("pg_url"))


# ---------------------------------------------------------------- record_from_state


def test_record_from_a_committed_cycle() -> None:
    state, record = debate_state(Outcome.COMMITTED)
    calls = [
        LLMCall(
            agent="beta",
            provider="x",
            model="m",
            step="propose",
            usage=Usage(input_tokens=900, output_tokens=100, usd=0.02),
        ),
        LLMCall(
            agent="beta",
            provider="x",
            model="m",
            step="implement",
            usage=Usage(input_tokens=500, output_tokens=500, usd=0.03),
        ),
    ]
    learned = record_from_state(state, record, calls)
    assert learned.success and learned.outcome is Outcome.COMMITTED
    assert learned.commit_sha == "c" * 40 and learned.branch_name == "nomic/qa/c1"
    assert learned.files_created == ["tests/test_calc.py"] and learned.lines_added == 12
    beta, alpha = learned.agent_contributions["beta"], learned.agent_contributions["alpha"]
    assert (beta.proposals_made, beta.proposals_won, beta.implemented) == (1, 1, 1)
    assert (beta.verified, beta.committed, beta.failures) == (1, 1, 0)
    assert (beta.tokens, beta.usd) == (2000, 0.05)
    assert (alpha.proposals_won, alpha.critiques_given, alpha.critiques_valuable) == (0, 1, 1)
    assert alpha.votes_cast == 2 and alpha.consensus_aligned == 1
    assert (learned.cost_usd, learned.tokens) == (0.05, 2000)
    assert [
        p.model_dump(include={"pattern_type", "success", "confidence"})
        for p in learned.pattern_reinforcements
    ] == [{"pattern_type": "add-tests", "success": True, "confidence": 1.0}]
    assert learned.phases_completed == list(Phase) and learned.phases_skipped == []
    assert learned.surprise_events == []
    assert learned.tests_passed == 4 and learned.failing_tests == []


def test_surprises_low_risk_change_failed_and_debate_changed_the_winner() -> None:
    state, record = debate_state(
        Outcome.VERIFICATION_FAILED,
        changed_by_debate=True,
        agent_failures={"gamma": "propose: ConnectionError: down"},
    )
    learned = record_from_state(state, record, calls=[])
    by_phase = {(e.phase, e.impact) for e in learned.surprise_events}
    assert (Phase.VERIFY, "high") in by_phase  # low risk predicted, verification failed
    assert (Phase.DEBATE, "medium") in by_phase  # vote-only winner != final winner
    changed = next(e for e in learned.surprise_events if "changed the winner" in e.description)
    assert changed.expected.endswith("alpha:lint-fix") and changed.actual == "beta:add-tests"
    assert any(e.description == "agent gamma failed" for e in learned.surprise_events)
    assert learned.agent_contributions["gamma"].failures == 1
    assert learned.agent_contributions["beta"].failures == 1  # its winning change failed
    assert learned.failing_tests == ["tests/test_ops.py::test_add"]
    assert learned.tests_failed == 1 and not learned.success
    assert learned.pattern_reinforcements[0].success is False
    assert Phase.VERIFY not in learned.phases_completed
    assert learned.phases_skipped == [Phase.COMMIT]


def test_surprise_red_baseline_and_its_failing_tests() -> None:
    learned = learning_record(Outcome.BASELINE_RED, baseline_red=True)
    (event,) = learned.surprise_events
    assert event.phase is Phase.CONTEXT and event.impact == "high"
    assert learned.baseline_failing_tests == ["tests/test_ops.py::test_add"]
    assert learned.pattern_reinforcements == [] and learned.agent_contributions == {}


def test_w13_agent_contributions_are_a_name_to_contribution_mapping() -> None:
    """W13: the original read agent_contributions as a list of objects, so every outcome
    became track 'unknown', success False. Here it is a mapping, stored and read as one."""
    learned = learning_record(Outcome.COMMITTED)
    data = learned.model_dump(mode="json")
    assert isinstance(data["agent_contributions"], dict)
    assert set(data["agent_contributions"]) == {"alpha", "beta"}
    back = NomicCycleRecord.model_validate_json(learned.model_dump_json())
    assert back.agent_contributions["beta"].committed == 1
    listed = {**data, "agent_contributions": list(data["agent_contributions"].values())}
    with pytest.raises(ValueError, match="agent_contributions"):
        NomicCycleRecord.model_validate(listed)


def test_seed_form_needs_only_a_cycle_id_and_keys_a_list_of_contributions_by_agent(
    store: CycleStore,
) -> None:
    """The seed's `NomicCycleRecord(cycle_id=..., agent_contributions=[...],
    surprise_events=[...], pattern_reinforcements=[...])`: sensible defaults for the rest,
    and the list of contributions stored in the form finished cycles store them."""
    record = NomicCycleRecord(
        cycle_id="cycle-123",
        agent_contributions=[
            {"agent": "claude", "proposals_made": 2, "proposals_won": 1},
            {"agent_name": "gpt", "votes_cast": 1},
        ],
        surprise_events=[
            {"phase": "verify", "description": "d", "expected": "pass", "actual": "fail"}
        ],
        pattern_reinforcements=[
            {"pattern_type": "add-tests", "description": "d", "success": False}
        ],
    )
    assert set(record.agent_contributions) == {"claude", "gpt"}
    assert record.agent_contributions["claude"] == AgentContribution(
        proposals_made=2, proposals_won=1
    )
    assert (record.outcome, record.success, record.track) == (
        Outcome.ABANDONED,
        False,
        Track.DEVELOPER,
    )
    assert record.completed_at == record.started_at and record.origin == record.repo == ""
    asyncio.run(store.save(record))
    stored = store.get("cycle-123")
    assert stored == record
    assert isinstance(stored.model_dump(mode="json")["agent_contributions"], dict)
    # the stored (dict) form is read back unchanged, with its own outcome and times
    finished = learning_record(Outcome.COMMITTED)
    assert NomicCycleRecord.model_validate(finished.model_dump(mode="json")) == finished
    # outcome and success follow each other when only one is given
    assert NomicCycleRecord(cycle_id="c", success=True).outcome is Outcome.COMMITTED
    assert NomicCycleRecord(cycle_id="c", outcome="committed").success is True
    assert NomicCycleRecord(cycle_id="c", repo="/srv/t").origin == "/srv/t"


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([{"proposals_made": 1}], r"agent_contributions\[0\] names no agent"),
        ([{"agent": "a"}, {"agent_id": "a"}], "names 'a' twice"),
        ([{"agent": "a", "agent_name": "b"}], "names no agent"),
    ],
)
def test_a_list_of_contributions_must_name_each_agent_once(
    items: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        NomicCycleRecord(cycle_id="c", agent_contributions=items)


def test_contributions_add_up() -> None:
    a = AgentContribution(proposals_made=1, usd=0.1, quality_score=1.0)
    b = AgentContribution(proposals_made=2, usd=0.2, failures=1, quality_score=0.0)
    total = a + b
    assert (total.proposals_made, total.failures, total.usd) == (3, 1, 0.3)


# ---------------------------------------------------------------- the store, both backends


def test_store_round_trip_and_queries(store: CycleStore) -> None:
    records = [
        planted_record("r1", agent="alpha", kind="lint-fix", success=True, minutes=1),
        planted_record("r2", agent="beta", kind="add-tests", success=False, minutes=2),
        planted_record(
            "r3", agent="alpha", kind="lint-fix", success=False, minutes=3, origin="/srv/other"
        ),
        learning_record(
            Outcome.VERIFICATION_FAILED, cycle_id="r4", changed_by_debate=True, minutes=4
        ),
    ]
    for r in records[:3]:
        store.save_sync(r)
    asyncio.run(store.save(records[3]))  # the seed's `await store.save(record)`
    assert store.count() == 4 and store.count(origin="/srv/other") == 1
    assert store.get("r2") == records[1] and store.get("nope") is None
    assert [r.cycle_id for r in store.recent(10)] == ["r4", "r3", "r2", "r1"]
    assert [r.cycle_id for r in store.recent(2)] == ["r4", "r3"]
    assert [r.cycle_id for r in store.recent(10, origin="/srv/other")] == ["r3"]
    assert {r.cycle_id for r in store.by_topic("ADD-TESTS")} == {"r2", "r4"}
    assert store.by_topic("100%_sure") == []

    trajectory = store.agent_trajectory("alpha", 10)
    assert [p.cycle_id for p in trajectory.points] == ["r1", "r3", "r4"]  # oldest first
    assert [p.won for p in trajectory.points] == [True, True, False]
    assert trajectory.totals.committed == 1 and trajectory.commit_rate == 0.5
    assert trajectory.failure_rate == round(1 / 3, 4)
    assert store.agent_trajectory("nobody").cycles == 0

    stats = store.pattern_statistics()
    assert (stats["lint-fix"].attempts, stats["lint-fix"].successes) == (2, 1)
    assert stats["lint-fix"].success_rate == 0.5 and stats["add-tests"].success_rate == 0.0
    assert stats["add-tests"].examples == ["r4", "r2"]

    surprises = store.surprises_by_phase()
    assert set(surprises) == {"debate", "verify"}

    # a resumed cycle saves again: one row, the newer content
    store.save_sync(records[0].model_copy(update={"cost_usd": 0.5}))
    assert store.count() == 4 and store.get("r1").cost_usd == 0.5


def test_store_launches_failures_and_pauses(store: CycleStore) -> None:
    launch = Launch(run_key="k1", cycle_id="p1", track=Track.QA, goal="g", source="planner")
    assert store.record_launch(launch) and not store.record_launch(launch)
    store.record_launch(
        Launch(run_key="k2", cycle_id="u1", track=Track.QA, goal="g", source="user")
    )
    assert store.autonomous_launch_count() == 1 and len(store.launches()) == 2
    store.save_sync(planted_record("p1", cost_usd=1.25))
    store.save_sync(planted_record("u1", cost_usd=9.0))
    assert store.autonomous_spend() == 1.25  # the user's cycle is not autonomy's spend
    assert [r.cycle_id for r in store.autonomous_cycles()] == ["p1"]

    failure = RunFailure(run_id="run-1", track=Track.QA, message="boom")
    assert store.record_run_failure(failure) and not store.record_run_failure(failure)
    assert [f.run_id for f in store.run_failures("qa")] == ["run-1"]
    assert not store.track_state("qa").paused
    store.pause_track("qa", "3 failed runs")
    assert store.track_state(Track.QA).paused and [s.track for s in store.paused_tracks()] == [
        Track.QA
    ]
    reset = store.reset_track("qa", by="alice")
    assert not reset.paused and reset.reset_by == "alice" and reset.reset_at is not None
    assert not store.track_state("qa").paused


def test_get_cycle_store_picks_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_dir: Path
) -> None:
    default = get_cycle_store()
    assert isinstance(default, SQLiteCycleStore) and default.path == state_dir / "cycles.db"
    assert get_cycle_store(tmp_path).path == tmp_path / "cycles.db"
    monkeypatch.setenv("NOMIC_CYCLE_STORE_URL", f"sqlite:///{tmp_path}/x.db")
    assert get_cycle_store().path == tmp_path / "x.db"
    monkeypatch.setenv("NOMIC_CYCLE_STORE_URL", "postgresql+psycopg2://u:secret@db:5432/n")
    pg = get_cycle_store()
    assert isinstance(pg, PostgresCycleStore) and pg.url == "postgresql://u:secret@db:5432/n"
    assert "secret" not in repr(pg)
    monkeypatch.setenv("NOMIC_CYCLE_STORE_URL", "mysql://x")
    with pytest.raises(ValueError, match="NOMIC_CYCLE_STORE_URL"):
        get_cycle_store()


def test_store_cycle_writes_to_the_cycles_state_folder(tmp_path: Path) -> None:
    state, record = debate_state(Outcome.COMMITTED, cycle_id="sc1")
    state = state.model_copy(
        update={"settings": state.settings.model_copy(update={"state_dir": str(tmp_path)})}
    )
    saved = store_cycle(state, record)
    assert saved is not None and saved.cycle_id == "sc1"
    rows = (
        sqlite3.connect(tmp_path / "cycles.db")
        .execute("SELECT cycle_id, outcome, success FROM nomic_cycles")
        .fetchall()
    )
    assert rows == [("sc1", "committed", 1)]
    broken = tmp_path / "broken"
    (broken / "cycles.db").mkdir(parents=True)  # an unusable store: the outcome is unaffected
    state = state.model_copy(
        update={"settings": state.settings.model_copy(update={"state_dir": str(broken)})}
    )
    assert store_cycle(state, record) is None


@pytest.mark.postgres
def test_postgres_store_keeps_the_record_as_jsonb(pg_url: str) -> None:
    store = get_cycle_store(url=pg_url)
    store.save_sync(learning_record(Outcome.COMMITTED, cycle_id="j1"))
    import psycopg2

    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pg_typeof(data)::text, data -> 'agent_contributions' -> 'beta' ->> 'committed' "
            "FROM nomic_cycles WHERE cycle_id = 'j1'"
        )
        assert cur.fetchone() == ("jsonb", "1")
    conn.close()
