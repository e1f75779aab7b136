"""The `rnnkit` command: help, one-line usage errors (exit status 2, no traceback), bench."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rnnkit.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_usage_error(result, *fragments: str) -> None:
    """Exit status 2, exactly one line on stderr naming the problem, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_python_dash_m_rnnkit_help():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "rnnkit", "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: rnnkit [OPTIONS] COMMAND")
    assert "bench" in done.stdout


def test_every_command_has_help_with_an_example():
    for name in cli.commands:
        result = run(name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.output and f"rnnkit {name}" in result.output, name


def test_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'rnnkit = "rnnkit.cli:main"' in text


@pytest.mark.parametrize("args, fragments", [
    (["nope"], ["No such command 'nope'", "rnnkit --help"]),
    (["bench", "--bogus"], ["No such option '--bogus'", "rnnkit bench --help"]),
    (["bench", "--reps", "zero"], ["'zero' is not a valid integer"]),
    (["bench", "--rows", "1,42"], ["unknown row(s) 42"]),
])
def test_click_usage_errors_are_one_line(args, fragments):
    assert_usage_error(run(*args), *fragments)


def test_bench_runs_a_row_and_writes_the_report(tmp_path):
    out = tmp_path / "bench.md"
    result = run("bench", "--size", "tiny", "--rows", "6", "--reps", "1", "--threads", "1",
                 "--no-isolate", "--out", out)
    assert result.exit_code == 0, result.output
    report = out.read_text()
    assert "| 6 | Elman tanh training" in report and "CPU: " in report
