"""Recovery decisions, per-agent circuit breakers and exponential backoff.

`RecoveryManager.decide_sync(error, state, attempts, max_retries, is_critical)` says what
to do after a phase failed. The rules, in order:

1. two or more open circuit breakers -> PAUSE (a person must look: the panel is unhealthy);
2. a transient error (TimeoutError, ConnectionError, or a message naming a rate limit, a
   timeout, a reset connection, a temporary failure, 503 or 429) with retries left ->
   RETRY with backoff (base 1 s);
3. a failure of a non-critical DESIGN or IMPLEMENT -> SKIP: the rest of this cycle is
   abandoned and nothing is committed (target "completed");
4. retries left -> RETRY with backoff (base 5 s);
5. critical and retries exhausted -> FAIL;
6. otherwise PAUSE (requires a person).

What the original got wrong and this module does not (see aragora-nomic §26 W2): SKIP
never jumps over VERIFY to COMMIT, and no decision ever targets COMMIT. A retry of a
failed COMMIT goes back to VERIFY, so the tree is verified again before anything lands.
`RecoveryDecision` refuses a COMMIT target outright.

`CircuitBreaker` isolates one failing agent: `threshold` consecutive failures open it;
after `reset_timeout_s` it lets exactly one half-open probe through; the probe's success
closes it, its failure re-opens it. The debate, design and implement phases call every
agent through its breaker (`guarded_call`), so an open breaker takes the agent out of the
round ("circuit open") instead of calling it again. Breakers live in the process-wide
`get_breaker_registry()`: they span the cycles one process runs (NomicLoop, a test).
Across processes a registry travels as `snapshot()` / `restore()` (or `save(path)` /
`load(path)`): the `nomic` CLIs keep it in `<state dir>/breakers.json` between runs.

Every decision and every breaker change is an event on `nomic_dagster.events.bus`
(RECOVERY_DECISION, CIRCUIT_OPENED, CIRCUIT_CLOSED), which the Prometheus metrics count.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from nomic_dagster.errors import NomicError
from nomic_dagster.events import EventType, bus
from nomic_dagster.records import utcnow

T = TypeVar("T")

# ---------------------------------------------------------------- decisions


class RecoveryAction(StrEnum):
    RETRY = "retry"  # run the failed state again after `delay_s`
    SKIP = "skip"  # abandon the rest of this cycle; nothing is committed
    ROLLBACK = "rollback"  # start the cycle again from CONTEXT
    RESTART = "restart"  # back to IDLE
    PAUSE = "pause"  # stop and wait for a person
    FAIL = "fail"  # the cycle failed


RecoveryStrategy = RecoveryAction  # the seed's name

# The states a recovery decision may name; COMMIT is deliberately absent (W2): the only way
# into COMMIT is a passed VERIFY.
COMMIT_STATE = "commit"
SKIP_TARGET = "completed"
RETRY_TARGET_OF = {COMMIT_STATE: "verify"}  # a failed commit is re-verified, then committed
SKIPPABLE_STATES = frozenset({"design", "implement"})

TRANSIENT_MARKERS = (
    "rate limit",
    "rate-limit",
    "ratelimit",
    "timeout",
    "timed out",
    "connection reset",
    "connection refused",
    "temporary",
    "temporarily",
    "503",
    "429",
)
TRANSIENT_TYPES: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError)


class RecoveryDecision(BaseModel):
    """What to do after a failure. Never targets COMMIT."""

    model_config = ConfigDict(extra="forbid")

    action: RecoveryAction
    target_state: str | None = None
    delay_s: float = Field(default=0, ge=0)
    reason: str = ""
    requires_human: bool = False

    @field_validator("target_state", mode="before")
    @classmethod
    def _never_commit(cls, value: object) -> str | None:
        if value is None:
            return None
        name = state_name(value)
        if name == COMMIT_STATE:
            raise ValueError(
                "a recovery decision may not target COMMIT: only a passed VERIFY leads there"
            )
        return name

    @property
    def strategy(self) -> RecoveryAction:  # the seed's field name
        return self.action

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RecoveryContext(BaseModel):
    """The seed's `context` argument of `decide(error, context)`; a plain dict works too."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    state: str = Field(validation_alias=AliasChoices("state", "current_state", "failed_state"))
    attempts: int = Field(
        default=0, ge=0, validation_alias=AliasChoices("attempts", "retry_count", "retries")
    )
    max_retries: int = Field(default=0, ge=0)
    is_critical: bool = Field(
        default=False, validation_alias=AliasChoices("is_critical", "critical")
    )
    cycle_id: str | None = None

    @field_validator("state", mode="before")
    @classmethod
    def _name(cls, value: object) -> str:
        return state_name(value)


