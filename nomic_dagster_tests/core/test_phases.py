"""The phase table: complete, well-formed, and what the state machine, the steps and the
approval flow read."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from nomic_dagster.core import phases as phase_table
from nomic_dagster.core.phases import (
    PHASES,
    REEXECUTABLE_OUTCOMES,
    PhaseSpec,
    phases_table,
    resume_phases,
    worst_case_s,
)
from nomic_dagster.core.records import Outcome, Phase
from nomic_dagster.core.states import STATE_CONFIG, NomicState, merge_state_config
from nomic_dagster.cycle import approvals, steps
from nomic_dagster.drivers.state_machine import NomicStateMachine

# aragora-nomic §2.3: timeout, retries, critical of each phase state.
SEED_LIMITS = {
    Phase.CONTEXT: (1200, 2, False),
    Phase.DEBATE: (3600, 1, True),
    Phase.DESIGN: (1800, 2, False),
    Phase.IMPLEMENT: (2400, 1, True),
    Phase.VERIFY: (1800, 3, False),
    Phase.COMMIT: (300, 1, True),
}


def test_the_table_has_one_spec_per_phase_in_cycle_order() -> None:
    assert list(PHASES) == list(Phase)
    for phase, spec in PHASES.items():
        assert spec.phase is phase
        assert spec.summary and spec.description
        assert (spec.timeout_s, spec.max_retries, spec.critical) == SEED_LIMITS[phase]
    assert [p for p, s in PHASES.items() if s.calls_models] == [
        Phase.DEBATE,
        Phase.DESIGN,
        Phase.IMPLEMENT,
    ]
    assert resume_phases() == (Phase.IMPLEMENT, Phase.VERIFY, Phase.COMMIT)
    assert [p for p, s in PHASES.items() if s.reexecutable] == list(resume_phases())
    assert {
        Outcome.IMPLEMENTATION_FAILED,
        Outcome.VERIFICATION_FAILED,
        Outcome.ERROR,
    } == REEXECUTABLE_OUTCOMES


def test_state_config_takes_every_phase_state_from_the_table() -> None:
    for phase, spec in PHASES.items():
        meta = STATE_CONFIG[NomicState.parse(phase)]
        assert meta.name == phase.value
        assert meta.timeout_seconds == spec.timeout_s
        assert meta.max_retries == spec.max_retries
        assert meta.is_critical == spec.critical
        assert meta.description == spec.summary
    # the states that run no phase keep their own limits
    assert STATE_CONFIG[NomicState.RECOVERY].timeout_seconds == 300
    assert list(STATE_CONFIG) == list(NomicState)


def test_a_machine_override_still_wins_over_the_table(tmp_path) -> None:
    merged = merge_state_config({"verify": {"timeout_seconds": 2, "max_retries": 0}})
    assert merged[NomicState.VERIFY].timeout_seconds == 2
    assert merged[NomicState.VERIFY].max_retries == 0
    assert merged[NomicState.DEBATE] == STATE_CONFIG[NomicState.DEBATE]
    assert PHASES[Phase.VERIFY].timeout_s == 1800  # the table is untouched
    machine = NomicStateMachine(
        checkpoint_dir=tmp_path, state_config={"commit": {"is_critical": False}}
    )
    assert not machine.config[NomicState.COMMIT].is_critical
    assert machine.config[NomicState.IMPLEMENT].is_critical


def test_every_step_is_keyed_by_the_table() -> None:
    assert list(steps.STEPS) == list(PHASES)


def test_the_scattered_copies_are_gone() -> None:
    from nomic_dagster.orchestration import ops

    for module, name in (
        (ops, "LLM_PHASES"),
        (ops, "REEXECUTABLE_PHASES"),
        (steps, "REEXECUTABLE"),
        (approvals, "RESUME_PHASES"),
    ):
        assert not hasattr(module, name), f"{module.__name__}.{name} duplicates the phase table"


def test_a_spec_refuses_negative_limits_and_is_frozen() -> None:
    spec = PHASES[Phase.VERIFY]
    with pytest.raises(ValidationError):
        PhaseSpec(**{**spec.model_dump(), "timeout_s": -1})
    with pytest.raises(ValidationError):
        PhaseSpec(**{**spec.model_dump(), "max_retries": -1})
    with pytest.raises(ValidationError):
        spec.timeout_s = 1  # type: ignore[misc]


def test_a_table_that_misses_or_mislabels_a_phase_is_refused() -> None:
    incomplete = {p: s for p, s in PHASES.items() if p is not Phase.VERIFY}
    with pytest.raises(ValueError, match="must list"):
        phase_table._check(incomplete)
    mislabelled = {**PHASES, Phase.VERIFY: PHASES[Phase.COMMIT]}
    with pytest.raises(ValueError, match="describes commit"):
        phase_table._check(mislabelled)
    odd = PHASES[Phase.COMMIT].model_copy(update={"reexecutable": False})
    with pytest.raises(ValueError, match="not re-executable"):
        phase_table._check({**PHASES, Phase.COMMIT: odd})


def test_worst_case_counts_every_attempt() -> None:
    assert PHASES[Phase.VERIFY].worst_case_s == 1800 * 4
    assert worst_case_s(resume_phases()) == 2400 * 2 + 1800 * 4 + 300 * 2
    assert worst_case_s() == sum(t * (1 + r) for t, r, _ in SEED_LIMITS.values())


def test_the_printed_table_has_a_row_per_phase() -> None:
    lines = phases_table().splitlines()
    assert lines[0].split()[:3] == ["PHASE", "TIMEOUT", "RETRIES"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == [p.value for p in PHASES]
    assert rows["verify"][1:3] == ["1800s", "3"]
    assert rows["debate"][3:5] == ["yes", "yes"]  # critical, calls models
