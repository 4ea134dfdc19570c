"""Money: token usage, a price table, and a budget that is checked before every call.

- `Usage`: the tokens one call used, split the way providers bill them (uncached input,
  output, cache reads, cache writes), and its price in USD.
- `PriceTable`: USD per million tokens for each model. Defaults for current Claude and GPT
  models are in `DEFAULT_PRICES`; `$NOMIC_PRICES` (inline JSON or the path of a JSON file)
  adds or overrides entries. A model with no price is an error, never a silent $0 — except
  an unknown model served from this machine (a local OpenAI-compatible server), which is free.
- `Budget`: a USD limit. Before every call the agent *reserves* that call's worst case
  (its estimated input priced at the dearest input rate, plus `max_tokens` of output); a
  reservation that could cross the limit is refused with `BudgetExhausted` and the call is
  not made. After the call the reservation is settled with the real usage. So the spend
  stays under the limit whenever the input estimate holds, and can exceed it by at most one
  call's cost when it does not: after a crossing, every reservation is refused.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nomic_dagster.core.errors import BadInput, BudgetExhausted
from nomic_dagster.core.usage import LLMCall, Usage

PRICES_ENV = "NOMIC_PRICES"
BUDGET_ENV = "NOMIC_BUDGET_USD"
MILLION = 1_000_000

# A deliberately pessimistic characters-per-token ratio for the *worst case* of a call's
# input (code and JSON tokenise at ~3-4 characters per token; English prose at ~4-5).
WORST_CASE_CHARS_PER_TOKEN = 3.0


class Price(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)  # None: same as input
    cache_write: float | None = Field(default=None, ge=0)  # None: same as input

    def cost(self, usage: Usage) -> float:
        read = self.input if self.cache_read is None else self.cache_read
        write = self.input if self.cache_write is None else self.cache_write
        usd = (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_read_tokens * read
            + usage.cache_write_tokens * write
        ) / MILLION
        return round(usd, 8)

    def priced(self, usage: Usage) -> Usage:
        return usage.model_copy(update={"usd": self.cost(usage)})

    def worst_case(self, input_tokens: int, max_tokens: int) -> float:
        """The most a call with this much input and this output limit can cost: every input
        token at the dearest input rate (a cache write can cost more than plain input)."""
        dearest = max(self.input, self.cache_write or 0.0, self.cache_read or 0.0)
        return (input_tokens * dearest + max_tokens * self.output) / MILLION


FREE = Price(input=0, output=0, cache_read=0, cache_write=0)

# USD per million tokens, from the providers' published price pages (anthropic.com/pricing,
# openai.com/api/pricing). Anthropic cache writes are the 5-minute TTL rate (1.25x input);
# cache reads are 0.1x input. OpenAI caches automatically and bills no cache writes.
DEFAULT_PRICES: dict[str, Price] = {
    # Anthropic
    "claude-opus-4-6": Price(input=5, output=25, cache_read=0.5, cache_write=6.25),
    "claude-opus-4-5": Price(input=5, output=25, cache_read=0.5, cache_write=6.25),
    "claude-opus-4-1": Price(input=15, output=75, cache_read=1.5, cache_write=18.75),
    "claude-opus-4-0": Price(input=15, output=75, cache_read=1.5, cache_write=18.75),
    "claude-opus-4": Price(input=15, output=75, cache_read=1.5, cache_write=18.75),
    "claude-sonnet-4-6": Price(input=3, output=15, cache_read=0.3, cache_write=3.75),
    "claude-sonnet-4-5": Price(input=3, output=15, cache_read=0.3, cache_write=3.75),
    "claude-sonnet-4-0": Price(input=3, output=15, cache_read=0.3, cache_write=3.75),
    "claude-sonnet-4": Price(input=3, output=15, cache_read=0.3, cache_write=3.75),
    "claude-3-7-sonnet": Price(input=3, output=15, cache_read=0.3, cache_write=3.75),
    "claude-haiku-4-5": Price(input=1, output=5, cache_read=0.1, cache_write=1.25),
    "claude-3-5-haiku": Price(input=0.8, output=4, cache_read=0.08, cache_write=1.0),
    # OpenAI
    "gpt-4.1": Price(input=2, output=8, cache_read=0.5),
    "gpt-4.1-mini": Price(input=0.4, output=1.6, cache_read=0.1),
    "gpt-4.1-nano": Price(input=0.1, output=0.4, cache_read=0.025),
    "gpt-4o": Price(input=2.5, output=10, cache_read=1.25),
    "gpt-4o-mini": Price(input=0.15, output=0.6, cache_read=0.075),
    "gpt-5": Price(input=1.25, output=10, cache_read=0.125),
    "gpt-5-mini": Price(input=0.25, output=2, cache_read=0.025),
    "gpt-5-nano": Price(input=0.05, output=0.4, cache_read=0.005),
    "o3": Price(input=2, output=8, cache_read=0.5),
    "o4-mini": Price(input=1.1, output=4.4, cache_read=0.275),
}

# Dated snapshots ("claude-sonnet-4-5-20250929", "gpt-4.1-2025-04-14") are priced as their alias.
_DATE_SUFFIX = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2})$")
_LOCAL_HOSTS = re.compile(r"^(localhost|127\.\d+\.\d+\.\d+|\[?::1\]?|0\.0\.0\.0)$", re.IGNORECASE)


def is_local_url(base_url: str | None) -> bool:
    """True for a server on this machine (loopback): its tokens cost nothing."""
    if not base_url:
        return False
    host = re.sub(r"^[a-z][a-z0-9+.-]*://", "", base_url.strip(), flags=re.IGNORECASE)
    host = host.split("/", 1)[0].rsplit("@", 1)[-1]
    host = host[: host.rindex("]") + 1] if host.startswith("[") and "]" in host else host
    if not host.startswith("[") and host.count(":") == 1:
        host = host.split(":", 1)[0]
    return bool(_LOCAL_HOSTS.match(host))


def _load_overrides(raw: str) -> dict[str, Price]:
    text = raw.strip()
    source = "$" + PRICES_ENV
    if not text.startswith("{"):
        path = Path(text).expanduser()
        source = f"{path} (from ${PRICES_ENV})"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BadInput(
                f"cannot read the price file {path}: {exc.strerror or exc}",
                f"point ${PRICES_ENV} at a JSON file, or set it to inline JSON",
            ) from exc
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the top level must be an object {model: price}")
        return {str(model): Price.model_validate(price) for model, price in data.items()}
    except (ValueError, ValidationError) as exc:
        raise BadInput(
            f"the prices in {source} are not valid: {exc}",
            f'write {{"<model>": {{"input": 3, "output": 15, "cache_read": 0.3, '
            f'"cache_write": 3.75}}}} (USD per million tokens) in ${PRICES_ENV}',
        ) from exc


class PriceTable:
    """Model name -> Price: the defaults, overridden by `overrides` and `$NOMIC_PRICES`."""

    def __init__(
        self,
        overrides: Mapping[str, Price] | None = None,
        *,
        use_env: bool = True,
    ) -> None:
        self.prices: dict[str, Price] = dict(DEFAULT_PRICES)
        if use_env and os.environ.get(PRICES_ENV, "").strip():
            self.prices.update(_load_overrides(os.environ[PRICES_ENV]))
        self.prices.update(overrides or {})

    def find(self, model: str) -> Price | None:
        if model in self.prices:
            return self.prices[model]
        alias = _DATE_SUFFIX.sub("", model)
        return self.prices.get(alias)

    def price(self, model: str, *, base_url: str | None = None) -> Price:
        """The model's price; an unknown model is `BadInput` unless it runs on this machine."""
        found = self.find(model)
        if found is not None:
            return found
        if is_local_url(base_url):
            return FREE
        known = ", ".join(sorted(self.prices))
        raise BadInput(
            f"no price for model {model!r}: prices come from nomic_dagster/pricing.py "
            f"DEFAULT_PRICES (USD per million tokens, from the providers' price pages) and "
            f"${PRICES_ENV}; known models: {known}",
            f'add it, e.g. {PRICES_ENV}=\'{{"{model}": {{"input": 3, "output": 15, '
            f'"cache_read": 0.3, "cache_write": 3.75}}}}\' (inline JSON, or the path of a '
            "JSON file), or choose a known model",
        )