def state_name(state: object) -> str:
    """'verify' for "VERIFY", NomicState.VERIFY (value or name), Phase.VERIFY, ..."""
    value = getattr(state, "value", state)
    if not isinstance(value, str):  # an auto() int enum: use its name
        value = getattr(state, "name", str(state))
    return value.strip().lower()


def calculate_backoff(
    attempt: int, base_delay: float = 1.0, max_delay: float = 300.0, jitter: bool = True
) -> float:
    """min(base * 2**(attempt-1), max), times a random factor in [0.75, 1.25] when `jitter`.

    `attempt` counts from 1 (values below 1 are treated as 1). Never above `max_delay`,
    never negative; deterministic with `jitter=False`.
    """
    attempt = max(1, int(attempt))
    exponent = min(attempt - 1, 64)  # 2**64 * base is past any sane max_delay already
    delay = min(base_delay * (2.0**exponent), max_delay)
    if jitter:
        delay *= random.uniform(0.75, 1.25)
    return max(0.0, min(delay, max_delay))


def is_transient(error: BaseException | str) -> bool:
    if isinstance(error, TRANSIENT_TYPES):
        return True
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = text.lower()
    return any(marker in text for marker in TRANSIENT_MARKERS)


def error_type(error: BaseException | str) -> str:
    return "message" if isinstance(error, str) else type(error).__name__


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

_registry = BreakerRegistry()


def get_breaker_registry() -> BreakerRegistry:
    """The process-wide registry the phases call agents through."""
    return _registry


def guarded_call(
    agent_id: str,
    fn: Callable[[], T],
    *,
    benign: tuple[type[BaseException], ...] = (),
    cycle_id: str | None = None,
) -> T:
    """Call an agent step through its breaker in the process-wide registry. A call the
    budget refused, or bad input (a missing key, a replay whose prompt drifted), is not
    the agent's failure, so it never counts toward opening its breaker."""
    from nomic_dagster.errors import BadInput
    from nomic_dagster.pricing import BudgetExhausted

    breaker = get_breaker_registry().get_or_create(agent_id)
    return breaker.call(fn, benign=(*benign, BudgetExhausted, BadInput), cycle_id=cycle_id)


# ---------------------------------------------------------------- the manager


