"""The state machine's vocabulary: states, legal transitions, per-state limits.

Eleven states (aragora-nomic §2.1); the transitions of §2.2, exactly; the timeouts and
retry limits of §2.3 as defaults that a `NomicStateMachine` can override per state. No
phase runs here: the six phase states map one to one onto the phases of `core.phases.PHASES`,
whose timeouts, retries and criticality they take.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nomic_dagster.core.errors import NomicError
from nomic_dagster.core.phases import PHASES, PhaseSpec
from nomic_dagster.core.records import Phase


class NomicState(StrEnum):
    IDLE = "idle"
    CONTEXT = "context"
    DEBATE = "debate"
    DESIGN = "design"
    IMPLEMENT = "implement"
    VERIFY = "verify"
    COMMIT = "commit"
    RECOVERY = "recovery"
    COMPLETED = "completed"
    FAILED = "failed"
    PAUSED = "paused"

    @classmethod
    def parse(cls, value: object) -> NomicState:
        """A state from a NomicState, a Phase, or a name in any case ("VERIFY", "verify")."""
        if isinstance(value, NomicState):
            return value
        if isinstance(value, Phase):
            return cls(value.value)
        if isinstance(value, str):
            text = value.strip().lower()
            if text in cls._value2member_map_:
                return cls(text)
        names = ", ".join(s.name for s in cls)
        raise ValueError(f"unknown state {value!r}: the states are {names}")

    @property
    def phase(self) -> Phase | None:
        """The cycle phase this state runs, None for IDLE/RECOVERY/COMPLETED/FAILED/PAUSED."""
        return Phase(self.value) if self.value in Phase._value2member_map_ else None

    @property
    def is_phase(self) -> bool:
        return self.phase is not None

    @property
    def is_terminal(self) -> bool:
        return self in (NomicState.COMPLETED, NomicState.FAILED)


S = NomicState

# aragora-nomic §2.2, exactly. Note what is missing: no phase goes straight to FAILED (a
# failure always passes through RECOVERY), CONTEXT and VERIFY cannot go to COMPLETED, and
# RECOVERY can never enter COMMIT (only a passed VERIFY leads there).
VALID_TRANSITIONS: dict[NomicState, frozenset[NomicState]] = {
    S.IDLE: frozenset({S.CONTEXT, S.PAUSED}),
    S.CONTEXT: frozenset({S.DEBATE, S.RECOVERY, S.PAUSED}),
    S.DEBATE: frozenset({S.DESIGN, S.RECOVERY, S.IDLE, S.PAUSED, S.COMPLETED}),
    S.DESIGN: frozenset({S.IMPLEMENT, S.RECOVERY, S.DEBATE, S.PAUSED, S.COMPLETED}),
    S.IMPLEMENT: frozenset({S.VERIFY, S.RECOVERY, S.PAUSED, S.COMPLETED}),
    S.VERIFY: frozenset({S.COMMIT, S.IMPLEMENT, S.RECOVERY, S.PAUSED}),
    S.COMMIT: frozenset({S.COMPLETED, S.RECOVERY, S.PAUSED}),
    S.RECOVERY: frozenset(
        {
            S.IDLE,
            S.CONTEXT,
            S.DEBATE,
            S.DESIGN,
            S.IMPLEMENT,
            S.VERIFY,
            S.FAILED,
            S.PAUSED,
            S.COMPLETED,
        }
    ),
    S.COMPLETED: frozenset({S.IDLE}),
    S.FAILED: frozenset({S.IDLE}),
    S.PAUSED: frozenset({S.IDLE, S.CONTEXT, S.DEBATE, S.DESIGN, S.IMPLEMENT, S.VERIFY, S.COMMIT}),
}

PHASE_STATES: tuple[NomicState, ...] = (
    S.CONTEXT,
    S.DEBATE,
    S.DESIGN,
    S.IMPLEMENT,
    S.VERIFY,
    S.COMMIT,
)

# Where a phase goes when it finishes and the cycle goes on.
HAPPY_NEXT: dict[NomicState, NomicState] = {
    S.CONTEXT: S.DEBATE,
    S.DEBATE: S.DESIGN,
    S.DESIGN: S.IMPLEMENT,
    S.IMPLEMENT: S.VERIFY,
    S.VERIFY: S.COMMIT,
    S.COMMIT: S.COMPLETED,
}


def is_valid_transition(from_state: object, to_state: object) -> bool:
    return NomicState.parse(to_state) in VALID_TRANSITIONS[NomicState.parse(from_state)]


class TransitionError(NomicError):
    """A transition the table does not allow, or a state the machine cannot be in for it."""

    def __init__(self, from_state: object, to_state: object, detail: str = "") -> None:
        self.from_state = NomicState.parse(from_state)
        self.to_state = NomicState.parse(to_state)
        allowed = ", ".join(sorted(s.name for s in VALID_TRANSITIONS[self.from_state]))
        message = (
            f"illegal transition {self.from_state.name} -> {self.to_state.name}"
            f"{': ' + detail if detail else ''} (from {self.from_state.name} the machine may "
            f"go to {allowed})"
        )
        super().__init__(message)


@dataclass(frozen=True)
class StateMetadata:
    """Limits of one state. `timeout_seconds` 0 means none; `max_retries` counts the runs
    after the first; a critical state's exhausted failure fails the cycle."""

    name: str
    description: str
    timeout_seconds: float = 0
    max_retries: int = 0
    is_critical: bool = False
    requires_checkpoint: bool = True

    def __post_init__(self) -> None:
        if self.timeout_seconds < 0:
            raise ValueError(f"{self.name}: timeout_seconds must not be negative")
        if self.max_retries < 0:
            raise ValueError(f"{self.name}: max_retries must not be negative")