def estimate_tokens(chars: int, chars_per_token: float = WORST_CASE_CHARS_PER_TOKEN) -> int:
    return math.ceil(chars / chars_per_token)


class Reservation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    usd: float
    what: str
    settled: bool = False


class Budget:
    """A USD limit shared by every agent that holds it (thread-safe).

    `reserve(worst_case)` before a call (raises `BudgetExhausted`, nothing sent);
    `settle(reservation, actual)` after it. `spent_usd` counts settled calls only.
    """

    def __init__(self, limit_usd: float | None, spent_usd: float = 0.0) -> None:
        if limit_usd is not None and limit_usd < 0:
            raise BadInput(f"budget {limit_usd} is negative", "give a limit >= 0 in USD")
        self.limit_usd = limit_usd
        self._spent = float(spent_usd)
        self._reserved = 0.0
        self._lock = threading.Lock()
        self.calls: list[LLMCall] = []
        self.refused = 0

    @property
    def spent_usd(self) -> float:
        with self._lock:
            return round(self._spent, 8)

    @property
    def remaining_usd(self) -> float | None:
        if self.limit_usd is None:
            return None
        with self._lock:
            return max(0.0, self.limit_usd - self._spent - self._reserved)

    def reserve(self, worst_case_usd: float, what: str) -> Reservation:
        with self._lock:
            committed = self._spent + self._reserved
            if self.limit_usd is not None and committed + worst_case_usd > self.limit_usd:
                self.refused += 1
                raise BudgetExhausted(self.limit_usd, committed, worst_case_usd, what)
            self._reserved += worst_case_usd
            return Reservation(usd=worst_case_usd, what=what)

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        with self._lock:
            if reservation.settled:
                return
            reservation.settled = True
            self._reserved = max(0.0, self._reserved - reservation.usd)
            self._spent += actual_usd

    def record(self, call: LLMCall) -> None:
        with self._lock:
            self.calls.append(call)

    def __repr__(self) -> str:
        limit = "none" if self.limit_usd is None else f"${self.limit_usd:.4f}"
        return f"Budget(limit={limit}, spent=${self.spent_usd:.6f})"


def budget_from_env() -> float | None:
    """`$NOMIC_BUDGET_USD` as a float, None when unset."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise BadInput(
            f"{BUDGET_ENV}={raw!r} is not a number", f"set {BUDGET_ENV} to a USD amount, e.g. 2.5"
        ) from exc
    if value < 0 or math.isnan(value):
        raise BadInput(f"{BUDGET_ENV}={raw!r} is negative", f"set {BUDGET_ENV} to 0 or more")
    return value


__all__ = [
    "BUDGET_ENV",
    "DEFAULT_PRICES",
    "FREE",
    "PRICES_ENV",
    "Budget",
    "Price",
    "PriceTable",
    "Reservation",
    "budget_from_env",
    "estimate_tokens",
    "is_local_url",
]