class RecoveryManager:
    """Decides RETRY / SKIP / PAUSE / FAIL after a failure; keeps the decisions it made."""

    def __init__(
        self,
        breakers: BreakerRegistry | None = None,
        *,
        transient_base_delay: float = 1.0,
        retry_base_delay: float = 5.0,
        max_delay: float = 300.0,
        jitter: bool = True,
        history_size: int = 1000,
    ) -> None:
        self.breakers = breakers if breakers is not None else get_breaker_registry()
        self.transient_base_delay = transient_base_delay
        self.retry_base_delay = retry_base_delay
        self.max_delay = max_delay
        self.jitter = jitter
        self._history: deque[dict[str, Any]] = deque(maxlen=history_size)
        self._lock = threading.Lock()

    @property
    def history(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._history)

    def _backoff(self, attempt: int, base: float) -> float:
        return calculate_backoff(attempt, base, self.max_delay, self.jitter)

    def _rules(
        self,
        error: BaseException | str,
        state: str,
        attempts: int,
        max_retries: int,
        critical: bool,
    ) -> RecoveryDecision:
        retries_left = attempts < max_retries
        open_breakers = self.breakers.open_breakers()
        if len(open_breakers) >= 2:
            names = ", ".join(sorted(b.agent_id for b in open_breakers))
            return RecoveryDecision(
                action=RecoveryAction.PAUSE,
                target_state="paused",
                reason=f"{len(open_breakers)} circuit breakers are open ({names})",
                requires_human=True,
            )
        retry_target = RETRY_TARGET_OF.get(state, state)
        again = "again" if retry_target == state else f"from {retry_target} (re-verified)"
        if is_transient(error) and retries_left:
            return RecoveryDecision(
                action=RecoveryAction.RETRY,
                target_state=retry_target,
                delay_s=self._backoff(attempts + 1, self.transient_base_delay),
                reason=f"transient error in {state}; retry {attempts + 1}/{max_retries} {again}",
            )
        if not critical and state in SKIPPABLE_STATES:
            return RecoveryDecision(
                action=RecoveryAction.SKIP,
                target_state=SKIP_TARGET,
                reason=f"{state} failed and is not critical: the rest of the cycle is skipped, "
                "nothing is committed",
            )
        if retries_left:
            return RecoveryDecision(
                action=RecoveryAction.RETRY,
                target_state=retry_target,
                delay_s=self._backoff(attempts + 1, self.retry_base_delay),
                reason=f"{state} failed; retry {attempts + 1}/{max_retries} {again}",
            )
        if critical:
            return RecoveryDecision(
                action=RecoveryAction.FAIL,
                target_state="failed",
                reason=f"{state} is critical and failed after {attempts} retr"
                f"{'y' if attempts == 1 else 'ies'}",
            )
        return RecoveryDecision(
            action=RecoveryAction.PAUSE,
            target_state="paused",
            reason=f"{state} failed after {attempts} retries; waiting for a person",
            requires_human=True,
        )

    def decide_sync(
        self,
        error: BaseException | str,
        state: object,
        attempts: int,
        max_retries: int,
        is_critical: bool,
        cycle_id: str | None = None,
    ) -> RecoveryDecision:
        """The decision for a failure of `state` after `attempts` retries (of `max_retries`).

        The caller waits `delay_s` and moves to `target_state`; this method never sleeps.
        """
        name = state_name(state)
        decision = self._rules(error, name, max(0, attempts), max(0, max_retries), is_critical)
        message = error if isinstance(error, str) else str(error)
        with self._lock:
            self._history.append(
                {
                    "timestamp": utcnow().isoformat(),
                    "cycle_id": cycle_id,
                    "state": name,
                    "error_type": error_type(error),
                    "error": message[:500],
                    "attempts": attempts,
                    "max_retries": max_retries,
                    "is_critical": is_critical,
                    "decision": decision.to_dict(),
                }
            )
        bus.emit(
            EventType.RECOVERY_DECISION,
            cycle_id,
            error=message[:500] or None,
            action=decision.action.value,
            state=name,
            target_state=decision.target_state,
            delay_s=decision.delay_s,
            reason=decision.reason,
            requires_human=decision.requires_human,
            error_type=error_type(error),
            attempts=attempts,
        )
        return decision

    async def decide(
        self, error: BaseException | str, context: RecoveryContext | Mapping[str, Any]
    ) -> RecoveryDecision:
        """The seed's API: `decision = await manager.decide(error, context)`."""
        ctx = (
            context
            if isinstance(context, RecoveryContext)
            else RecoveryContext.model_validate(dict(context))
        )
        return self.decide_sync(
            error, ctx.state, ctx.attempts, ctx.max_retries, ctx.is_critical, ctx.cycle_id
        )

    async def decide_recovery(
        self, state: object, error: BaseException | str, context: Mapping[str, Any] | None = None
    ) -> RecoveryDecision:
        """The original module's argument order; `context` supplies attempts/max_retries/critical."""
        return await self.decide(error, {**(context or {}), "state": state_name(state)})


__all__ = [
    "BreakerRegistry",
    "CircuitBreaker",
    "CircuitBreakerRegistry",
    "CircuitOpenError",
    "CircuitState",
    "RecoveryAction",
    "RecoveryContext",
    "RecoveryDecision",
    "RecoveryManager",
    "RecoveryStrategy",
    "calculate_backoff",
    "get_breaker_registry",
    "guarded_call",
    "is_transient",
]
