import rnnkit
from rnnkit.cells.base import check_size


def test_version_is_the_packaged_one():
    """rnnkit.__version__ is the version pyproject.toml declares (and the installed one)."""
    import importlib.metadata
    import pathlib

    import tomllib

    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert rnnkit.__version__ == declared
    try:
        installed = importlib.metadata.version("rnnkit")
    except importlib.metadata.PackageNotFoundError:  # running from a plain checkout
        return
    assert installed == declared


def test_check_size_rejects_bad_values():
    import pytest

    assert check_size("hidden_size", 3) == 3
    with pytest.raises(ValueError, match="hidden_size must be >= 1, got 0"):
        check_size("hidden_size", 0)
    with pytest.raises(TypeError, match="hidden_size must be an int"):
        check_size("hidden_size", 2.5)
