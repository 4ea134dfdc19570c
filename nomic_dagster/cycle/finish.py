"""How every cycle ends, whichever driver ran it.

`finish_cycle` is the one ending of the plain driver, the Dagster ops, the state machine,
the approval flow and the CLI: it removes the worktree, parks a cycle awaiting approval
(or settles a decided one), appends the `CycleRecord` to the history, stores the learning
record in the cycle store, hands the record to the record sinks, makes the `nomic.cycle`
span and emits CYCLE_FINISHED (the metrics listen to it). So a cycle approved from the CLI
reaches the same places as one run as a Dagster job.

A record sink is any further destination of the record, e.g. the `cycle_records` asset of
a Dagster instance. This layer cannot import Dagster (the layers contract), so the sinks
a driver gets by default are named by import path in `SINK_FACTORIES` and loaded only
where they are configured: the Dagster one when $DAGSTER_HOME holds a dagster.yaml.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from nomic_dagster.agents.cassette import cassette_link
from nomic_dagster.core.events import EventType, bus, tracer
from nomic_dagster.core.phases import REEXECUTABLE_OUTCOMES
from nomic_dagster.core.records import CycleRecord, Outcome, Phase, utcnow
from nomic_dagster.core.settings import state_dir
from nomic_dagster.core.state import CycleState
from nomic_dagster.core.usage import Spend
from nomic_dagster.cycle.approvals import park, settle
from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster.infra.git import close_workspace
from nomic_dagster.planning.cycle_store import store_cycle

log = logging.getLogger("nomic_dagster.cycle.finish")


@runtime_checkable
class RecordSink(Protocol):
    """A further destination of every cycle's record (beyond history and cycle store).

    Called once per finished cycle, and once for a cycle parked awaiting approval (then
    again when it ends). It may raise: `finish_cycle` logs the failure and goes on, since
    the record is already in the history."""

    def record(self, record: CycleRecord, state: CycleState) -> None: ...


# Where a default sink comes from: name -> "module:factory". The factory takes the
# environment and returns a RecordSink (or None: nothing to write to).
DAGSTER_SINK = "nomic_dagster.orchestration.record_sink:from_environment"
SINK_FACTORIES: dict[str, str] = {"dagster": DAGSTER_SINK}


def dagster_home_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """$DAGSTER_HOME names an instance folder with a dagster.yaml (as `make demo` and
    scripts/env.sh set it up). A bare $DAGSTER_HOME is not enough: without the yaml it is
    often a leftover or a test's throwaway folder, and no one looks at its asset catalog."""
    home = environ.get("DAGSTER_HOME", "")
    return bool(home) and (Path(home) / "dagster.yaml").is_file()


def load_sink(name: str, environ: Mapping[str, str] = os.environ) -> RecordSink | None:
    """The sink `SINK_FACTORIES[name]` makes; None (with a warning) when it cannot be made."""
    target = SINK_FACTORIES[name]
    module_name, _, attr = target.partition(":")
    try:
        factory: Callable[[Mapping[str, str]], RecordSink | None] = getattr(
            importlib.import_module(module_name), attr
        )
        return factory(environ)
    except Exception as exc:  # a broken sink setup must not stop the cycle from ending
        log.warning(
            "record sink %r (%s) could not be set up: %s: %s; the cycle is still recorded "
            "in the history (fix the configuration it reads, e.g. $DAGSTER_HOME/dagster.yaml)",
            name,
            target,
            type(exc).__name__,
            exc,
        )
        return None


def configured_sinks(environ: Mapping[str, str] = os.environ) -> list[RecordSink]:
    """The sinks the environment asks for: the Dagster instance's `cycle_records` asset
    when $DAGSTER_HOME holds a dagster.yaml; none otherwise."""
    names = ["dagster"] if dagster_home_configured(environ) else []
    sinks = [load_sink(name, environ) for name in names]
    return [sink for sink in sinks if sink is not None]


