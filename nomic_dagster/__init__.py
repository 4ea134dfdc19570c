"""nomic_dagster: an autonomous code-improvement loop, run on Dagster or as a state machine.

    from nomic_dagster import create_nomic_state_machine

    sm = create_nomic_state_machine(checkpoint_dir="/tmp/nomic")
    record = await sm.run(goal="Improve test coverage in the parser")

The names below are imported on first use, so `import nomic_dagster` stays light (no
Dagster, no agents) for code that only needs one submodule.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, tuple[str, str]] = {
    # the state machine
    "create_nomic_state_machine": ("nomic_dagster.state_machine", "create_nomic_state_machine"),
    "NomicStateMachine": ("nomic_dagster.state_machine", "NomicStateMachine"),
    "resume_from_checkpoint": ("nomic_dagster.state_machine", "resume_from_checkpoint"),
    "NomicState": ("nomic_dagster.states", "NomicState"),
    "TransitionError": ("nomic_dagster.states", "TransitionError"),
    "StateMetadata": ("nomic_dagster.states", "StateMetadata"),
    "STATE_CONFIG": ("nomic_dagster.states", "STATE_CONFIG"),
    "VALID_TRANSITIONS": ("nomic_dagster.states", "VALID_TRANSITIONS"),
    # the legacy loop
    "NomicLoop": ("nomic_dagster.loop", "NomicLoop"),
    # checkpoints
    "Checkpoint": ("nomic_dagster.checkpoints", "Checkpoint"),
    "CheckpointError": ("nomic_dagster.checkpoints", "CheckpointError"),
    "CheckpointManager": ("nomic_dagster.checkpoints", "CheckpointManager"),
    "list_checkpoints": ("nomic_dagster.checkpoints", "list_checkpoints"),
    "load_checkpoint": ("nomic_dagster.checkpoints", "load_checkpoint"),
    "load_latest_checkpoint": ("nomic_dagster.checkpoints", "load_latest_checkpoint"),
    "save_checkpoint": ("nomic_dagster.checkpoints", "save_checkpoint"),
    "delete_checkpoint": ("nomic_dagster.checkpoints", "delete_checkpoint"),
    "cleanup_old_checkpoints": ("nomic_dagster.checkpoints", "cleanup_old_checkpoints"),
    # recovery
    "RecoveryManager": ("nomic_dagster.recovery", "RecoveryManager"),
    "RecoveryAction": ("nomic_dagster.recovery", "RecoveryAction"),
    "RecoveryDecision": ("nomic_dagster.recovery", "RecoveryDecision"),
    "CircuitBreaker": ("nomic_dagster.recovery", "CircuitBreaker"),
    # records and settings
    "NomicCycleRecord": ("nomic_dagster.cycle_store", "NomicCycleRecord"),
    "get_cycle_store": ("nomic_dagster.cycle_store", "get_cycle_store"),
    "CycleRecord": ("nomic_dagster.records", "CycleRecord"),
    "Outcome": ("nomic_dagster.records", "Outcome"),
    "Track": ("nomic_dagster.records", "Track"),
    "CycleSettings": ("nomic_dagster.settings", "CycleSettings"),
    "BadInput": ("nomic_dagster.errors", "BadInput"),
    # decomposition and multi-track orchestration
    "TaskDecomposer": ("nomic_dagster.decomposer", "TaskDecomposer"),
    "analyze_task": ("nomic_dagster.decomposer", "analyze_task"),
    "AutonomousOrchestrator": ("nomic_dagster.orchestrator", "AutonomousOrchestrator"),
    "TrackConfig": ("nomic_dagster.orchestrator", "TrackConfig"),
}

__all__ = [
    "STATE_CONFIG",
    "VALID_TRANSITIONS",
    "AutonomousOrchestrator",
    "BadInput",
    "Checkpoint",
    "CheckpointError",
    "CheckpointManager",
    "CircuitBreaker",
    "CycleRecord",
    "CycleSettings",
    "NomicCycleRecord",
    "NomicLoop",
    "NomicState",
    "NomicStateMachine",
    "Outcome",
    "RecoveryAction",
    "RecoveryDecision",
    "RecoveryManager",
    "StateMetadata",
    "TaskDecomposer",
    "Track",
    "TrackConfig",
    "TransitionError",
    "analyze_task",
    "cleanup_old_checkpoints",
    "create_nomic_state_machine",
    "delete_checkpoint",
    "get_cycle_store",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "resume_from_checkpoint",
    "save_checkpoint",
]

if TYPE_CHECKING:  # pragma: no cover
    from nomic_dagster.checkpoints import (
        Checkpoint,
        CheckpointError,
        CheckpointManager,
        cleanup_old_checkpoints,
        delete_checkpoint,
        list_checkpoints,
        load_checkpoint,
        load_latest_checkpoint,
        save_checkpoint,
    )
    from nomic_dagster.cycle_store import NomicCycleRecord, get_cycle_store
    from nomic_dagster.decomposer import TaskDecomposer, analyze_task
    from nomic_dagster.errors import BadInput
    from nomic_dagster.loop import NomicLoop
    from nomic_dagster.orchestrator import AutonomousOrchestrator, TrackConfig
    from nomic_dagster.records import CycleRecord, Outcome, Track
    from nomic_dagster.recovery import (
        CircuitBreaker,
        RecoveryAction,
        RecoveryDecision,
        RecoveryManager,
    )
    from nomic_dagster.settings import CycleSettings
    from nomic_dagster.state_machine import (
        NomicStateMachine,
        create_nomic_state_machine,
        resume_from_checkpoint,
    )
    from nomic_dagster.states import (
        STATE_CONFIG,
        VALID_TRANSITIONS,
        NomicState,
        StateMetadata,
        TransitionError,
    )


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'nomic_dagster' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
