"""Per-agent circuit breakers: an agent that keeps failing is taken out of the round.

`CircuitBreaker` isolates one failing agent: `threshold` consecutive failures open it;
after `reset_timeout_s` it lets exactly one half-open probe through; the probe's success
closes it, its failure re-opens it. The phases call every agent through its breaker
(`call_agent`), so an open breaker takes the agent out of the round ("circuit open")
instead of calling it again. Across processes a registry travels as `snapshot()` /
`restore()` (or `save(path)` / `load(path)`): the `nomic` CLIs keep it in
`<state dir>/breakers.json` between runs. Every breaker change is an event on the bus
(CIRCUIT_OPENED, CIRCUIT_CLOSED), which the Prometheus metrics count.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from nomic_dagster.core.errors import AgentError, AgentNotCalled, CycleEnded, NomicError
from nomic_dagster.core.events import EventType, bus

T = TypeVar("T")


# ---------------------------------------------------------------- circuit breakers


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(NomicError):
    """The agent's breaker is open: it was not called."""

    def __init__(self, agent_id: str, retry_in_s: float) -> None:
        self.agent_id = agent_id
        self.retry_in_s = retry_in_s
        super().__init__(f"circuit open for agent {agent_id!r} (next probe in {retry_in_s:.0f}s)")


class CircuitBreaker:
    """Per-agent breaker: closed -> (threshold consecutive failures) -> open ->
    (reset_timeout_s later) -> half-open, one probe -> closed on success / open on failure."""

    def __init__(
        self,
        agent_id: str,
        threshold: int = 3,
        reset_timeout_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        if reset_timeout_s < 0:
            raise ValueError("reset_timeout_s must not be negative")
        self.agent_id = agent_id
        self.threshold = threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._lock = threading.RLock()
        self._state = CircuitState.CLOSED
        self._failures = 0  # consecutive
        self._total_failures = 0
        self._total_successes = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False
        self.last_error = ""

    # -- reading

    @property
    def name(self) -> str:
        return self.agent_id

    @property
    def failures(self) -> int:
        return self._failures

    @property
    def state(self) -> CircuitState:
        """OPEN reads as HALF_OPEN once the reset timeout has passed (a probe may go)."""
        with self._lock:
            if self._state is CircuitState.OPEN and self._timeout_passed():
                return CircuitState.HALF_OPEN
            return self._state

    @property
    def is_open(self) -> bool:
        return self.state is CircuitState.OPEN

    def retry_in_s(self) -> float:
        with self._lock:
            if self._state is not CircuitState.OPEN or self._opened_at is None:
                return 0.0
            return max(0.0, self.reset_timeout_s - (self._clock() - self._opened_at))

    def _timeout_passed(self) -> bool:
        return self._opened_at is not None and (
            self._clock() - self._opened_at >= self.reset_timeout_s
        )

    # -- calling

    def allow(self) -> bool:
        """May the agent be called now? In half-open state, only one probe at a time."""
        with self._lock:
            if self._state is CircuitState.CLOSED:
                return True
            if self._state is CircuitState.OPEN:
                if not self._timeout_passed():
                    return False
                self._state = CircuitState.HALF_OPEN
                self._probe_in_flight = False
            if self._probe_in_flight:
                return False
            self._probe_in_flight = True
            return True

    def record_success(self, cycle_id: str | None = None) -> None:
        with self._lock:
            self._total_successes += 1
            self._failures = 0
            self._probe_in_flight = False
            was = self._state
            self._state = CircuitState.CLOSED
            self._opened_at = None
        if was is not CircuitState.CLOSED:
            bus.emit(
                EventType.CIRCUIT_CLOSED,
                cycle_id,
                agent=self.agent_id,
                previous=was.value,
            )

    def record_failure(self, error: BaseException | str = "", cycle_id: str | None = None) -> None:
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        with self._lock:
            self._total_failures += 1
            self._failures += 1
            self.last_error = message[:500]
            was = self._state
            opens = was is CircuitState.HALF_OPEN or (
                was is CircuitState.CLOSED and self._failures >= self.threshold
            )
            if was is CircuitState.OPEN or opens:
                self._opened_at = self._clock()  # a failure while open restarts the wait
            self._probe_in_flight = False
            if opens:
                self._state = CircuitState.OPEN
        if opens:
            bus.emit(
                EventType.CIRCUIT_OPENED,
                cycle_id,
                error=self.last_error or None,
                agent=self.agent_id,
                failures=self._failures,
                previous=was.value,
                reset_timeout_s=self.reset_timeout_s,
            )

    def call(
        self,
        fn: Callable[[], T],
        *,
        benign: tuple[type[BaseException], ...] = (),
        cycle_id: str | None = None,
    ) -> T:
        """Call `fn` through the breaker: CircuitOpenError when open, failures recorded.

        Exceptions in `benign` are the agent answering properly ("I cannot do this"):
        they count as a success of the call and are re-raised.
        """
        if not self.allow():
            raise CircuitOpenError(self.agent_id, self.retry_in_s())
        try:
            result = fn()
        except benign:
            self.record_success(cycle_id)
            raise
        except BaseException as exc:
            if isinstance(exc, Exception):
                self.record_failure(exc, cycle_id)
            else:  # Ctrl-C or exit: not the agent's fault, but free the probe slot
                with self._lock:
                    self._probe_in_flight = False
            raise
        self.record_success(cycle_id)
        return result

    def reset(self) -> None:
        with self._lock:
            was = self._state
            self._state = CircuitState.CLOSED
            self._failures = 0
            self._opened_at = None
            self._probe_in_flight = False
        if was is not CircuitState.CLOSED:
            bus.emit(EventType.CIRCUIT_CLOSED, None, agent=self.agent_id, previous=was.value)

    def snapshot(self) -> dict[str, Any]:
        """Enough to rebuild this breaker in another process (see BreakerRegistry.restore)."""
        with self._lock:
            open_for = (
                self._clock() - self._opened_at
                if self._state is not CircuitState.CLOSED and self._opened_at is not None
                else None
            )
            return {
                "agent_id": self.agent_id,
                "state": CircuitState.OPEN.value
                if self._state is not CircuitState.CLOSED
                else CircuitState.CLOSED.value,
                "failures": self._failures,
                "threshold": self.threshold,
                "reset_timeout_s": self.reset_timeout_s,
                "open_for_s": open_for,
                "saved_at": time.time(),
                "total_failures": self._total_failures,
                "total_successes": self._total_successes,
                "last_error": self.last_error,
            }

    def _restore(self, data: Mapping[str, Any]) -> None:
        with self._lock:
            self._failures = int(data.get("failures", 0))
            self._total_failures = int(data.get("total_failures", 0))
            self._total_successes = int(data.get("total_successes", 0))
            self.last_error = str(data.get("last_error", ""))
            self._probe_in_flight = False
            if data.get("state") == CircuitState.OPEN.value and data.get("open_for_s") is not None:
                waited = float(data["open_for_s"]) + max(
                    0.0, time.time() - float(data.get("saved_at", time.time()))
                )
                self._state = CircuitState.OPEN
                self._opened_at = self._clock() - waited
            else:
                self._state = CircuitState.CLOSED
                self._opened_at = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "state": self.state.value,
            "failures": self._failures,
            "threshold": self.threshold,
            "reset_timeout_s": self.reset_timeout_s,
            "retry_in_s": round(self.retry_in_s(), 3),
            "total_failures": self._total_failures,
            "total_successes": self._total_successes,
            "last_error": self.last_error,
        }

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(agent_id={self.agent_id!r}, state={self.state.value}, "
            f"failures={self._failures}/{self.threshold})"
        )


