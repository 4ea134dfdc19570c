"""`CycleRuntime`: what running cycles needs beyond their state, built once by a driver.

A `CycleState` says what a cycle has decided; the runtime says *with what* it runs: the
agent backends' settings (from the Dagster resources, or the environment), the provider
slots every model call holds (the Dagster instance's pools), the agents' circuit breakers
(they span the cycles one driver runs) and the state folder, pinned when the driver
starts. Each driver — the plain `run_cycle`, the Dagster ops, the state machine, the
approval flow, the CLI — builds one and passes it to `run_phase(phase, state, runtime)`;
nothing of it lives in a process-wide registry, so two cycles in one process (threads,
tests) never see each other's backends, budgets or breakers.

The budget is not here: `run_phase` opens one per phase, seeded with what the state says
the cycle already spent, and hands it to the agents it builds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nomic_dagster.agents import Agent, build_agent, build_panel
from nomic_dagster.agents.backends import BackendSettings
from nomic_dagster.agents.llm.agent import ProviderSlots
from nomic_dagster.core.settings import CycleSettings, state_dir
from nomic_dagster.infra.breakers import BreakerRegistry
from nomic_dagster.infra.pricing import Budget

log = logging.getLogger(__name__)

# Where drivers that run in one process per cycle (the CLI, the Dagster ops) keep the
# breakers between processes.
BREAKERS_FILE = "breakers.json"


@dataclass
class CycleRuntime:
    """The backends, provider slots, breakers and state folder cycles run with."""

    state_dir: Path
    backends: Mapping[str, BackendSettings] = field(default_factory=dict)
    provider_slots: ProviderSlots | None = None
    breakers: BreakerRegistry = field(default_factory=BreakerRegistry)

    @classmethod
    def for_settings(
        cls,
        settings: CycleSettings,
        *,
        backends: Mapping[str, BackendSettings] | None = None,
        provider_slots: ProviderSlots | None = None,
        breakers: BreakerRegistry | None = None,
    ) -> CycleRuntime:
        """A runtime whose state folder is the one `settings` name (pinned now)."""
        return cls(
            state_dir=state_dir(settings),
            backends=dict(backends or {}),
            provider_slots=provider_slots,
            breakers=breakers if breakers is not None else BreakerRegistry(),
        )

    @property
    def breakers_file(self) -> Path:
        return self.state_dir / BREAKERS_FILE

    @contextmanager
    def persisted_breakers(self) -> Iterator[BreakerRegistry]:
        """The breakers loaded from `<state dir>/breakers.json` and saved back after the
        block, so an agent that failed three runs in a row stays out in the next process."""
        self.breakers.load(self.breakers_file)
        try:
            yield self.breakers
        finally:
            try:
                self.breakers.save(self.breakers_file)
            except OSError as exc:
                log.warning(
                    "could not save the circuit breakers to %s: %s", self.breakers_file, exc
                )

    def agent(self, name: str, budget: Budget | None = None) -> Agent:
        """The agent `name`, built with this runtime's backends and provider slots."""
        return build_agent(name, budget=budget, backends=self.backends, slots=self.provider_slots)

    def panel(self, names: list[str], budget: Budget | None = None) -> list[Agent]:
        return build_panel(names, budget=budget, backends=self.backends, slots=self.provider_slots)
