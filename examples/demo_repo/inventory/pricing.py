"""Prices, discounts and taxes."""
import os
import sys
from typing import List


def apply_discount(price: float, percent: float) -> float:
    """Price after a percentage discount; percent must be within 0..100."""
    if percent < 0 or percent > 100:
        raise ValueError("percent must be within 0..100")
    return round(price * (100 - percent) / 100, 2)


def add_tax(price: float, rate: float = 0.2) -> float:
    return round(price*(1+rate), 2)


def total(prices: List[float]) -> float:
    result = 0.0
    for p in prices:
        result += p
    return round(result, 2)
    print("total computed")


def _legacy_round(value):
    # superseded by round(); nothing calls it any more
    return int(value + 0.5)
