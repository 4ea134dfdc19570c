"""`finish_cycle`, the one ending of every driver: history, approvals, record sinks (the
`cycle_records` asset of a configured Dagster instance), and spans — including the spans
of the state machine's phases, which run in child processes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from nomic_dagster.core.records import CycleRecord, Outcome
from nomic_dagster.core.settings import state_dir
from nomic_dagster.core.state import CycleState
from nomic_dagster.cycle import finish
from nomic_dagster.cycle.approvals import ApprovalStore
from nomic_dagster.cycle.finish import configured_sinks, finish_cycle
from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster.cycle.steps import drive_cycle, run_cycle
from nomic_dagster.orchestration.instance import isolated_home
from nomic_dagster.orchestration.record_sink import DagsterHomeRecordSink, DagsterRecordSink
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import make_repo, settings_for

ROOT = Path(__file__).resolve().parents[2]
CYCLE_RECORDS = dg.AssetKey("cycle_records")
PHASE_SPANS = {f"nomic.phase.{p}" for p in ("context", "debate", "design", "implement")}
PHASE_SPANS |= {"nomic.phase.verify", "nomic.phase.commit"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target", ta.GATE_REPO)


class ListSink:
    """Keeps what it is handed, and whether the history already had it then."""

    def __init__(self) -> None:
        self.seen: list[tuple[CycleRecord, bool]] = []

    def record(self, record: CycleRecord, state: CycleState) -> None:
        from_history = CycleHistory(state_dir(state.settings)).get(record.cycle_id)
        self.seen.append((record, from_history is not None))


class BrokenSink:
    def record(self, record: CycleRecord, state: CycleState) -> None:
        raise ConnectionError("the asset store is down")


def latest_outcome(home: Path, cycle_id: str) -> str | None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=CYCLE_RECORDS, asset_partitions=[cycle_id]), limit=1
        ).records
        if not found:
            return None
        mat = found[0].asset_materialization
        assert mat is not None and mat.partition == cycle_id
        assert cycle_id in instance.get_dynamic_partitions("cycles")
        return str(mat.metadata["outcome"].value)


# ---------------------------------------------------------------- sinks


def test_every_sink_gets_the_record_after_the_history_has_it(repo: Path) -> None:
    state = drive_cycle(settings_for(repo, agents=[ta.spec(ta.GoodAgent)]))
    first, second = ListSink(), ListSink()
    record = finish_cycle(state, sinks=[first, second])
    assert record.outcome is Outcome.COMMITTED, record.reason
    for sink in (first, second):
        ((seen, in_history),) = sink.seen
        assert seen == record and in_history


def test_a_failing_sink_loses_nothing(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = drive_cycle(settings_for(repo, agents=[ta.spec(ta.GoodAgent)]))
    after = ListSink()
    with caplog.at_level(logging.ERROR, logger="nomic_dagster.cycle.finish"):
        record = finish_cycle(state, sinks=[BrokenSink(), after])
    assert record.outcome is Outcome.COMMITTED, record.reason
    assert CycleHistory(state_dir()).get(record.cycle_id) == record
    assert [r for r, _ in after.seen] == [record]  # the next sink still gets it
    (logged,) = [r for r in caplog.records if "record sink BrokenSink failed" in r.getMessage()]
    assert "the asset store is down" in (logged.exc_text or "")
    assert str(CycleHistory(state_dir()).path) in logged.getMessage()


def test_a_paused_cycle_reaches_the_sinks_but_not_the_history(repo: Path) -> None:
    state = drive_cycle(settings_for(repo, agents=[ta.spec(ta.GoodAgent)], require_approval=True))
    sink = ListSink()
    record = finish_cycle(state, sinks=[sink])
    assert record.outcome is Outcome.AWAITING_APPROVAL, record.reason
    assert [(r.outcome, in_history) for r, in_history in sink.seen] == [
        (Outcome.AWAITING_APPROVAL, False)
    ]
    assert ApprovalStore(state_dir()).get(record.cycle_id) is not None


def test_the_dagster_sink_is_configured_only_by_a_home_with_a_dagster_yaml(
    tmp_path: Path,
) -> None:
    assert configured_sinks({}) == []
    bare = tmp_path / "bare"
    bare.mkdir()
    assert configured_sinks({"DAGSTER_HOME": str(bare)}) == []
    home = isolated_home(tmp_path / "home")
    (sink,) = configured_sinks({"DAGSTER_HOME": str(home)})
    assert isinstance(sink, DagsterHomeRecordSink) and sink.home == str(home)


def test_a_sink_that_cannot_be_set_up_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(finish.SINK_FACTORIES, "dagster", "nomic_dagster.no_such_module:make")
    home = isolated_home(tmp_path / "home")
    with caplog.at_level(logging.WARNING, logger="nomic_dagster.cycle.finish"):
        assert configured_sinks({"DAGSTER_HOME": str(home)}) == []
    (warning,) = caplog.records
    assert "nomic_dagster.no_such_module:make" in warning.getMessage()
    assert "still recorded in the history" in warning.getMessage()


def test_the_plain_driver_materializes_cycle_records_where_dagster_home_points(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = isolated_home(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    record = run_cycle(settings_for(repo, agents=[ta.spec(ta.GoodAgent)]))
    assert record.outcome is Outcome.COMMITTED, record.reason
    assert latest_outcome(home, record.cycle_id) == "committed"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (found,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=CYCLE_RECORDS, asset_partitions=[record.cycle_id]),
            limit=5,
        ).records
        assert found.event_log_entry.run_id == ""  # runless: no Dagster run was involved
        md = found.asset_materialization.metadata  # type: ignore[union-attr]
        assert md["commit_sha"].value == record.commit_sha
        assert md["record"].value == record.model_dump(mode="json")


def test_the_dagster_sink_on_an_explicit_instance(repo: Path) -> None:
    state = drive_cycle(settings_for(repo, agents=[ta.spec(ta.Breaker)]))
    with dg.instance_for_test() as instance:
        record = finish_cycle(state, sinks=[DagsterRecordSink(instance)])
        assert record.outcome is Outcome.VERIFICATION_FAILED, record.reason
        (found,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=CYCLE_RECORDS, asset_partitions=[record.cycle_id]),
            limit=5,
        ).records
        md = found.asset_materialization.metadata  # type: ignore[union-attr]
        assert md["outcome"].value == "verification_failed"
        assert md["failed_gates"].value == ["tests_pass"]


# ---------------------------------------------------------------- spans

TRACED_CYCLES = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from pathlib import Path

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    def line(span):
        attrs = span.attributes or {}
        return json.dumps(
            {"name": span.name, "cycle_id": attrs.get("nomic.cycle_id"), "pid": os.getpid()}
        ) + "\\n"

    # Tracing as a user configures it, before any cycle (and so before the machine forks):
    # a batching processor, spans exported to a file (appended to by every process).
    provider = TracerProvider()
    exporter = ConsoleSpanExporter(out=open(sys.argv[1], "a"), formatter=line)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    from nomic_dagster import create_nomic_state_machine
    from nomic_dagster.cycle.steps import run_cycle
    from nomic_dagster_tests.support import agents_for_tests as ta
    from nomic_dagster_tests.support.repo_builders import settings_for

    agents = [ta.spec(ta.GoodAgent)]
    plain = run_cycle(settings_for(Path(sys.argv[2]), agents=agents))
    machine = create_nomic_state_machine(
        checkpoint_dir=sys.argv[4], settings=settings_for(Path(sys.argv[3]), agents=agents)
    )
    machined = asyncio.run(machine.run())
    print(json.dumps({"plain": plain.cycle_id, "machine": machined.cycle_id,
                      "outcomes": [plain.outcome.value, machined.outcome.value],
                      "pid": os.getpid()}))
    """
)


