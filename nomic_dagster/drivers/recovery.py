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

The breakers it counts are the driver's (`CycleRuntime.breakers`, `infra/breakers.py`):
they span the cycles one driver runs (NomicLoop, the state machine), and the CLIs and the
Dagster ops keep them in `<state dir>/breakers.json` between processes.

Every decision and every breaker change is an event on `nomic_dagster.core.events.bus`
(RECOVERY_DECISION, CIRCUIT_OPENED, CIRCUIT_CLOSED), which the Prometheus metrics count.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from nomic_dagster.core.events import EventType, bus
from nomic_dagster.core.records import utcnow
from nomic_dagster.core.states import get_state_config, state_name
from nomic_dagster.infra.breakers import BreakerRegistry

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
    """The seed's `context` argument of `decide(error, context)`; a plain dict works too.

    `max_retries` and `is_critical` left out (None) are the failed state's own, from the
    state table (`core.states.STATE_CONFIG`), as the state machine would use them."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    state: str = Field(validation_alias=AliasChoices("state", "current_state", "failed_state"))
    attempts: int = Field(
        default=0, ge=0, validation_alias=AliasChoices("attempts", "retry_count", "retries")
    )
    max_retries: int | None = Field(default=None, ge=0)
    is_critical: bool | None = Field(
        default=None, validation_alias=AliasChoices("is_critical", "critical")
    )
    cycle_id: str | None = None

    @property
    def retries_allowed(self) -> int:
        """`max_retries`, else the state table's retries for the state."""
        if self.max_retries is not None:
            return self.max_retries
        return get_state_config(self.state).max_retries

    @property
    def critical(self) -> bool:
        """`is_critical`, else whether the state table marks the state critical."""
        if self.is_critical is not None:
            return self.is_critical
        return get_state_config(self.state).is_critical

    @field_validator("state", mode="before")
    @classmethod
    def _name(cls, value: object) -> str:
        return state_name(value)


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
        self.breakers = breakers if breakers is not None else BreakerRegistry()
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
        """The seed's API: `decision = await manager.decide(error, context)`. The context
        names the failed state (and attempts so far); retries and criticality it leaves out
        are the state table's for that state."""
        ctx = (
            context
            if isinstance(context, RecoveryContext)
            else RecoveryContext.model_validate(dict(context))
        )
        return self.decide_sync(
            error, ctx.state, ctx.attempts, ctx.retries_allowed, ctx.critical, ctx.cycle_id
        )

    async def decide_recovery(
        self, state: object, error: BaseException | str, context: Mapping[str, Any] | None = None
    ) -> RecoveryDecision:
        """The original module's argument order; `context` supplies attempts/max_retries/critical."""
        return await self.decide(error, {**(context or {}), "state": state_name(state)})


__all__ = [
    "RecoveryAction",
    "RecoveryContext",
    "RecoveryDecision",
    "RecoveryManager",
    "RecoveryStrategy",
    "calculate_backoff",
    "is_transient",
]
