"""Cycle events: the audit trail, and the one place metrics and tracing listen to.

Everything that happens to a cycle — phases, transitions, retries, timeouts, errors,
gate and recovery decisions, agent failures, checkpoints — is a `NomicEvent` emitted on
the process-wide `bus`. The state machine keeps each cycle's events in its checkpoint;
Prometheus metrics (`nomic_dagster.infra.metrics`) subscribe to the bus, so the plain driver,
the state machine and Dagster runs all update the same counters. Each cycle and each
phase is also an OpenTelemetry span (exported only when an SDK is configured).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from opentelemetry import trace
from pydantic import Field

from nomic_dagster.core.records import Record, utcnow

log = logging.getLogger("nomic_dagster.core.events")
tracer = trace.get_tracer("nomic_dagster")


class EventType(StrEnum):
    CYCLE_STARTED = "cycle_started"
    CYCLE_FINISHED = "cycle_finished"
    PHASE_STARTED = "phase_started"
    PHASE_FINISHED = "phase_finished"
    TRANSITION = "transition"
    RETRY = "retry"
    TIMEOUT = "timeout"
    ERROR = "error"
    RECOVERY_DECISION = "recovery_decision"
    GATE_DECISION = "gate_decision"
    AGENT_FAILURE = "agent_failure"
    CIRCUIT_OPENED = "circuit_opened"
    CIRCUIT_CLOSED = "circuit_closed"
    CHECKPOINT_SAVED = "checkpoint_saved"
    CHECKPOINT_LOADED = "checkpoint_loaded"
    PAUSED = "paused"
    RESUMED = "resumed"
    # What a long step is doing right now ("running the tests", "asking claude to vote"),
    # from the code that knows; the ProgressTicker repeats the latest one while it lasts.
    PROGRESS = "progress"


class NomicEvent(Record):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    type: EventType
    timestamp: datetime = Field(default_factory=utcnow)
    cycle_id: str | None = None
    source: str = "nomic"
    data: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    trace_id: str | None = None
    span_id: str | None = None


Listener = Callable[[NomicEvent], None]


class EventBus:
    """Synchronous fan-out to listeners; a failing listener never breaks a cycle."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def emit(
        self, type: EventType, cycle_id: str | None = None, *, error: str | None = None, **data: Any
    ) -> NomicEvent:
        span = trace.get_current_span().get_span_context()
        event = NomicEvent(
            type=type,
            cycle_id=cycle_id,
            data=data,
            error=error,
            trace_id=format(span.trace_id, "032x") if span.is_valid else None,
            span_id=format(span.span_id, "016x") if span.is_valid else None,
        )
        self.publish(event)
        return event

    def publish(self, event: NomicEvent) -> None:
        """Deliver an event that already exists, e.g. one forwarded from a phase's child process."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener %r failed on %s", listener, event.type)

    def clear(self) -> None:
        """Drop every listener. A forked phase process calls it first (then subscribes only
        its forwarder), so it takes a new lock rather than one another thread may have held
        at the fork."""
        self._lock = threading.Lock()
        self._listeners = []


bus = EventBus()


def report_progress(text: str, cycle_id: str | None = None) -> None:
    """Say what the running step is doing now; a ticker repeats it every few seconds."""
    bus.emit(EventType.PROGRESS, cycle_id, text=text)


PROGRESS_PERIOD_ENV = "NOMIC_PROGRESS_S"
DEFAULT_PROGRESS_PERIOD_S = 5.0


def progress_period_s() -> float:
    """How often a ticker speaks: $NOMIC_PROGRESS_S (0: never), else 5 seconds."""
    raw = os.environ.get(PROGRESS_PERIOD_ENV, "").strip()
    if not raw:
        return DEFAULT_PROGRESS_PERIOD_S
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %s", PROGRESS_PERIOD_ENV, raw, 5)
        return DEFAULT_PROGRESS_PERIOD_S
    return max(0.0, value)


class ProgressTicker:
    """Every `period_s` seconds while a phase runs, `say`s what it is doing and for how
    long ("cycle 1a2b: verify: running the tests: python -m pytest -q (12 s)..."): the
    latest PROGRESS event of the bus, else just the phase. Silent between phases, so a
    quick phase prints nothing extra; the drivers' logging (the CLI's progress lines, a
    Dagster op's context.log) attach one around what they run."""

    def __init__(self, say: Callable[[str], None], period_s: float | None = None) -> None:
        self.say = say
        self.period_s = progress_period_s() if period_s is None else period_s
        # cycle id -> (phase, phase started, activity, activity started)
        self._running: dict[str, tuple[str, float, str | None, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def on_event(self, event: NomicEvent) -> None:
        now = time.monotonic()
        cid = event.cycle_id or "-"
        with self._lock:
            if event.type is EventType.PHASE_STARTED:
                self._running[cid] = (str(event.data.get("phase")), now, None, now)
            elif event.type is EventType.PHASE_FINISHED:
                self._running.pop(cid, None)
            elif event.type is EventType.PROGRESS:
                text = str(event.data.get("text", ""))[:200]
                # A step that does not know its cycle (the test runner) belongs to the one
                # phase running in this process; with several, to each.
                targets = [cid] if cid in self._running else list(self._running)
                for key in targets:
                    phase, started, _, _ = self._running[key]
                    self._running[key] = (phase, started, text, now)

    def lines(self) -> list[str]:
        """What the ticker would say now."""
        now = time.monotonic()
        with self._lock:
            running = dict(self._running)
        said = []
        for cid, (phase, started, activity, since) in running.items():
            what = (
                f"{activity} ({now - since:.0f} s)"
                if activity
                else f"running ({now - started:.0f} s)"
            )
            who = f"cycle {cid}: " if cid != "-" else ""
            said.append(f"{who}{phase}: {what}...")
        return said

    def _tick(self) -> None:
        while not self._stop.wait(self.period_s):
            for line in self.lines():
                try:
                    self.say(line)
                except Exception:  # a closed stream must not kill the cycle's thread
                    log.debug("progress line not shown: %s", line, exc_info=True)

    def start(self) -> Self:
        self._unsubscribe = bus.subscribe(self.on_event)
        if self.period_s > 0:
            self._thread = threading.Thread(target=self._tick, name="nomic-progress", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[trace.Span]:
    """An OpenTelemetry span with nomic attributes (no-op unless an SDK is configured)."""
    clean = {
        f"nomic.{k}": v if isinstance(v, str | int | float | bool) else str(v)
        for k, v in attributes.items()
        if v is not None
    }
    with tracer.start_as_current_span(name, attributes=clean) as current:
        yield current


def flush_spans(timeout_s: float = 5.0) -> bool:
    """Export the spans this process has ended and not yet exported; False when that did
    not finish within `timeout_s`. A forked phase process must call it before it exits:
    it leaves through os._exit (no atexit hook runs), and a batching span processor would
    lose its phase's spans. A no-op (True) without an SDK tracer provider."""
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is None:
        return True
    try:
        return bool(flush(int(timeout_s * 1000)))
    except Exception:  # tracing trouble must not fail the phase it traced
        log.exception("could not flush the spans")
        return False
