"""Stock levels and SKU parsing."""
import json


def restock_amount(current: int, target: int) -> int:
    """How many units to order to reach target (never negative)."""
    if target < 0:
        raise ValueError("target must not be negative")
    return max(0, target - current)


def parse_sku(sku: str) -> tuple:
    """Split 'CAT-0042' into ('CAT', 42)."""
    category, _, number = sku.partition("-")
    if not category or not number.isdigit():
        raise ValueError(f"bad sku: {sku!r}")
    return (category.upper(), int(number))


def is_low(current: int, threshold: int = 5) -> bool:
    return current <= threshold


class Bin:
    def __init__(self, sku: str, quantity: int = 0):
        self.sku = sku
        self.quantity = quantity

    def take(self, n: int) -> int:
        if n > self.quantity:
            raise ValueError("not enough stock")
        self.quantity -= n
        return self.quantity
