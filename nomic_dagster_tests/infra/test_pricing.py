"""Prices, usage and the budget that is checked before every call."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nomic_dagster.core.errors import BadInput, BudgetExhausted
from nomic_dagster.core.usage import Usage
from nomic_dagster.infra.pricing import (
    FREE,
    Budget,
    Price,
    PriceTable,
    budget_from_env,
    is_local_url,
)


@pytest.fixture(autouse=True)
def _no_env_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOMIC_PRICES", raising=False)
    monkeypatch.delenv("NOMIC_BUDGET_USD", raising=False)


def test_usage_is_priced_per_million_tokens_with_cache_rates() -> None:
    price = PriceTable().price("claude-sonnet-4-6")
    usage = Usage(
        input_tokens=1_000_000,
        output_tokens=1_000_000,
        cache_read_tokens=1_000_000,
        cache_write_tokens=1_000_000,
    )
    assert price.cost(usage) == pytest.approx(3 + 15 + 0.3 + 3.75)
    gpt = PriceTable().price("gpt-4.1")
    assert gpt.cost(Usage(input_tokens=500_000, cache_read_tokens=500_000)) == pytest.approx(1.25)
    assert (Usage(input_tokens=1, usd=0.5) + Usage(output_tokens=2, usd=0.25)).total_tokens == 3


def test_dated_snapshots_are_priced_as_their_alias() -> None:
    table = PriceTable()
    assert table.price("claude-sonnet-4-5-20250929") == table.price("claude-sonnet-4-5")
    assert table.price("gpt-4.1-2025-04-14") == table.price("gpt-4.1")


def test_unknown_models_are_refused_unless_served_from_this_machine() -> None:
    with pytest.raises(BadInput, match="NOMIC_PRICES"):
        PriceTable().price("llama3.1:8b", base_url="https://openrouter.example/v1")
    assert PriceTable().price("llama3.1:8b", base_url="http://127.0.0.1:11434/v1") == FREE
    assert PriceTable().price("llama3.1:8b", base_url="http://localhost:8000/v1") == FREE


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:11434/v1", True),
        ("http://localhost/v1", True),
        ("http://[::1]:8000/v1", True),
        ("http://user@127.0.0.2:1/v1", True),
        ("https://api.openai.com/v1", False),
        ("http://localhost.evil.example/v1", False),
        ("http://10.0.0.5:8000/v1", False),
        (None, False),
    ],
)
def test_local_urls(url: str | None, local: bool) -> None:
    assert is_local_url(url) is local


def test_prices_from_the_environment_inline_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMIC_PRICES", '{"my-model": {"input": 1, "output": 2}}')
    assert PriceTable().price("my-model") == Price(input=1, output=2)
    prices = tmp_path / "prices.json"
    prices.write_text('{"gpt-4.1": {"input": 9, "output": 9}}')
    monkeypatch.setenv("NOMIC_PRICES", str(prices))
    assert PriceTable().price("gpt-4.1").input == 9
    monkeypatch.setenv("NOMIC_PRICES", '{"m": {"input": -1, "output": 2}}')
    with pytest.raises(BadInput, match="not valid"):
        PriceTable()
    monkeypatch.setenv("NOMIC_PRICES", str(tmp_path / "missing.json"))
    with pytest.raises(BadInput, match="cannot read"):
        PriceTable()


def test_the_worst_case_prices_every_input_token_at_the_dearest_rate() -> None:
    price = Price(input=3, output=15, cache_read=0.3, cache_write=3.75)
    assert price.worst_case(1_000_000, 1_000_000) == pytest.approx(3.75 + 15)


def test_a_reservation_that_could_cross_the_limit_is_refused() -> None:
    budget = Budget(limit_usd=1.0)
    first = budget.reserve(0.6, "a")
    with pytest.raises(BudgetExhausted) as info:
        budget.reserve(0.5, "b")  # 0.6 reserved + 0.5 > 1.0, though nothing is spent yet
    assert "b could cost up to $0.5000" in str(info.value)
    budget.settle(first, 0.1)
    budget.settle(first, 0.1)  # settling twice counts once
    assert budget.spent_usd == pytest.approx(0.1)
    budget.reserve(0.9, "c")
    assert budget.refused == 1
    unlimited = Budget(limit_usd=None)
    unlimited.reserve(1e9, "anything")


def test_concurrent_reservations_never_exceed_the_limit() -> None:
    budget = Budget(limit_usd=1.0)
    granted: list[int] = []

    def worker() -> None:
        for _ in range(50):
            try:
                r = budget.reserve(1 / 64, "x")  # exact in binary
            except BudgetExhausted:
                continue
            granted.append(1)
            budget.settle(r, 1 / 64)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 64
    assert budget.spent_usd == pytest.approx(1.0)


@pytest.mark.parametrize("raw", ["abc", "-1", "nan"])
def test_a_bad_budget_variable_is_bad_input(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("NOMIC_BUDGET_USD", raw)
    with pytest.raises(BadInput, match="NOMIC_BUDGET_USD"):
        budget_from_env()


def test_budget_from_env() -> None:
    assert budget_from_env() is None
