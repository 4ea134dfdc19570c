"""Agent backends behind one protocol, and the registry that builds a panel from names."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

from nomic_dagster.agents.base import Agent, WorkArea
from nomic_dagster.errors import BadInput

AgentFactory = Callable[[], Agent]


def _builtin() -> dict[str, AgentFactory]:
    # Imported lazily so that listing names does not import every backend's dependencies.
    from nomic_dagster.agents.dead_code import DeadCodeRemover
    from nomic_dagster.agents.lint_fixer import LintFixer
    from nomic_dagster.agents.test_writer import TestWriter

    return {"lint-fixer": LintFixer, "test-writer": TestWriter, "dead-code": DeadCodeRemover}


BUILTIN_AGENT_NAMES: tuple[str, ...] = ("lint-fixer", "test-writer", "dead-code")


def _from_import_path(spec: str) -> Agent:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise BadInput(
            f"agent {spec!r} cannot be imported: {exc}",
            "use 'package.module:ClassName' for an importable class with no required arguments",
        ) from exc
    agent = factory()
    if not isinstance(agent, Agent):
        raise BadInput(
            f"agent {spec!r} does not implement the agent protocol",
            "give it name, propose, critique, vote, design and implement (nomic_dagster.agents.base)",
        )
    return agent


def build_agent(name: str) -> Agent:
    if ":" in name:
        return _from_import_path(name)
    factories = _builtin()
    if name not in factories:
        raise BadInput(
            f"unknown agent {name!r}",
            f"use one of {', '.join(sorted(factories))}, or an import path 'package.module:Class'",
        )
    return factories[name]()


def build_panel(names: Iterable[str]) -> list[Agent]:
    names = list(names)
    if not names:
        raise BadInput("the agent panel is empty", "name at least one agent in `agents`")
    if len(set(names)) != len(names):
        raise BadInput(f"agent names repeat in {names}", "name each agent once")
    agents = [build_agent(n) for n in names]
    seen = [a.name for a in agents]
    if len(set(seen)) != len(seen):
        raise BadInput(f"two agents share a name in {seen}", "give each agent a distinct name")
    return agents


__all__ = ["BUILTIN_AGENT_NAMES", "Agent", "WorkArea", "build_agent", "build_panel"]
