"""Agent backends behind one protocol, and the registry that builds a panel from names."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from nomic_dagster.agents.backends import SETTINGS_BY_BACKEND, BackendSettings, settings_class
from nomic_dagster.agents.base import Agent, WorkArea
from nomic_dagster.core.errors import BadInput

if TYPE_CHECKING:
    from nomic_dagster.agents.llm.agent import ProviderSlots
    from nomic_dagster.infra.pricing import Budget

AgentFactory = Callable[[], Agent]

# `NOMIC_AGENTS=claude,gpt` (or `claude,offline`) names the panel when the settings name
# none; `offline` stands for the three offline agents.
AGENTS_ENV = "NOMIC_AGENTS"


# The offline agents by name -> import path: imported when built, so that listing names
# does not import every agent's dependencies.
OFFLINE_AGENTS: dict[str, str] = {
    "lint-fixer": "nomic_dagster.agents.offline.lint_fixer:LintFixer",
    "test-writer": "nomic_dagster.agents.offline.test_writer:TestWriter",
    "dead-code": "nomic_dagster.agents.offline.dead_code:DeadCodeRemover",
}


OFFLINE_AGENT_NAMES: tuple[str, ...] = tuple(OFFLINE_AGENTS)
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


def build_agent(
    name: str,
    budget: Budget | None = None,
    backends: Mapping[str, BackendSettings] | None = None,
    slots: ProviderSlots | None = None,
) -> Agent:
    """The agent `name`.

    Settings of LLM and CLI agents come from `backends` (agent name -> settings; a name there
    may also be a new one, e.g. a second Claude model), else from the environment. A
    missing key, executable or price is BadInput naming what to set.

    An agent that pays for model calls has a `budget` attribute and draws on `budget` (the
    phase's, which `run_phase` opens); one that calls a provider has a `slots` attribute and
    holds a slot of `slots` for each call. Both are given to the agent here, so an agent
    written elsewhere (an import path) is paid for and limited like the built-in ones.
    """
    configs = dict(backends or {})
    if ":" in name:
        agent = _from_import_path(name)
    elif name in configs or name in SETTINGS_BY_BACKEND:
        config = configs.get(name) or settings_class(name)()  # None fields: the environment
        agent = config.build(name, budget)
    elif name in OFFLINE_AGENTS:
        agent = _from_import_path(OFFLINE_AGENTS[name])
    else:
        known = [*BUILTIN_AGENT_NAMES, *(n for n in configs if n not in BUILTIN_AGENT_NAMES)]
        raise BadInput(
            f"unknown agent {name!r}",
            f"use one of {', '.join(known)}, or an import path 'package.module:Class'",
        )
    if budget is not None and hasattr(agent, "budget") and agent.budget is None:
        agent.budget = budget
    if slots is not None and hasattr(agent, "slots"):
        agent.slots = slots
    return agent


def _expand(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        out += list(OFFLINE_AGENT_NAMES) if name == "offline" else [name]
    return out


def agents_from_env(backends: Mapping[str, BackendSettings] | None = None) -> list[str] | None:
    """The panel `$NOMIC_AGENTS` names (comma-separated; `offline` = the three offline
    agents), None when it is unset. Names must be built-in, installed backends or import
    paths; anything else is BadInput naming the variable."""
    raw = os.environ.get(AGENTS_ENV, "").strip()
    if not raw:
        return None
    names = _expand(n.strip() for n in raw.split(","))
    known = set(BUILTIN_AGENT_NAMES) | set(backends or {})
    bad = [n for n in names if not n or (":" not in n and n not in known)]
    if bad:
        raise BadInput(
            f"{AGENTS_ENV}={raw!r} names unknown agents: {', '.join(repr(b) for b in bad)}",
            f"set {AGENTS_ENV} to a comma-separated list of {', '.join(BUILTIN_AGENT_NAMES)}, "
            "offline (the three offline agents) or 'package.module:Class', e.g. "
            f"{AGENTS_ENV}=claude,offline; or unset it",
        )
    return names


def panel_names(
    names: Iterable[str], backends: Mapping[str, BackendSettings] | None = None
) -> list[str]:
    """The panel for `names` as the settings give them: those names (`offline` expanded)
    when there are any — run config wins — else `$NOMIC_AGENTS`, else the offline agents."""
    given = _expand(names)
    if given:
        return given
    return agents_from_env(backends) or list(OFFLINE_AGENT_NAMES)


def build_panel(
    names: Iterable[str],
    budget: Budget | None = None,
    backends: Mapping[str, BackendSettings] | None = None,
    slots: ProviderSlots | None = None,
) -> list[Agent]:
    """The agents `names` (resolved by `panel_names`: empty means $NOMIC_AGENTS or the
    offline default), each built by `build_agent` with the same budget, backends and slots."""
    names = panel_names(names, backends)
    if len(set(names)) != len(names):
        raise BadInput(f"agent names repeat in {names}", "name each agent once")
    agents = [build_agent(n, budget, backends, slots) for n in names]
    seen = [a.name for a in agents]
    if len(set(seen)) != len(seen):
        raise BadInput(f"two agents share a name in {seen}", "give each agent a distinct name")
    return agents


def agent_for_role(
    role: str,
    name: str,
    panel: list[Agent],
    budget: Budget | None = None,
    backends: Mapping[str, BackendSettings] | None = None,
    slots: ProviderSlots | None = None,
) -> Agent:
    """The agent named `name` for `role` (designer, implementer): the panel's member of that
    name, else built like any agent (so a CLI agent such as `codex` may implement without
    debating). A name that cannot be built is BadInput naming the role's setting."""
    found = next((a for a in panel if a.name == name), None)
    if found is not None:
        return found
    try:
        return build_agent(name, budget, backends, slots)
    except BadInput as exc:
        raise BadInput(f"{role} {name!r}: {exc.problem}", exc.fix) from exc


__all__ = [
    "AGENTS_ENV",
    "BUILTIN_AGENT_NAMES",
    "CLI_AGENT_NAMES",
    "LLM_AGENT_NAMES",
    "OFFLINE_AGENT_NAMES",
    "Agent",
    "WorkArea",
    "agent_for_role",
    "agents_from_env",
    "build_agent",
    "build_panel",
    "panel_names",
]
