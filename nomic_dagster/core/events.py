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
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Any

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
