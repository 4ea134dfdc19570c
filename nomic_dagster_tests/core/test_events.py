"""Events and spans: every phase, gate and outcome of a cycle reaches the bus and the tracer."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nomic_dagster.core.events import EventType, NomicEvent, bus
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.cycle.steps import run_cycle
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import make_repo

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _tracing() -> None:
    # The global provider can be set once per process; later tests reuse it.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


@pytest.mark.slow
def test_a_committed_cycle_emits_its_whole_story(events: list[NomicEvent], tmp_path: Path) -> None:
    EXPORTER.clear()
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    record = run_cycle(CycleSettings(repo=str(repo), agents=[ta.spec(ta.GoodAgent)]))
    mine = [e for e in events if e.cycle_id == record.cycle_id]
    types = [e.type for e in mine]
    assert types[0] is EventType.CYCLE_STARTED and types[-1] is EventType.CYCLE_FINISHED
    finished = [e.data["phase"] for e in mine if e.type is EventType.PHASE_FINISHED]
    assert finished == ["context", "debate", "design", "implement", "verify", "commit"]
    gates = {e.data["gate"]: e.data["passed"] for e in mine if e.type is EventType.GATE_DECISION}
    assert gates["scope"] is True and gates["tests_pass"] is True
    assert (
        mine[-1].data["outcome"] == "committed" and mine[-1].data["commit_sha"] == record.commit_sha
    )

    spans = {
        s.name: s
        for s in EXPORTER.get_finished_spans()
        if s.attributes.get("nomic.cycle_id") == record.cycle_id
    }
    assert {"nomic.cycle", "nomic.phase.context", "nomic.phase.commit"} <= set(spans)
    cycle = spans["nomic.cycle"]
    assert cycle.attributes["nomic.outcome"] == "committed"
    assert cycle.attributes["nomic.track"] == "developer"
    assert cycle.attributes["nomic.agents"] == ta.spec(ta.GoodAgent)
    phase_events = [e for e in mine if e.type is EventType.PHASE_STARTED]
    assert all(e.trace_id for e in phase_events)  # events carry the span's trace id


@pytest.mark.slow
def test_failures_are_events(events: list[NomicEvent], tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    record = run_cycle(CycleSettings(repo=str(repo), agents=[ta.spec(ta.Breaker)]))
    mine = [e for e in events if e.cycle_id == record.cycle_id]
    failed = [
        e.data["gate"] for e in mine if e.type is EventType.GATE_DECISION and not e.data["passed"]
    ]
    assert failed == ["tests_pass"]
    assert mine[-1].data["outcome"] == "verification_failed"


@pytest.mark.slow
def test_a_failing_listener_does_not_break_the_cycle(
    events: list[NomicEvent], tmp_path: Path
) -> None:
    def broken(event: NomicEvent) -> None:
        raise RuntimeError("listener bug")

    unsubscribe = bus.subscribe(broken)
    try:
        repo = make_repo(tmp_path / "target", ta.GATE_REPO)
        record = run_cycle(CycleSettings(repo=str(repo), agents=[ta.spec(ta.GoodAgent)]))
    finally:
        unsubscribe()
    assert record.outcome.value == "committed"
