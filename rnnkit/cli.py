"""The ``rnnkit`` command (also ``python -m rnnkit``), built on Click.

Every command has ``--help`` with an example. A usage error (a missing file or column, a
non-numeric value, too few rows, a gappy date column, a directory that is not a run directory,
a bad configuration key, bad ``--set`` syntax) prints one line, ``Error: ...``, on stderr and
exits with status 2; the library raises those as :class:`rnnkit.errors.UsageError`. Anything
else that escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from rnnkit.errors import UsageError

__all__ = ["cli", "main"]

USAGE_EXIT_CODE = 2


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


class _Group(click.Group):
    """A group whose usage errors are one line on stderr, exit status 2, no traceback."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name or "rnnkit", complete_var,
                                standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.UsageError as e:  # click's own: a missing argument, an unknown option
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"Error: {_one_line(e.format_message())}{hint}", err=True)
            sys.exit(USAGE_EXIT_CODE)
        except click.ClickException as e:
            click.echo(f"Error: {_one_line(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except UsageError as e:
            click.echo(f"Error: {_one_line(str(e))}", err=True)
            sys.exit(USAGE_EXIT_CODE)
        sys.exit(code if isinstance(code, int) else 0)


@contextlib.contextmanager
def reading(what: str | os.PathLike) -> Iterator[None]:
    """Turn the errors the data readers raise about a user's file (a missing file, a
    malformed line, a non-numeric value) into :class:`UsageError`: at this boundary they are
    the user's input, not a bug."""
    from rnnkit.data import CTFFormatError, IDXFormatError

    try:
        yield
    except UsageError:
        raise
    except FileNotFoundError as e:
        raise UsageError(f"{e.filename or what}: no such file") from None
    except (CTFFormatError, IDXFormatError, ValueError, IsADirectoryError,
            NotADirectoryError, UnicodeDecodeError) as e:
        message = str(e)
        if str(what) not in message:
            message = f"{what}: {message}"
        raise UsageError(message) from None


@click.group(name="rnnkit", cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                           "max_content_width": 100})
@click.version_option(package_name="rnnkit", prog_name="rnnkit")
def cli() -> None:
    """rnnkit: recurrent neural networks on PyTorch, from the command line.

    \b
    Start here:
      rnnkit demo                                   # forecast airline passengers, in a minute
      rnnkit bench --size tiny --rows 1             # the engine benchmarks

    Each command has --help with an example.
    """


@cli.command(short_help="Run the engine benchmarks (what `make bench` runs).")
@click.option("--rows", help="comma-separated row ids, e.g. 1,3,9a (default: all)")
@click.option("--size", type=click.Choice(["full", "quick", "tiny"]), default="full",
              show_default=True, help="shape preset (quick and tiny are for development)")
@click.option("--reps", type=click.IntRange(min=1), help="timed repetitions per configuration")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="torch threads")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="write the Markdown report (JSON beside it) here")
@click.option("--no-write", is_flag=True, help="print only")
@click.option("--no-isolate", is_flag=True,
              help="run every row in this process (default: one child process per row)")
def bench(rows: str | None, size: str, reps: int | None, threads: int, out: Path | None,
          no_write: bool, no_isolate: bool) -> None:
    """Run the engine benchmarks (benchmarks/run.py; what `make bench` runs).

    Each row times rnnkit against torch.nn in the same process and prints the ratio; a full
    run writes docs/benchmarks.md. Needs a source checkout (benchmarks/ is not installed).

    \b
    Example:
      rnnkit bench --size tiny --rows 1,3 --reps 1 --no-write
    """
    run = _benchmarks()
    argv = ["--size", size, "--threads", str(threads)]
    if rows:
        try:
            run.select_rows(rows)
        except SystemExit as e:  # argparse-style exit from the benchmark module
            raise UsageError(f"--rows {rows}: {e}") from None
        argv += ["--rows", rows]
    if reps is not None:
        argv += ["--reps", str(reps)]
    if out is not None:
        argv += ["--out", str(out)]
    if no_write:
        argv += ["--no-write"]
    if no_isolate:
        argv += ["--no-isolate"]
    code = run.main(argv)
    if code:
        sys.exit(code)


def _benchmarks() -> Any:
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").is_file():
        raise UsageError(f"rnnkit bench needs a source checkout: {root / 'benchmarks'} is "
                         "missing (the benchmarks are not installed with the package)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks import run

    return run


def main(argv: list[str] | None = None) -> None:
    """The console script ``rnnkit``."""
    cli.main(args=argv, prog_name="rnnkit")


if __name__ == "__main__":  # pragma: no cover
    main()
