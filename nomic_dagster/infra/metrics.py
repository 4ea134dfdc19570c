"""Prometheus metrics of the loop, fed by the event bus.

Every metric here is updated by one listener on `nomic_dagster.core.events.bus`, so the plain
driver (`run_cycle`, the CLIs), the state machine and Dagster runs all count the same
way — there are no `track_*` helpers for callers to forget (aragora-nomic §26 W18).
Importing this module subscribes the listener (`install()`, idempotent); `cycle/steps.py`
imports it, so any process that runs a cycle counts it.

The metrics live in their own `CollectorRegistry` (`REGISTRY`), never the global one.
Expose them with `start_metrics_server(port=9464, addr="127.0.0.1")`, with
`nomic metrics-server`, or by setting `NOMIC_METRICS_PORT` where the Dagster definitions
are loaded (`build_defs()` starts the server once per machine and port; a process that
finds the port taken leaves it to the one serving).

Dagster runs each step in its own process. For one endpoint over every process, set
`PROMETHEUS_MULTIPROC_DIR` to an empty folder in their environment (before they start):
each process then writes its samples there and the server, wherever it runs, reports
the sum (prometheus_client's multiprocess mode).

| metric | type | labels |
|---|---|---|
| nomic_phase_transitions_total | counter | from_phase, to_phase |
| nomic_phase_duration_seconds | histogram | phase |
| nomic_cycle_duration_seconds | histogram | outcome |
| nomic_cycles_total | counter | outcome |
| nomic_cycles_in_progress | gauge | |
| nomic_errors_total | counter | phase, error_type |
| nomic_retries_total | counter | phase |
| nomic_recovery_decisions_total | counter | action |
| nomic_circuit_breakers_open | gauge | |
| nomic_gate_decisions_total | counter | gate, passed |
| nomic_agent_failures_total | counter | agent |
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client import multiprocess as _multiprocess

from nomic_dagster.core.events import EventType, NomicEvent, bus
from nomic_dagster.core.states import state_name

log = logging.getLogger("nomic_dagster.infra.metrics")

DEFAULT_PORT = 9464
DEFAULT_ADDR = "127.0.0.1"
PORT_ENV = "NOMIC_METRICS_PORT"
ADDR_ENV = "NOMIC_METRICS_ADDR"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

PHASE_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
CYCLE_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
FAILED_OUTCOMES = frozenset({"bad_input", "error"})

_multiproc_dir = os.environ.get(MULTIPROC_ENV)
if _multiproc_dir:  # the folder must exist before the first metric is created
    os.makedirs(_multiproc_dir, exist_ok=True)

REGISTRY = CollectorRegistry(auto_describe=True)

PHASE_TRANSITIONS = Counter(
    "nomic_phase_transitions_total",
    "Transitions between phases/states of a cycle.",
    ["from_phase", "to_phase"],
    registry=REGISTRY,
)
PHASE_DURATION = Histogram(
    "nomic_phase_duration_seconds",
    "How long one phase of a cycle took.",
    ["phase"],
    buckets=PHASE_BUCKETS,
    registry=REGISTRY,
)
CYCLE_DURATION = Histogram(
    "nomic_cycle_duration_seconds",
    "How long a whole cycle took, by outcome.",
    ["outcome"],
    buckets=CYCLE_BUCKETS,
    registry=REGISTRY,
)
CYCLES = Counter(
    "nomic_cycles_total",
    "Finished cycles by outcome (committed, no_consensus, verification_failed, error, ...).",
    ["outcome"],
    registry=REGISTRY,
)
CYCLES_IN_PROGRESS = Gauge(
    "nomic_cycles_in_progress",
    "Cycles started and not yet finished.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
ERRORS = Counter(
    "nomic_errors_total",
    "Phase crashes, bad input and timeouts, by phase and error type.",
    ["phase", "error_type"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "nomic_retries_total",
    "Retries of a phase.",
    ["phase"],
    registry=REGISTRY,
)
RECOVERY_DECISIONS = Counter(
    "nomic_recovery_decisions_total",
    "Recovery decisions by action (retry, skip, rollback, restart, pause, fail).",
    ["action"],
    registry=REGISTRY,
)
CIRCUIT_BREAKERS_OPEN = Gauge(
    "nomic_circuit_breakers_open",
    "Agent circuit breakers currently open.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
GATE_DECISIONS = Counter(
    "nomic_gate_decisions_total",
    "Gate decisions (scope and the verify gates) by gate and result.",
    ["gate", "passed"],
    registry=REGISTRY,
)
AGENT_FAILURES = Counter(
    "nomic_agent_failures_total",
    "Agent steps that failed (including calls refused by an open circuit breaker).",
    ["agent"],
    registry=REGISTRY,
)

_CRASH_TYPE = re.compile(r"crashed: ([A-Za-z_][\w.]*)")


def _pick(data: dict[str, Any], *keys: str) -> Any:
    return next((data[k] for k in keys if data.get(k) is not None), None)


class _Tracker:
    """Per-cycle bookkeeping the counters need (last phase, which cycles run)."""

    LIMIT = 10_000  # cycles remembered at most (a cycle that never finishes is forgotten)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: OrderedDict[str, None] = OrderedDict()
        self.last_phase: OrderedDict[str, str] = OrderedDict()
        self.explicit: OrderedDict[str, None] = OrderedDict()  # cycles with TRANSITION events
        self.open_breakers: set[str] = set()

    @staticmethod
    def _remember(table: OrderedDict[str, Any], key: str, value: Any = None) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > _Tracker.LIMIT:
            table.popitem(last=False)

    def on_event(self, event: NomicEvent) -> None:
        data, cid, kind = event.data, event.cycle_id or "", event.type
        with self.lock:
            if kind is EventType.CYCLE_STARTED:
                self._remember(self.running, cid)
                self._remember(self.last_phase, cid, "idle")
                CYCLES_IN_PROGRESS.set(len(self.running))
            elif kind is EventType.PHASE_STARTED:
                phase = state_name(data.get("phase", "unknown"))
                if cid not in self.explicit:  # the plain driver: phases are the transitions
                    PHASE_TRANSITIONS.labels(self.last_phase.get(cid, "idle"), phase).inc()
                self._remember(self.last_phase, cid, phase)
            elif kind is EventType.PHASE_FINISHED:
                phase = state_name(data.get("phase", "unknown"))
                duration = data.get("duration_s")
                if isinstance(duration, int | float):
                    PHASE_DURATION.labels(phase).observe(max(0.0, float(duration)))
                if data.get("outcome") == "bad_input":
                    ERRORS.labels(phase, "BadInput").inc()
            elif kind is EventType.CYCLE_FINISHED:
                outcome = str(data.get("outcome") or "unknown")
                CYCLES.labels(outcome).inc()
                duration = data.get("duration_s")
                if isinstance(duration, int | float):
                    CYCLE_DURATION.labels(outcome).observe(max(0.0, float(duration)))
                if cid not in self.explicit:
                    last = self.last_phase.get(cid, "idle")
                    end = "failed" if outcome in FAILED_OUTCOMES else "completed"
                    PHASE_TRANSITIONS.labels(last, end).inc()
                self.running.pop(cid, None)
                self.last_phase.pop(cid, None)
                self.explicit.pop(cid, None)
                CYCLES_IN_PROGRESS.set(len(self.running))
            elif kind is EventType.TRANSITION:
                source = _pick(data, "from_state", "from_phase", "from", "source_state")
                target = _pick(data, "to_state", "to_phase", "to", "target_state")
                self._remember(self.explicit, cid)
                if target is not None:
                    PHASE_TRANSITIONS.labels(
                        state_name(source if source is not None else "idle"), state_name(target)
                    ).inc()
                    self._remember(self.last_phase, cid, state_name(target))
            elif kind is EventType.RETRY:
                RETRIES.labels(_phase_of(data)).inc()
            elif kind is EventType.TIMEOUT:
                ERRORS.labels(_phase_of(data), "timeout").inc()
            elif kind is EventType.ERROR:
                ERRORS.labels(_phase_of(data), _error_type(event)).inc()
            elif kind is EventType.RECOVERY_DECISION:
                action = _pick(data, "action", "strategy") or "unknown"
                RECOVERY_DECISIONS.labels(state_name(action)).inc()
            elif kind is EventType.GATE_DECISION:
                gate = str(data.get("gate") or "unknown")
                GATE_DECISIONS.labels(gate, "true" if data.get("passed") else "false").inc()
            elif kind is EventType.CIRCUIT_OPENED:
                # from events, not the registry: a phase run in a child process forwards its
                # events here, while its breakers stay in the child
                self.open_breakers.add(str(data.get("agent")))
                CIRCUIT_BREAKERS_OPEN.set(len(self.open_breakers))
            elif kind is EventType.CIRCUIT_CLOSED:
                self.open_breakers.discard(str(data.get("agent")))
                CIRCUIT_BREAKERS_OPEN.set(len(self.open_breakers))
            elif kind is EventType.AGENT_FAILURE:
                AGENT_FAILURES.labels(str(_pick(data, "agent", "agent_name") or "unknown")).inc()


def _phase_of(data: dict[str, Any]) -> str:
    return state_name(_pick(data, "phase", "state", "from_state") or "unknown")


def _error_type(event: NomicEvent) -> str:
    explicit = _pick(event.data, "error_type", "type")
    if explicit:
        return str(explicit)
    match = _CRASH_TYPE.search(event.error or "")
    return match.group(1) if match else "error"


_tracker = _Tracker()
_install_lock = threading.Lock()
_unsubscribe = None


def install(serve_from_env: bool = False) -> bool:
    """Subscribe the metrics to the event bus (once per process; later calls do nothing).

    With `serve_from_env`, also start the exposition server when $NOMIC_METRICS_PORT is
    set (address $NOMIC_METRICS_ADDR, default 127.0.0.1). Returns True when this call
    subscribed.
    """
    global _unsubscribe
    subscribed = False
    with _install_lock:
        if _unsubscribe is None:
            _unsubscribe = bus.subscribe(_tracker.on_event)
            subscribed = True
            if _multiproc_dir:
                atexit.register(_mark_dead)
    if serve_from_env:
        serve_from_environment()
    return subscribed


def uninstall() -> None:
    global _unsubscribe
    with _install_lock:
        if _unsubscribe is not None:
            _unsubscribe()
            _unsubscribe = None


def _mark_dead() -> None:
    with contextlib.suppress(Exception):  # exiting: nothing more to do
        _multiprocess.mark_process_dead(os.getpid())


# ---------------------------------------------------------------- exposition


def exposition_registry() -> CollectorRegistry:
    """What a scrape reports: this process's registry, or every process's samples in
    $PROMETHEUS_MULTIPROC_DIR when multiprocess mode is on."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry, path=os.environ[MULTIPROC_ENV])
        return registry
    return REGISTRY


