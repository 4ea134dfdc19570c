"""`NomicLoop`, the legacy API: cycle after cycle through the state machine.

A thin, real wrapper (aragora-nomic §24 and W11: the original's phases were stubs that
returned canned successes). Every cycle here is a `NomicStateMachine` cycle — the same
steps the Dagster ops run — and every record it returns is the one the cycle stored.

    loop = NomicLoop(repo="/path/to/repo", max_cycles=3)
    records = asyncio.run(loop.run())
"""

from __future__ import annotations

import logging
import os
from typing import Any

from nomic_dagster.core.records import CycleRecord, Outcome
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.cycle.runtime import CycleRuntime
from nomic_dagster.drivers.state_machine import NomicStateMachine, create_nomic_state_machine

log = logging.getLogger("nomic_dagster.drivers.loop")


class NomicLoop:
    """Runs up to `max_cycles` cycles on one repository.

    It stops early after `max_consecutive_failures` cycles in a row that landed no
    commit (an error, bad input, or a gate that closed: the repository has nothing the
    panel can improve right now), at once on bad input (nothing will change by trying
    again), when a cycle pauses (a person must look), and when the run's `budget_usd` is
    spent: each cycle may spend at most what is left of it (and at most its own
    `settings.budget_usd`), so the whole run stays under the limit with the same
    one-call overshoot bound as a single cycle.
    """

    def __init__(
        self,
        repo: str | os.PathLike[str] | None = None,
        max_cycles: int = 1,
        max_consecutive_failures: int = 3,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        settings: CycleSettings | None = None,
        goal: str | None = None,
        budget_usd: float | None = None,
        runtime: CycleRuntime | None = None,
        **machine_kwargs: Any,
    ) -> None:
        if max_cycles < 1:
            raise ValueError("max_cycles must be at least 1")
        if max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be at least 1")
        if budget_usd is not None and budget_usd < 0:
            raise ValueError("budget_usd must be 0 or more (None: no run budget)")
        base = settings or CycleSettings()
        if repo is not None:
            base = base.model_copy(update={"repo": os.fspath(repo)})
        if goal is not None:
            base = base.model_copy(update={"goal": goal})
        self.settings = base
        self.max_cycles = max_cycles
        self.max_consecutive_failures = max_consecutive_failures
        self.budget_usd = budget_usd
        self.machine: NomicStateMachine = create_nomic_state_machine(
            checkpoint_dir=checkpoint_dir, settings=base, runtime=runtime, **machine_kwargs
        )
        self.records: list[CycleRecord] = []
        self.consecutive_failures = 0

    @property
    def spent_usd(self) -> float:
        return round(sum(r.cost_usd for r in self.records), 8)

    def _cycle_settings(self) -> CycleSettings:
        if self.budget_usd is None:
            return self.settings
        left = max(0.0, self.budget_usd - self.spent_usd)
        own = self.settings.budget_usd
        return self.settings.model_copy(
            update={"budget_usd": left if own is None else min(own, left)}
        )

    async def run_cycle(self) -> CycleRecord | None:
        """One cycle; its record, or None when it paused."""
        record = await self.machine.run(settings=self._cycle_settings())
        if record is not None:
            self.records.append(record)
        return record

    async def run(self, max_cycles: int | None = None) -> list[CycleRecord]:
        """Run cycles; the records of the cycles this call ran, in order."""
        limit = self.max_cycles if max_cycles is None else max_cycles
        ran: list[CycleRecord] = []
        self.consecutive_failures = 0
        for n in range(limit):
            record = await self.run_cycle()
            if record is None:
                log.warning("cycle %s paused: stopping the loop", self.machine.cycle_id)
                break
            ran.append(record)
            log.info("cycle %d/%d: %s — %s", n + 1, limit, record.outcome.value, record.reason)
            if record.outcome in (Outcome.BAD_INPUT, Outcome.BUDGET_EXHAUSTED):
                break
            if record.outcome is Outcome.COMMITTED:
                self.consecutive_failures = 0
            else:
                self.consecutive_failures += 1
                if self.consecutive_failures >= self.max_consecutive_failures:
                    log.warning(
                        "stopping after %d cycles in a row without a commit",
                        self.consecutive_failures,
                    )
                    break
        return ran

    def get_metrics(self) -> dict[str, Any]:
        return {
            **self.machine.get_metrics(),
            "consecutive_failures": self.consecutive_failures,
            "records": len(self.records),
            "spent_usd": self.spent_usd,
            "budget_usd": self.budget_usd,
        }


__all__ = ["NomicLoop"]
