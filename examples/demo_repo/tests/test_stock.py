from inventory.stock import Bin


def test_bin_take():
    b = Bin("CAT-1", 3)
    assert b.take(2) == 1
