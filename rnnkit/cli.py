"""The ``rnnkit`` command (also ``python -m rnnkit``), built on Click.

Every command has ``--help`` with an example. A usage error (a missing file or column, a
non-numeric value, too few rows, a gappy date column, a directory that is not a run directory,
a bad configuration key, bad ``--set`` syntax) prints one line, ``Error: ...``, on stderr and
exits with status 2; the library raises those as :class:`rnnkit.errors.UsageError`. Anything
else that escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
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


@cli.command(short_help="Export a trained run to ONNX, checked against PyTorch.")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "format_", type=click.Choice(["onnx"]), default="onnx",
              show_default=True, help="the file format")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="the file to write (default: RUN_DIR/model.onnx)")
@click.option("--atol", type=click.FloatRange(min=0, min_open=True), default=1e-4,
              show_default=True, help="the largest difference from PyTorch the check accepts")
def export(run_dir: Path, format_: str, output: Path | None, atol: float) -> None:
    """Export the model in RUN_DIR to ONNX with a dynamic batch size and sequence length.
    The file is declared written only after onnxruntime reproduced the PyTorch output on two
    inputs of different shapes; a cell torch.onnx cannot express is named with the reason.
    Needs the onnx extra (pip install rnnkit[onnx]).

    \b
    Example:
      rnnkit export runs/ctf --format onnx -o ctf.onnx
    """
    from rnnkit.workflows.train import is_run_dir

    if not run_dir.exists():
        raise UsageError(f"{run_dir}: no such run directory")
    if not is_run_dir(run_dir):
        raise UsageError(f"{run_dir} is not a run directory (no config.json and "
                         "model.safetensors; rnnkit train and rnnkit forecast write them)")
    try:
        from rnnkit.export import UnsupportedExportError, export_run
    except ImportError as e:  # pragma: no cover - the onnx extra is missing
        raise click.ClickException(str(e)) from None
    target = output if output is not None else run_dir / "model.onnx"
    try:
        written = export_run(run_dir, target, atol=atol)
    except UnsupportedExportError as e:
        raise UsageError(" ".join(str(e).split())) from None
    except ImportError as e:  # onnx / onnxruntime missing: the message names the extra
        raise click.ClickException(" ".join(str(e).split())) from None
    click.echo(f"wrote {written} (onnxruntime matches PyTorch within {atol:g})")


@cli.command(short_help="Forecast a column of a CSV, against seasonal naive and persistence.")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--target", "-t", required=True, help="the column to forecast")
@click.option("--date-column", help="the dates (default: the first column, when it holds dates)")
@click.option("--horizon", type=click.IntRange(min=1),
              help="steps to forecast (default: one seasonal period)")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path),
              default="forecast", show_default=True, help="the folder for the results")
@click.option("--fill", metavar="ffill|interpolate|NUMBER",
              help="fill missing values and date gaps (default: they are errors)")
@click.option("--exogenous", "-x", multiple=True,
              help="another column to feed the model (repeatable)")
@click.option("--look-back", type=click.IntRange(min=1),
              help="input steps (default: two seasonal periods)")
@click.option("--ensemble", type=click.IntRange(min=1), help="train this many seeds and average")
@click.option("--epochs", type=click.IntRange(min=1), help="at most this many epochs")
@click.option("--seed", type=int, default=0, show_default=True)
def forecast(data: Path, target: str, date_column: str | None, horizon: int | None,
             output: Path, fill: str | None, exogenous: tuple[str, ...],
             look_back: int | None, ensemble: int | None, epochs: int | None,
             seed: int) -> None:
    """Train a forecaster on column TARGET of the CSV file DATA, compare it on the held-out
    tail with seasonal naive, persistence and (when statsmodels is installed) SARIMA, and
    write forecast.csv, holdout.csv, metrics.csv, forecast.png and the model to --output.

    The seasonal period comes from the dates (monthly 12, daily 7, ...); the last HORIZON
    rows are held out. Missing values and gaps in the dates are errors naming the first one,
    unless --fill says how to fill them.

    \b
    Example:
      rnnkit forecast sales.csv --target sales --date-column month --horizon 12 -o sales-run
      rnnkit predict sales-run newer_sales.csv -o next_year.csv
    """
    from rnnkit.workflows.forecast import forecast_csv
    from rnnkit.workflows.train import parse_fill

    options = {name: value for name, value in (("look_back", look_back), ("ensemble", ensemble),
                                               ("epochs", epochs)) if value is not None}
    result = forecast_csv(str(data), target=target, date_column=date_column, horizon=horizon,
                          output=output, fill=parse_fill(fill, "--fill"), exogenous=exogenous,
                          seed=seed, echo=click.echo, **options)
    click.echo(result.table())
    click.echo(f"wrote {', '.join(str(p) for p in result.files.values())}")


@cli.command(short_help="The main job on built-in data: forecast airline passengers.")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path),
              default="rnnkit-demo", show_default=True, help="the folder for the results")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1),
              help="at most this many epochs (default: the demo's 150; fewer for a quick look)")
@click.option("--ensemble", type=click.IntRange(min=1),
              help="seeds averaged (default: the demo's 3)")
def demo(output: Path, seed: int, epochs: int | None, ensemble: int | None) -> None:
    """Train a forecaster on the airline passengers series (shipped with rnnkit), print its
    held-out RMSE beside seasonal naive and persistence, write the plot and the forecast,
    and say where to go next. About a minute on two CPU cores.

    \b
    Example:
      rnnkit demo --output rnnkit-demo
    """
    from rnnkit.workflows.demo import run_demo

    options = {name: value for name, value in (("epochs", epochs), ("ensemble", ensemble))
               if value is not None}
    run_demo(output, seed=seed, echo=click.echo, **options)


_SET_HELP = ("override a configuration key, SECTION.KEY=VALUE (a TOML value: 0.001, true, "
             "[0.8, 0.2], \"text\"; bare words are strings); repeatable")


@cli.command(short_help="Train the model a TOML configuration describes.")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help=_SET_HELP)
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="the run directory (default: runs/<config name>)")
@click.option("--resume", is_flag=True,
              help="continue a killed run from the newest checkpoint in the run directory")
def train(config: Path, overrides: tuple[str, ...], output: Path | None, resume: bool) -> None:
    """Train the model that CONFIG (a TOML file with [model], [data] and [trainer]) describes.

    The run directory gets the checkpoints (step-*/), history.csv, the loss curves (PNG), the
    final model (config.json + model.safetensors, with the configuration) and metrics.json
    (the test split's metrics, when there is one). See docs/cli.md for every key.

    \b
    Example:
      rnnkit train examples/configs/mnist1d_classifier.toml --set trainer.epochs=3 \
          --set model.hidden_size=32 --output runs/mnist1d
      rnnkit train examples/configs/mnist1d_classifier.toml --output runs/mnist1d --resume
    """
    from rnnkit.workflows.config import load_config
    from rnnkit.workflows.train import train_run

    run_config = load_config(config, overrides)
    directory = output if output is not None else Path("runs") / config.stem
    train_run(run_config, directory, resume=resume, echo=click.echo)


@cli.command(short_help="Loss and metrics of a trained run on data.")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("data", required=False, type=click.Path(path_type=Path))
def evaluate(run_dir: Path, data: Path | None) -> None:
    """Loss and metrics of the model in RUN_DIR on DATA (a file in the format the run was
    trained on; left out: the run's own test split).

    \b
    Example:
      rnnkit evaluate runs/ctf examples/configs/data/sine_test.ctf
      rnnkit evaluate runs/mnist1d
    """
    from rnnkit.workflows.train import evaluate_run

    metrics = evaluate_run(run_dir, None if data is None else str(data))
    for name, value in metrics.items():
        if isinstance(value, (int, float)):
            click.echo(f"{name:<20} {value:.6g}")
        else:
            click.echo(f"{name:<20} {value}")


@cli.command(short_help="Write a trained run's predictions on data to a CSV.")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              default="predictions.csv", show_default=True, help="the CSV to write")
def predict(run_dir: Path, data: Path | None, output: Path) -> None:
    """Predict with the model in RUN_DIR on DATA (read as the run read its training file;
    left out: the run's own test split) and write one CSV row per sample: the class and each
    class's probability (classifier), the predicted values (regressor), one row per step
    (tagger).

    \b
    Example:
      rnnkit predict runs/ctf examples/configs/data/sine_test.ctf -o predictions.csv
    """
    from rnnkit.workflows.train import predict_run

    written = predict_run(run_dir, None if data is None else str(data), output)
    click.echo(f"wrote {written}")


@cli.command(short_help="Generate text with a trained language model.")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--prompt", "-p", required=True, help="the text to continue")
@click.option("--length", "-n", type=click.IntRange(min=0), default=500, show_default=True,
              help="tokens (characters or words) to add")
@click.option("--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="below 1: safer text; 0: always the most likely token")
@click.option("--top-k", type=click.IntRange(min=1), help="sample from the k likeliest tokens")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True),
              help="sample from the smallest set of tokens holding this probability")
@click.option("--seed", type=int, help="the same seed gives the same text")
def generate(run_dir: Path, prompt: str, length: int, temperature: float, top_k: int | None,
             top_p: float | None, seed: int | None) -> None:
    """Continue PROMPT with the language model in RUN_DIR and print the text.

    \b
    Example:
      rnnkit generate runs/shakespeare --prompt "ROMEO:" --length 500 --temperature 0.8 \
          --seed 1
    """
    from rnnkit.workflows.train import generate_text

    click.echo(generate_text(run_dir, prompt, length, temperature=temperature, top_k=top_k,
                             top_p=top_p, seed=seed))


@cli.command(short_help="Decode an input with a trained seq2seq run (beam search, heat map).")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("text")
@click.option("--beam-width", "-k", type=int,
              help="hypotheses kept per step; 1 is greedy (default: the run's [decode])")
@click.option("--n-best", "-n", type=int, default=1, show_default=True,
              help="print this many hypotheses, best first (at most the beam width)")
@click.option("--max-length", type=int,
              help="most characters decoded (default: the run's [decode], else the task's "
                   "longest target + 1)")
@click.option("--length-penalty", type=float, help="GNMT length penalty alpha (beam search)")
@click.option("--attention-png", type=click.Path(dir_okay=False, path_type=Path),
              help="write the best hypothesis' attention as a heat map (source on x, "
                   "output on y)")
def translate(run_dir: Path, text: str, beam_width: int | None, n_best: int,
              max_length: int | None, length_penalty: float | None,
              attention_png: Path | None) -> None:
    """Decode TEXT with the seq2seq model in RUN_DIR (trained by rnnkit train with
    [model] type = "seq2seq") and print each hypothesis with its score (the sum of the
    log-probabilities, with the length penalty under beam search). A character outside the
    run's source vocabulary is an error naming it (unless the run's data.unknown = "map").

    \b
    Example:
      rnnkit translate runs/dates "Saturday, May 3, 1997"
      rnnkit translate runs/dates "3 may 97" --beam-width 5 --n-best 3 --attention-png may.png
    """
    from rnnkit.workflows.seq2seq import translate as translate_text

    result = translate_text(run_dir, text, beam_width=beam_width, n_best=n_best,
                            max_length=max_length, length_penalty=length_penalty,
                            attention_png=attention_png)
    shown = [text or "(empty)" for text in result.texts]  # an immediate <eos>
    width = max((len(t) for t in shown), default=0)
    for output, score in zip(shown, result.scores, strict=True):
        click.echo(f"{output:<{width}}  score {score:.4f}")
    if attention_png is not None:
        click.echo(f"wrote {attention_png}")


@cli.command(short_help="Which kernel each layer of a configured model runs, and why.")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help=_SET_HELP)
def explain(config: Path, overrides: tuple[str, ...]) -> None:
    """Build the model CONFIG describes, run one training batch through it, and print which
    path (fused torch kernels, rnnkit's compiled kernels, the Python loop) each recurrent
    layer takes and why (rnnkit.engine.explain).

    \b
    Example:
      rnnkit explain examples/configs/mnist1d_classifier.toml --set model.cell=lstm
    """
    from rnnkit.workflows.config import load_config
    from rnnkit.workflows.train import explain_config

    click.echo(explain_config(load_config(config, overrides)))


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
