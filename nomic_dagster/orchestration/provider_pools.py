"""Dagster pools per model provider: `nomic_llm_anthropic`, `nomic_llm_openai`, ...

The op-level pool `nomic_llm` (ops.py) limits the steps that may call a model; which
provider a step calls is known only at run time (the panel is run config). So each model
call also claims a slot of its provider's pool from the instance, the way Dagster's
executor claims an op's pool, and frees it when the answer is in:

    dagster instance concurrency set nomic_llm_anthropic 2

keeps at most two calls to Anthropic in flight across all runs (a pool with no limit, and
no `concurrency.pools.default_limit`, does not limit). The UI's concurrency page lists
these pools with the runs holding their slots. Outside Dagster (the state machine, the
CLI) no slot is claimed.

No `from __future__ import annotations` here: Dagster reads annotations at runtime.
"""

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from dagster._core.execution.plan.instance_concurrency_context import (
    InstanceConcurrencyContext,
)

PROVIDER_POOL_PREFIX = "nomic_llm_"
POLL_S = 0.2


def provider_pool(provider: str) -> str:
    return PROVIDER_POOL_PREFIX + re.sub(r"[^a-z0-9_]+", "_", provider.lower())


class InstanceProviderSlots:
    """`agents.llm.ProviderSlots` over the Dagster instance's pools, for one step of a run."""

    def __init__(self, context: dg.OpExecutionContext) -> None:
        self.instance = context.instance
        self.run = context.dagster_run
        self.step_key = context.get_step_execution_context().step.key
        self.calls = 0

    @contextmanager
    def hold(self, provider: str) -> Iterator[None]:
        pool = provider_pool(provider)
        self.calls += 1
        # One claim per call: a step's calls are sequential, and a unique key keeps a
        # claim from being mistaken for the op's own `nomic_llm` claim.
        claim_key = f"{self.step_key}[{pool}#{self.calls}]"
        with InstanceConcurrencyContext(self.instance, self.run) as slots:
            while not slots.claim(pool, claim_key):
                time.sleep(POLL_S)
            try:
                yield
            finally:
                slots.free_step(claim_key)
