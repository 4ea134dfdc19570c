import pytest

from inventory.pricing import apply_discount


def test_apply_discount():
    assert apply_discount(200.0, 25) == 150.0


def test_apply_discount_rejects_out_of_range():
    with pytest.raises(ValueError):
        apply_discount(10.0, 120)