def test_the_state_machine_exports_the_spans_of_its_phase_processes(tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    plain_repo = make_repo(tmp_path / "plain", ta.GATE_REPO)
    machine_repo = make_repo(tmp_path / "machine", ta.GATE_REPO)
    args = [str(spans_file), str(plain_repo), str(machine_repo), str(tmp_path / "checkpoints")]
    done = subprocess.run(
        [sys.executable, "-c", TRACED_CYCLES, *args],
        cwd=ROOT,  # nomic_dagster_tests importable
        env={**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "60000"},  # export only when flushed
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ran = json.loads(done.stdout.strip().splitlines()[-1])
    assert ran["outcomes"] == ["committed", "committed"], done.stderr[-4000:]
    spans = [json.loads(x) for x in spans_file.read_text().splitlines()]

    def names(cycle_id: str) -> list[str]:
        return sorted(s["name"] for s in spans if s["cycle_id"] == cycle_id)

    expected = sorted({"nomic.cycle", *PHASE_SPANS})  # 7: the cycle and its six phases
    assert names(ran["plain"]) == expected
    assert names(ran["machine"]) == expected  # the same story, whichever driver ran it
    phase_pids = {s["pid"] for s in spans if s["cycle_id"] == ran["machine"]} - {ran["pid"]}
    assert len(phase_pids) == 6  # each phase span came from its own child process