def _phase_state(spec: PhaseSpec) -> StateMetadata:
    """A phase state's limits: the phase table's."""
    return StateMetadata(
        spec.phase.value,
        spec.summary,
        timeout_seconds=spec.timeout_s,
        max_retries=spec.max_retries,
        is_critical=spec.critical,
    )


# aragora-nomic §2.3: the phase states from the phase table, the others here.
STATE_CONFIG: dict[NomicState, StateMetadata] = {
    S.IDLE: StateMetadata("idle", "waiting for a cycle", 0, 0, False, False),
    **{NomicState.parse(phase): _phase_state(spec) for phase, spec in PHASES.items()},
    S.RECOVERY: StateMetadata("recovery", "decide what to do after a failure", 300, 0),
    S.COMPLETED: StateMetadata("completed", "the cycle ended (committed or a gate closed)"),
    S.FAILED: StateMetadata("failed", "the cycle could not run"),
    S.PAUSED: StateMetadata("paused", "waiting for resume()"),
}


def get_state_config(state: object) -> StateMetadata:
    """The state's limits; IDLE's for a name that is not a state (as in the seed)."""
    try:
        return STATE_CONFIG[NomicState.parse(state)]
    except ValueError:
        return STATE_CONFIG[S.IDLE]


_FIELDS = {f.name for f in dataclasses.fields(StateMetadata)} - {"name"}


def merge_state_config(
    overrides: Mapping[object, StateMetadata | Mapping[str, Any]] | None,
    base: Mapping[NomicState, StateMetadata] = STATE_CONFIG,
) -> dict[NomicState, StateMetadata]:
    """`base` with per-state overrides: a whole StateMetadata, or a mapping of its fields,
    e.g. {"debate": {"timeout_seconds": 2}}. Unknown states or fields raise ValueError."""
    merged = dict(base)
    for key, value in (overrides or {}).items():
        state = NomicState.parse(key)
        if isinstance(value, StateMetadata):
            merged[state] = value
            continue
        unknown = set(value) - _FIELDS
        if unknown:
            raise ValueError(
                f"unknown setting(s) {sorted(unknown)} for state {state.name}: "
                f"use {', '.join(sorted(_FIELDS))}"
            )
        merged[state] = dataclasses.replace(merged[state], **dict(value))
    return merged


def state_name(state: object) -> str:
    """'verify' for "VERIFY", NomicState.VERIFY (value or name), Phase.VERIFY, ..."""
    value = getattr(state, "value", state)
    if not isinstance(value, str):  # an auto() int enum: use its name
        value = getattr(state, "name", str(state))
    return value.strip().lower()