class BreakerRegistry:
    """One breaker per agent name."""

    def __init__(
        self,
        threshold: int = 3,
        reset_timeout_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get_or_create(
        self,
        agent_id: str,
        threshold: int | None = None,
        reset_timeout_s: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(agent_id)
            if breaker is None:
                breaker = CircuitBreaker(
                    agent_id,
                    threshold=threshold or self.threshold,
                    reset_timeout_s=(
                        self.reset_timeout_s if reset_timeout_s is None else reset_timeout_s
                    ),
                    clock=clock or self._clock,
                )
                self._breakers[agent_id] = breaker
            return breaker

    def get(self, agent_id: str) -> CircuitBreaker | None:
        return self._breakers.get(agent_id)

    def all(self) -> list[CircuitBreaker]:
        with self._lock:
            return list(self._breakers.values())

    def open_breakers(self) -> list[CircuitBreaker]:
        """Breakers refusing calls right now (half-open ones, ready for a probe, excluded)."""
        return [b for b in self.all() if b.state is CircuitState.OPEN]

    all_open = open_breakers  # the seed's name

    def reset_all(self) -> None:
        for breaker in self.all():
            breaker.reset()

    def clear(self) -> None:
        """Forget every breaker (tests; a fresh process starts this way)."""
        with self._lock:
            self._breakers.clear()

    def to_dict(self) -> dict[str, Any]:
        return {b.agent_id: b.to_dict() for b in self.all()}

    # -- crossing process boundaries (a CLI run, a Dagster step, a forked phase)

    def snapshot(self) -> dict[str, Any]:
        """Every breaker's state, JSON-serializable; `restore` rebuilds it elsewhere."""
        return {"version": 1, "breakers": [b.snapshot() for b in self.all()]}

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Take over the breakers of a snapshot (others stay); open ones keep their wait."""
        for data in snapshot.get("breakers", []):
            breaker = self.get_or_create(
                str(data["agent_id"]),
                threshold=int(data.get("threshold") or self.threshold),
                reset_timeout_s=float(data.get("reset_timeout_s", self.reset_timeout_s)),
            )
            breaker._restore(data)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=2), encoding="utf-8")
        tmp.replace(path)

    def load(self, path: Path) -> bool:
        """Restore from a file written by `save`; False when it is missing or unreadable."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self.restore(data)
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True


CircuitBreakerRegistry = BreakerRegistry  # the seed's name


def call_agent(
    breakers: BreakerRegistry,
    agent: str,
    step: str,
    fn: Callable[[], T],
    *,
    cycle_id: str | None = None,
) -> T:
    """One agent step through the agent's breaker in `breakers`, its exception sorted into
    the two families of `core.errors`:

    - a `CycleEnded` (bad input, a drifted replay, a refused budget, "cannot be
      implemented") propagates and counts as the agent answering, never toward opening its
      breaker: it is not the agent's failure;
    - an open breaker is `AgentNotCalled`; anything else the agent raised is `AgentError`
      (its detail names the exception), so each caller decides only what a failed agent
      means for its phase.
    """
    breaker = breakers.get_or_create(agent)
    try:
        return breaker.call(fn, benign=(CycleEnded,), cycle_id=cycle_id)
    except CycleEnded:
        raise
    except CircuitOpenError as exc:
        raise AgentNotCalled(agent, step, str(exc)) from exc
    except Exception as exc:
        raise AgentError(agent, step, f"{type(exc).__name__}: {exc}") from exc
