"""Run configs for the cycle jobs: one place that knows where a cycle's settings go."""

from __future__ import annotations

from typing import Any

from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND


def cycle_config(**fields: Any) -> dict[str, Any]:
    """The run config of a nomic_cycle job whose context_op gets `fields` (CycleSettings
    fields; the op builds the cycle's settings from them)."""
    return {"ops": {"context_op": {"config": fields}}}


def fast_cycle_config(**fields: Any) -> dict[str, Any]:
    """`cycle_config` with the fast test command for small targets, unless `fields` name one."""
    return cycle_config(**{"test_command": FAST_TEST_COMMAND, **fields})
