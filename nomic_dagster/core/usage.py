"""What model calls used and cost: the records a cycle carries (`CycleState.llm_calls`).

Prices and budgets live in `infra.pricing`; these records only hold what was billed, so the
cycle state can carry them across processes, re-executions and approvals.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Usage(BaseModel):
    """Tokens one call used, as billed, and what they cost.

    `input_tokens` are the *uncached* input tokens (OpenAI's prompt_tokens minus its cached
    tokens; Anthropic's input_tokens, which already exclude cache reads and writes).
    """

    model_config = ConfigDict(extra="forbid")

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            usd=round(self.usd + other.usd, 8),
        )

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
        )


class LLMCall(BaseModel):
    """One request to a model, as the agent that made it records it (`agent.usage`)."""

    model_config = ConfigDict(extra="forbid")

    agent: str
    provider: str
    model: str
    step: str  # propose, critique, vote, design, implement (+ ":repair" for a repair round)
    phase: str = ""  # the cycle phase that made the call (set by `cycle.run_phase`)
    usage: Usage
    worst_case_usd: float = 0.0  # what the budget reserved before the call
    ok: bool = True
    error: str = ""


class Spend(BaseModel):
    """What a set of calls cost, in total and by phase and agent."""

    model_config = ConfigDict(extra="forbid")

    cost_usd: float = 0.0
    tokens: int = 0
    llm_calls: int = 0
    cost_by_phase: dict[str, float] = Field(default_factory=dict)
    cost_by_agent: dict[str, float] = Field(default_factory=dict)
    tokens_by_phase: dict[str, int] = Field(default_factory=dict)
    tokens_by_agent: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def of(cls, calls: list[LLMCall]) -> Spend:
        usd: dict[str, dict[str, float]] = {"phase": {}, "agent": {}}
        tokens: dict[str, dict[str, int]] = {"phase": {}, "agent": {}}
        for c in calls:
            for by, key in (("phase", c.phase or "?"), ("agent", c.agent)):
                usd[by][key] = round(usd[by].get(key, 0.0) + c.usage.usd, 8)
                tokens[by][key] = tokens[by].get(key, 0) + c.usage.total_tokens
        return cls(
            cost_usd=round(sum(c.usage.usd for c in calls), 8),
            tokens=sum(c.usage.total_tokens for c in calls),
            llm_calls=len(calls),
            cost_by_phase=usd["phase"],
            cost_by_agent=usd["agent"],
            tokens_by_phase=tokens["phase"],
            tokens_by_agent=tokens["agent"],
        )
