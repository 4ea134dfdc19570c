"""Agent backends behind one protocol, and the registry that builds a panel from names."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from nomic_dagster.agents.base import Agent, WorkArea
from nomic_dagster.errors import BadInput

if TYPE_CHECKING:
    from nomic_dagster.pricing import Budget

AgentFactory = Callable[[], Agent]
LLMFactory = Callable[["Budget | None"], Agent]


def _llm_builtin() -> dict[str, LLMFactory]:
    """LLM backends, configured from the environment (keys, base URLs, models, budget)."""
    from nomic_dagster.agents.anthropic_agent import AnthropicAgent
    from nomic_dagster.agents.openai_agent import OpenAIAgent

    return {
        "claude": lambda budget: AnthropicAgent.from_env("claude", budget=budget),
        "gpt": lambda budget: OpenAIAgent.from_env("gpt", budget=budget),
        "openai-compatible": lambda budget: OpenAIAgent.from_env(
            "openai-compatible", compatible=True, budget=budget
        ),
    }


def _cli_builtin() -> dict[str, AgentFactory]:
    """CLI coding agents (implementers); building one finds its executable or is BadInput."""
    from nomic_dagster.agents.cli_agent import ClaudeCodeAgent, CodexAgent

    return {"claude-code": ClaudeCodeAgent, "codex": CodexAgent}


def _builtin() -> dict[str, AgentFactory]:
    # Imported lazily so that listing names does not import every backend's dependencies.
    from nomic_dagster.agents.dead_code import DeadCodeRemover
    from nomic_dagster.agents.lint_fixer import LintFixer
    from nomic_dagster.agents.test_writer import TestWriter

    return {"lint-fixer": LintFixer, "test-writer": TestWriter, "dead-code": DeadCodeRemover}


OFFLINE_AGENT_NAMES: tuple[str, ...] = ("lint-fixer", "test-writer", "dead-code")
LLM_AGENT_NAMES: tuple[str, ...] = ("claude", "gpt", "openai-compatible")
CLI_AGENT_NAMES: tuple[str, ...] = ("claude-code", "codex")
BUILTIN_AGENT_NAMES: tuple[str, ...] = OFFLINE_AGENT_NAMES + LLM_AGENT_NAMES + CLI_AGENT_NAMES


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


def build_agent(name: str, budget: Budget | None = None) -> Agent:
    """The agent `name`. LLM agents share `budget` when given; without one they share a
    budget per cycle from $NOMIC_BUDGET_USD. A missing key or an unpriced model is BadInput."""
    if ":" in name:
        return _from_import_path(name)
    if name in LLM_AGENT_NAMES:
        return _llm_builtin()[name](budget)
    if name in CLI_AGENT_NAMES:
        return _cli_builtin()[name]()
    factories = _builtin()
    if name not in factories:
        raise BadInput(
            f"unknown agent {name!r}",
            f"use one of {', '.join(BUILTIN_AGENT_NAMES)}, or an import path "
            "'package.module:Class'",
        )
    return factories[name]()


def build_panel(names: Iterable[str], budget: Budget | None = None) -> list[Agent]:
    names = list(names)
    if not names:
        raise BadInput("the agent panel is empty", "name at least one agent in `agents`")
    if len(set(names)) != len(names):
        raise BadInput(f"agent names repeat in {names}", "name each agent once")
    agents = [build_agent(n, budget) for n in names]
    seen = [a.name for a in agents]
    if len(set(seen)) != len(seen):
        raise BadInput(f"two agents share a name in {seen}", "give each agent a distinct name")
    return agents


__all__ = [
    "BUILTIN_AGENT_NAMES",
    "CLI_AGENT_NAMES",
    "LLM_AGENT_NAMES",
    "OFFLINE_AGENT_NAMES",
    "Agent",
    "WorkArea",
    "build_agent",
    "build_panel",
]