def to_record(state: CycleState) -> CycleRecord:
    ws, debate, cs, report = state.workspace, state.debate, state.changeset, state.verification
    winner = debate.winner if debate else None
    tests = (
        report.tests
        if report and report.tests
        else (state.context.tests if state.context else None)
    )
    return CycleRecord(
        cycle_id=state.cycle_id,
        run_id=state.run_id,
        track=state.settings.track_enum,
        goal=state.goal,
        origin=ws.origin if ws else (state.settings.repo or "demo"),
        repo=ws.source_repo if ws else (state.settings.repo or ""),
        base_branch=ws.base_branch if ws else state.settings.base_branch,
        base_sha=ws.base_sha if ws else None,
        outcome=state.outcome or Outcome.ERROR,
        reason=state.reason,
        agents=list(state.settings.agents),
        winner=winner.id if winner else None,
        winner_agent=winner.agent if winner else None,
        winner_kind=winner.kind if winner else None,
        first_round_winner=debate.consensus.first_round_winner_id if debate else None,
        changed_by_debate=debate.consensus.changed_by_debate if debate else False,
        proposals=len(debate.proposals) if debate else 0,
        files=cs.paths if cs else [],
        lines_added=cs.lines_added if cs else 0,
        lines_removed=cs.lines_removed if cs else 0,
        tests_passed=tests.passed if tests else None,
        tests_collected=tests.collected if tests else None,
        failed_gates=[g.name for g in report.failed_gates] if report else [],
        branch=state.commit.branch if state.commit else None,
        commit_sha=state.commit.sha if state.commit else None,
        merged=state.commit.merged if state.commit else False,
        **_spend(state).model_dump(),
        phase_durations=state.phase_durations,
        cassette=cassette_link(state.settings, state.cycle_id),
        started_at=state.started_at,
        finished_at=utcnow(),
    )


def _spend(state: CycleState) -> Spend:
    spend = Spend.of(state.llm_calls)
    if not state.earlier_attempts_usd:
        return spend
    by_phase = {**spend.cost_by_phase, "earlier_attempts": state.earlier_attempts_usd}
    return spend.model_copy(update={"cost_usd": state.spent_usd, "cost_by_phase": by_phase})


def _to_sinks(sinks: Sequence[RecordSink], record: CycleRecord, state: CycleState) -> None:
    for sink in sinks:
        try:
            sink.record(record, state)
        except Exception:  # the record is in the history already; a sink is one more copy
            log.exception(
                "cycle %s: record sink %s failed (the cycle's record is kept in %s)",
                record.cycle_id,
                type(sink).__name__,
                CycleHistory(state_dir(state.settings)).path,
            )


def finish_cycle(state: CycleState, sinks: Sequence[RecordSink] | None = None) -> CycleRecord:
    """Remove the worktree (whatever the outcome), store and return the cycle record.

    `sinks`: further destinations of the record; None means the ones the environment
    configures (`configured_sinks`). A driver that writes the record somewhere itself (the
    Dagster ops, which materialize inside their run) passes its own."""
    if sinks is None:
        sinks = configured_sinks()
    if state.workspace is not None:
        try:
            close_workspace(state.workspace)
        except Exception:  # cleanup trouble must not hide the cycle's outcome
            log.exception("cycle %s: could not remove the worktree", state.cycle_id)
    if state.outcome is None:
        state = state.end(
            Outcome.ERROR, "the cycle stopped before it reached an outcome", Phase.CONTEXT
        )
    if state.outcome is Outcome.AWAITING_APPROVAL:
        # Paused, not finished: the state waits in the approval store; the history and the
        # cycle store get the cycle's record when it ends (approved and run, or rejected).
        try:
            park(state)
        except Exception as exc:  # the design could not be kept: the cycle cannot go on
            log.exception("cycle %s: could not store the design for approval", state.cycle_id)
            state = state.end(
                Outcome.ERROR, f"could not store the design for approval: {exc}", Phase.DESIGN
            )
        else:
            bus.emit(EventType.PAUSED, state.cycle_id, reason=state.reason, phase="design")
            log.info("cycle %s: %s", state.cycle_id, state.reason)
            record = to_record(state)
            _to_sinks(sinks, record, state)  # e.g. the asset shows it awaiting approval
            return record
    record = to_record(state)
    # A cycle re-executed from failure (or resumed after approval) ends a second time: its
    # new record replaces the failed one, so the history holds one record per cycle.
    CycleHistory(state_dir(state.settings)).append(record, replace_outcomes=REEXECUTABLE_OUTCOMES)
    settle(state_dir(state.settings), record)  # an approved or rejected cycle is no longer pending
    if not state.settings.replay_from:  # a replay reproduces a cycle: it teaches nothing new
        store_cycle(state, record)  # the learning record for the cycle store; never raises
    _to_sinks(sinks, record, state)
    cycle_span = tracer.start_span(
        "nomic.cycle",
        start_time=int(record.started_at.timestamp() * 1e9),
        attributes={
            "nomic.cycle_id": record.cycle_id,
            "nomic.track": record.track.value,
            "nomic.agents": ",".join(record.agents),
            "nomic.outcome": record.outcome.value,
        },
    )
    cycle_span.end(end_time=int(record.finished_at.timestamp() * 1e9))
    bus.emit(
        EventType.CYCLE_FINISHED,
        record.cycle_id,
        outcome=record.outcome.value,
        track=record.track.value,
        duration_s=round(record.duration_s, 3),
        commit_sha=record.commit_sha,
    )
    log.info("cycle %s: %s — %s", record.cycle_id, record.outcome.value, record.reason)
    return record
