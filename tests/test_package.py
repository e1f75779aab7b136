import rnnkit
from rnnkit.cells.base import check_size


def test_version_is_exposed():
    assert rnnkit.__version__.count(".") == 2


def test_check_size_rejects_bad_values():
    import pytest

    assert check_size("hidden_size", 3) == 3
    with pytest.raises(ValueError, match="hidden_size must be >= 1, got 0"):
        check_size("hidden_size", 0)
    with pytest.raises(TypeError, match="hidden_size must be an int"):
        check_size("hidden_size", 2.5)