def render() -> str:
    """The current metrics in the Prometheus text format."""
    return generate_latest(exposition_registry()).decode("utf-8")


@dataclass
class MetricsServer:
    addr: str
    port: int
    _httpd: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        with _servers_lock:
            for key, server in list(_servers.items()):
                if server is self:
                    del _servers[key]


_servers: dict[tuple[str, int], MetricsServer] = {}
_servers_lock = threading.Lock()


def start_metrics_server(port: int = DEFAULT_PORT, addr: str = DEFAULT_ADDR) -> MetricsServer:
    """Serve the metrics at http://addr:port/metrics from a daemon thread.

    Idempotent per (addr, port) in one process; port 0 picks a free port. Raises OSError
    when another process holds the port. Subscribes the metrics if that has not happened.
    """
    install()
    with _servers_lock:
        if port and (addr, port) in _servers:
            return _servers[(addr, port)]
        httpd, thread = start_http_server(port, addr=addr, registry=exposition_registry())
        server = MetricsServer(addr=addr, port=int(httpd.server_port), _httpd=httpd, _thread=thread)
        _servers[(addr, server.port)] = server
    log.info("nomic metrics at %s", server.url)
    return server


def serve_from_environment() -> MetricsServer | None:
    """Start the server when $NOMIC_METRICS_PORT is set; None when unset or already served
    by another process (the port is taken)."""
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        log.warning("%s=%r is not a port number; metrics are not served", PORT_ENV, raw)
        return None
    addr = os.environ.get(ADDR_ENV, "").strip() or DEFAULT_ADDR
    try:
        return start_metrics_server(port, addr)
    except OSError as exc:
        log.info("metrics not served from this process (%s:%s: %s)", addr, port, exc)
        return None


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """The current value of one sample in this process (0 when absent); for tests and CLIs."""
    value = REGISTRY.get_sample_value(name, labels or {})
    return value or 0.0


install()

__all__ = [
    "REGISTRY",
    "MetricsServer",
    "exposition_registry",
    "install",
    "render",
    "sample",
    "serve_from_environment",
    "start_metrics_server",
]
