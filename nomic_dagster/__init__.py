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
    "create_nomic_state_machine": (
        "nomic_dagster.drivers.state_machine",
        "create_nomic_state_machine",
    ),
    "NomicStateMachine": ("nomic_dagster.drivers.state_machine", "NomicStateMachine"),
    "resume_from_checkpoint": ("nomic_dagster.drivers.state_machine", "resume_from_checkpoint"),
    "NomicState": ("nomic_dagster.core.states", "NomicState"),
    "TransitionError": ("nomic_dagster.core.states", "TransitionError"),
    "StateMetadata": ("nomic_dagster.core.states", "StateMetadata"),
    "STATE_CONFIG": ("nomic_dagster.core.states", "STATE_CONFIG"),
    "VALID_TRANSITIONS": ("nomic_dagster.core.states", "VALID_TRANSITIONS"),
    # the legacy loop
    "NomicLoop": ("nomic_dagster.drivers.loop", "NomicLoop"),
    # checkpoints
    "Checkpoint": ("nomic_dagster.drivers.checkpoints", "Checkpoint"),
    "CheckpointError": ("nomic_dagster.drivers.checkpoints", "CheckpointError"),
    "CheckpointManager": ("nomic_dagster.drivers.checkpoints", "CheckpointManager"),
    "list_checkpoints": ("nomic_dagster.drivers.checkpoints", "list_checkpoints"),
    "load_checkpoint": ("nomic_dagster.drivers.checkpoints", "load_checkpoint"),
    "load_latest_checkpoint": ("nomic_dagster.drivers.checkpoints", "load_latest_checkpoint"),
    "save_checkpoint": ("nomic_dagster.drivers.checkpoints", "save_checkpoint"),
    "delete_checkpoint": ("nomic_dagster.drivers.checkpoints", "delete_checkpoint"),
    "cleanup_old_checkpoints": ("nomic_dagster.drivers.checkpoints", "cleanup_old_checkpoints"),
    # recovery
    "RecoveryManager": ("nomic_dagster.drivers.recovery", "RecoveryManager"),
    "RecoveryAction": ("nomic_dagster.drivers.recovery", "RecoveryAction"),
    "RecoveryDecision": ("nomic_dagster.drivers.recovery", "RecoveryDecision"),
    "RecoveryContext": ("nomic_dagster.drivers.recovery", "RecoveryContext"),
    "RecoveryStrategy": ("nomic_dagster.drivers.recovery", "RecoveryStrategy"),
    "CircuitBreaker": ("nomic_dagster.infra.breakers", "CircuitBreaker"),
    # records and settings
    "NomicCycleRecord": ("nomic_dagster.planning.cycle_store", "NomicCycleRecord"),
    "get_cycle_store": ("nomic_dagster.planning.cycle_store", "get_cycle_store"),
    "CycleRecord": ("nomic_dagster.core.records", "CycleRecord"),
    "Outcome": ("nomic_dagster.core.records", "Outcome"),
    "Track": ("nomic_dagster.core.records", "Track"),
    "CycleSettings": ("nomic_dagster.core.settings", "CycleSettings"),
    "BadInput": ("nomic_dagster.core.errors", "BadInput"),
    # planning, decomposition and multi-track orchestration
    "MetaPlanner": ("nomic_dagster.planning.meta_planner", "MetaPlanner"),
    "TaskDecomposer": ("nomic_dagster.planning.decomposer", "TaskDecomposer"),
    "analyze_task": ("nomic_dagster.planning.decomposer", "analyze_task"),
    "AutonomousOrchestrator": (
        "nomic_dagster.orchestration.orchestrator",
        "AutonomousOrchestrator",
    ),
    "TrackConfig": ("nomic_dagster.orchestration.orchestrator", "TrackConfig"),
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
    "MetaPlanner",
    "NomicCycleRecord",
    "NomicLoop",
    "NomicState",
    "NomicStateMachine",
    "Outcome",
    "RecoveryAction",
    "RecoveryContext",
    "RecoveryDecision",
    "RecoveryManager",
    "RecoveryStrategy",
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
    from nomic_dagster.core.errors import BadInput
    from nomic_dagster.core.records import CycleRecord, Outcome, Track
    from nomic_dagster.core.settings import CycleSettings
    from nomic_dagster.core.states import (
        STATE_CONFIG,
        VALID_TRANSITIONS,
        NomicState,
        StateMetadata,
        TransitionError,
    )
    from nomic_dagster.drivers.checkpoints import (
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
    from nomic_dagster.drivers.loop import NomicLoop
    from nomic_dagster.drivers.recovery import (
        RecoveryAction,
        RecoveryContext,
        RecoveryDecision,
        RecoveryManager,
        RecoveryStrategy,
    )
    from nomic_dagster.drivers.state_machine import (
        NomicStateMachine,
        create_nomic_state_machine,
        resume_from_checkpoint,
    )
    from nomic_dagster.infra.breakers import CircuitBreaker
    from nomic_dagster.orchestration.orchestrator import AutonomousOrchestrator, TrackConfig
    from nomic_dagster.planning.cycle_store import NomicCycleRecord, get_cycle_store
    from nomic_dagster.planning.decomposer import TaskDecomposer, analyze_task
    from nomic_dagster.planning.meta_planner import MetaPlanner


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
