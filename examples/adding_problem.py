"""The adding problem (issue 13, row 4): LSTM, GRU and IRNN remember 200 steps, tanh-RNN cannot.

Each input is ``T`` steps of two channels: a random number in [0, 1] and a marker that is 1 at
exactly two steps (one in each half of the sequence) and 0 elsewhere; the target is the sum of
the two marked numbers. Always answering 1 (the mean) scores MSE 1/6 ~ 0.167, so a model that
learns nothing sits there; "solved" means test MSE < 0.01. This is the modern two-channel form
of Hochreiter and Schmidhuber (1997) used by Le, Jaitly and Hinton (2015, IRNN) and Bai, Kolter
and Koltun (2018, TCN).

Every model is ``rnnkit.SequenceRegressor(2, 1, cell=...)`` trained by ``rnnkit.Trainer``
(Adam, gradient norm clipped at 1); the weights of the best validation check are kept
(``EarlyStopping(restore_best_weights=True)``, Keras' remedy for a noisy validation curve) and
the test set is read once, on them; ``GradientFlowRecorder`` records ||dL/dh_t|| on a probe
batch, and the figure ``docs/figures/gradient_flow.png`` shows why the tanh RNN fails: its
gradient vanishes geometrically going back from the last step, so the first marker never
gets credit; chrono init (LSTM) and the identity (IRNN) keep it alive from the start. Full run
(about 15 minutes of CPU on one thread, 30 of wall time on 2 shared cores; the IRNN takes
most of it, the others a minute each):

    nice -n 10 python examples/adding_problem.py --results docs/results/adding_problem.json

``--tiny`` runs in seconds (CI).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

import rnnkit
from rnnkit.diagnostics import GradientFlow, plot_gradient_flow
from rnnkit.training import Callback, EarlyStopping, GradientFlowRecorder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import add_arguments, load_results, machine, write_results  # noqa: E402

BASELINE_MSE = 1 / 6          # predicting the mean sum, 1: Var(U1 + U2) = 2/12
SOLVED = 0.01
NAMES = {"elman": "tanh-RNN", "irnn": "IRNN", "lstm": "LSTM", "gru": "GRU"}
# Per cell, fixed before the runs recorded here and chosen on the validation set only (the test
# set is read once, after training): Adam's learning rate, hidden size, the most updates it may
# take at any T, and the initialisation. LSTM: chrono init (Tallec & Ollivier
# 2018): forget-gate bias log(U(1, T - 1)), input-gate bias its negative, so each unit starts
# out remembering for up to T steps. IRNN: identity recurrence, ReLU, small input weights (Le
# et al. 2015) with Adam's small steps: a step changes the identity's eigenvalues, which T
# steps raise to the T-th power. The tanh RNN gets more updates than LSTM/GRU need, to show it
# is not merely short of them. What else was tried (TRIED) is kept in the results.
# The protocol changed after the first recorded run (FIRST_RUN), which tested the last weights:
# IRNN at T=100 missed there because its validation MSE kept jumping after crossing 0.01. Every
# cell and length now keeps the weights of its best validation check; the settings are as before.
SETTINGS = {
    "elman": {"lr": 5e-3, "hidden": 32, "updates": 2000, "init": "torch default"},
    "irnn": {"lr": 1e-4, "hidden": 128, "updates": 15000, "init": "identity (irnn)"},
    "lstm": {"lr": 5e-3, "hidden": 32, "updates": 3000, "init": "chrono"},
    "gru": {"lr": 5e-3, "hidden": 32, "updates": 1500, "init": "torch default"},
}
# validation MSE at T=200 of the settings tried before these were fixed (same data, seed 0)
TRIED = [
    "LSTM hidden 32, lr 5e-3, torch's init (no forget bias): 0.167 after 1500 updates",
    "LSTM hidden 64, lr 1e-3, chrono: 0.169 for 1700 updates, 0.009-0.056 over 2500-3000",
    "LSTM hidden 32, lr 5e-3, chrono: below 0.01 at 700 updates (kept)",
    "IRNN hidden 64, lr 1e-3 / 3e-4 / 1e-4: 0.162-0.164 after 3000 / 6000 / 3000 updates",
    "IRNN hidden 128, lr 1e-4: plateau to 3600 updates, 0.025-0.033 at 5500-6000 (kept, "
    "with a 15000-update budget)",
    "budgets halved at T=100 at first: IRNN there ended at validation 0.023 (test 0.033) after "
    "7500 updates, still falling (tanh-RNN: test 0.170 after 1000), so every T now gets the "
    "full budget",
]
# The first recorded run (same settings and data, seed 0; 34.9 min wall), testing the last
# weights; superseded by keeping the best validation check.
FIRST_RUN = (
    "first recorded run, last weights tested (no selection): T=200: tanh-RNN 0.1571, IRNN "
    "0.0028 (below 0.01 on validation after 8250 updates), LSTM 0.0031 (750), GRU 0.0020 "
    "(700); T=100: tanh-RNN 0.2006, IRNN 0.0128 (missed: validation below 0.01 after 11450 "
    "updates but 0.0056-0.0416 over its last 20 checks, and the 15000-update budget ended on a "
    "high one), LSTM 0.0012 (700), GRU 0.0021 (450)")
FULL = {"lengths": [200, 100], "batch": 32, "train": 20000, "test": 1000,
        "validation": 500, "eval_every": 50, "stop_below": 0.003}
TINY = {"lengths": [12], "hidden": 8, "batch": 16, "train": 128, "test": 32,
        "validation": 32, "eval_every": 2, "stop_below": 0.003, "max_steps": 4}


def adding_data(count: int, steps: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (count, steps, 2)``: values and markers; ``y (count, 1)``: the marked values' sum."""
    values = torch.rand(count, steps, generator=generator)                     # (B, T)
    half = steps // 2
    first = torch.randint(0, half, (count,), generator=generator)              # (B,)
    second = torch.randint(half, steps, (count,), generator=generator)         # (B,)
    markers = torch.zeros(count, steps)
    rows = torch.arange(count)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = (values * markers).sum(1, keepdim=True)                           # (B, 1)
    return torch.stack([values, markers], dim=-1), target                     # (B, T, 2)


class StopWhenSolved(Callback):
    """Notes the first update whose validation MSE is below ``SOLVED``; stops below
    ``stop_below`` (a margin, so the test MSE is below the bar too)."""

    def __init__(self, stop_below: float) -> None:
        self.stop_below = stop_below
        self.solved_at: int | None = None
        self.curve: list[tuple[int, float]] = []

    def on_epoch_end(self, trainer, epoch, logs):
        mse = float(logs["val_loss"])
        self.curve.append((trainer.global_step, round(mse, 6)))
        if self.solved_at is None and mse < SOLVED:
            self.solved_at = trainer.global_step
        if mse < self.stop_below or not math.isfinite(mse):
            trainer.stop_training = True


def chrono_init(model: torch.nn.Module, steps: int, generator: torch.Generator) -> None:
    """Chrono initialisation (Tallec & Ollivier 2018, "Can recurrent neural networks warp
    time?", eq. 16): forget-gate bias ``log(U(1, T_max - 1))``, input-gate bias its negative,
    with ``T_max`` the longest dependency the task has (here the sequence length). Gates are
    torch's order i, f, g, o; ``bias_hh``'s two slices start at 0 so the totals are exact."""
    lstm = model.backbone.drop_in
    size = lstm.hidden_size
    forget = torch.log(torch.rand(size, generator=generator) * (steps - 2) + 1)  # (H,)
    with torch.no_grad():
        lstm.bias_hh_l0[:2 * size].zero_()
        lstm.bias_ih_l0[size:2 * size].copy_(forget)
        lstm.bias_ih_l0[:size].copy_(-forget)


def train_one(cell: str, steps: int, config: dict, seed: int, probe, data) -> dict:
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data
    chosen = SETTINGS[cell]
    lr, hidden = chosen["lr"], config.get("hidden") or chosen["hidden"]
    max_updates = config.get("max_steps") or chosen["updates"]
    torch.manual_seed(seed)
    model = rnnkit.SequenceRegressor(2, 1, cell=cell, hidden_size=hidden)
    if chosen["init"] == "chrono":
        chrono_init(model, steps, torch.Generator().manual_seed(seed))
    watch = StopWhenSolved(config["stop_below"])
    recorder = GradientFlowRecorder(probe, every_n_steps=max(1, max_updates // 6),
                                    filename=None)
    every = config["eval_every"]
    epochs = max(1, max_updates // every)
    # The protocol: keep the weights of the best validation check (Keras'
    # EarlyStopping(restore_best_weights=True) with a patience longer than the run, so it only
    # selects and never stops), the same for every cell and length; the test set is read once,
    # on the restored weights.
    keep_best = EarlyStopping("val_loss", patience=epochs, restore_best_weights=True)
    trainer = rnnkit.Trainer(model, loss="mse", optimizer="adam", lr=lr, clip_grad_norm=1.0,
                             seed=seed, callbacks=[watch, keep_best, recorder], verbose=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit((x_train, y_train), validation=(x_val, y_val),
                epochs=epochs, epoch_size=every * config["batch"],
                batch_size=config["batch"])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    best_update, best_mse = watch.curve[keep_best.best_epoch]
    recorder.record(trainer, trainer.global_step)     # the kept (best) model's flow
    test_mse = trainer.evaluate((x_test, y_test), batch_size=500)["loss"]
    first, last = recorder.records[0][1], recorder.records[-1][1]
    return {
        "test_mse": round(test_mse, 6), "solved": test_mse < SOLVED,
        "steps_to_solve": watch.solved_at, "steps_trained": trainer.global_step,
        "kept_weights_of_update": best_update, "best_validation_mse": best_mse,
        "max_updates": max_updates, "hidden": hidden, "batch": config["batch"], "lr": lr,
        "init": chosen["init"], "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "validation_curve": watch.curve,
        # how much of the last step's gradient reaches the first step
        "gradient_ratio_h1_over_hT": {
            "init": _ratio(first["layer 1"]), "trained": _ratio(last["layer 1"])},
        "flows": (first, last),
    }


def _ratio(norms: torch.Tensor) -> float:
    return float(norms[0] / norms[-1]) if float(norms[-1]) > 0 else math.nan


def draw(models: dict[str, dict], steps: int, figure: str, host: str) -> None:
    """The gradient-flow figure from the results' recorded flows (every model run so far)."""
    panels = {"at initialisation": {}, "after training": {}}
    for name, row in models.items():
        for key, panel in (("init", "at initialisation"), ("trained", "after training")):
            norms = torch.tensor([math.nan if v is None else v
                                  for v in row["gradient_flow"][key]], dtype=torch.float64)
            panels[panel][name] = GradientFlow({"layer 1": norms}, math.nan)
    plot_gradient_flow(panels, figure, layers="last",
                       title=f"adding problem, T={steps}: "
                             r"$\|\partial L/\partial h_t\|$ on 50 test sequences",
                       note=f"rnnkit, {host}")
    print(f"figure: {figure}")


def summary(results: dict) -> tuple[list[int], str, bool, str]:
    """``(lengths run, ours, met, closing note)`` from the per-model results."""
    lengths = sorted(int(key[2:]) for key, models in results.items() if models)
    longest = results.get(f"T={max(lengths)}", {}) if lengths else {}
    tanh_fails = "tanh-RNN" in longest and longest["tanh-RNN"]["test_mse"] > 0.05
    # every length run counts: the gated cells must solve T=100 as well as T=200
    met = tanh_fails and all(
        all(name in models and models[name]["solved"] for name in ("LSTM", "GRU", "IRNN"))
        for key, models in results.items() if models)
    ours = "; ".join(
        f"T={steps}: " + ", ".join(
            f"{n} {r['test_mse']:.4f}" + (f" (solved in {r['steps_to_solve']} updates)"
                                          if r["solved"] else "")
            for n, r in results[f"T={steps}"].items())
        for steps in reversed(lengths)) or "not run yet"
    notes = []
    for key, models in results.items():
        for name, r in models.items():
            ratio = r["gradient_ratio_h1_over_hT"]
            kept = (f"kept the weights of update {r['kept_weights_of_update']}, validation "
                    f"{r['best_validation_mse']:.4f}; " if "kept_weights_of_update" in r else "")
            if r["solved"]:
                notes.append(f"{key} {name}: test MSE {r['test_mse']:.4f}, validation MSE "
                             f"below 0.01 after {r['steps_to_solve']} updates "
                             f"({r['steps_trained']} trained; {kept}"
                             f"{r.get('cpu_s', '?')} s CPU).")
            elif r["steps_to_solve"]:      # reached the bar on validation, not on test
                last = [mse for _, mse in r["validation_curve"][-20:]]
                notes.append(
                    f"{key} {name}: test MSE {r['test_mse']:.4f} after {r['steps_trained']} "
                    f"updates ({kept}{r.get('cpu_s', '?')} s CPU), not solved: "
                    f"validation MSE first fell below 0.01 after {r['steps_to_solve']} updates "
                    f"but jumps ({min(last):.4f}-{max(last):.4f} over the last "
                    f"{len(last)} checks) at lr {r['lr']:g}, and the best validation check "
                    "does not carry over to the test set.")
            else:
                notes.append(
                    f"{key} {name}: test MSE {r['test_mse']:.4f} after {r['steps_trained']} "
                    f"updates (its budget on this shared box), not solved; "
                    f"|dL/dh_1| / |dL/dh_T| = {ratio['init']:.1e} at initialisation and "
                    f"{ratio['trained']:.1e} after training ({kept}"
                    f"{r.get('cpu_s', '?')} s CPU).")
    note = ("Protocol changed after the first run missed one cell: that run tested the last "
            "weights, and IRNN at T=100 ended at test MSE 0.0128 because its validation MSE, "
            "below 0.01 from 11450 updates on, kept jumping (0.0056-0.0416 at lr 1e-4) and the "
            "budget ended on a high point. This run keeps, for every cell and length alike, "
            "the weights of the best validation check (Keras' EarlyStopping("
            "restore_best_weights=True)); the selection sees only the validation set, the "
            "test set is still read once, after training, and the settings are unchanged (a run "
            "stopped at validation MSE < 0.003 has its best check last, so keeps its last "
            "weights and repeats the first run's numbers). "
            + FIRST_RUN[0].upper() + FIRST_RUN[1:] + ". "
            + " ".join(notes) + " Settings chosen on validation MSE (the test set is read once, "
            "after training); tried at T=200 before fixing them: " + "; ".join(TRIED) + ".")
    return lengths, ours, met, note


def save(args, config: dict, results: dict, figure: str | None, host: str,
         wall: float) -> None:
    """Write the results JSON (after every model, so a long run keeps what it has)."""
    if not args.results:
        return
    lengths, ours, met, note = summary(results)
    if not lengths:
        return
    write_results(
        args.results, row=4, task=f"adding problem, T = {', '.join(map(str, lengths))}",
        metric="test MSE (baseline 1/6 = 0.167)",
        ours=ours,
        anchor="LSTM/GRU solve it, tanh-RNN fails (Le et al. 2015; Bai et al. 2018)",
        target="LSTM, GRU and IRNN test MSE < 0.01 at T=200 and T=100; tanh-RNN shown failing",
        met=None if args.tiny else met,
        settings=("SequenceRegressor (last step -> Linear), Adam, clip 1.0, batch "
                  f"{config['batch']}, {config['train']} training sequences; per cell lr / "
                  "hidden / most updates / init: "
                  + "; ".join(f"{NAMES[c]} {s['lr']:g} / {config.get('hidden') or s['hidden']}"
                              f" / {s['updates']} / {s['init']}" for c, s in SETTINGS.items())
                  + f"; validation every {config['eval_every']} updates, stop at validation "
                  f"MSE < {config['stop_below']}, the best validation check's weights kept "
                  "and tested; 1 torch thread"
                  + (" (--tiny)" if args.tiny else "")),
        seeds=[args.seed], wall_s=round(wall, 1), machine=host,
        details={"results": results, "figure": figure, "baseline_mse": BASELINE_MSE,
                 "tried": [FIRST_RUN] + TRIED, "note": note})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--cells", nargs="*", default=list(NAMES), choices=list(NAMES),
                        help="the models to train (none with --update: rewrite the results "
                             "file and the figure from what it holds)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="cap every model's updates (default: per cell, see SETTINGS)")
    parser.add_argument("--lengths", nargs="+", type=int, default=None,
                        help="sequence lengths T (default 100 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--update", action="store_true",
                        help="keep the other models' results already in --results")
    parser.add_argument("--figure", default=None,
                        help="the gradient-flow PNG (default docs/figures/gradient_flow.png "
                             "for a full run; next to --results with --tiny)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)     # one core each: the box is shared, and CPU seconds compare
    config = dict(TINY if args.tiny else FULL)
    if args.max_steps:
        config["max_steps"] = args.max_steps
    lengths = args.lengths or config["lengths"]
    figure = args.figure or (
        str(Path(args.results).with_suffix(".png")) if args.tiny and args.results
        else None if args.tiny else "docs/figures/gradient_flow.png")
    host = machine()
    start = time.perf_counter()
    results: dict[str, dict[str, dict]] = {}
    earlier_wall = 0.0
    if args.update and args.results and Path(args.results).exists():
        # add to (or redo part of) an earlier run: its other models are kept
        earlier = load_results(args.results)
        results, earlier_wall = earlier["details"]["results"], float(earlier["wall_s"])
        host = earlier["machine"] if not args.cells else host
    if not args.cells:
        lengths = [max(summary(results)[0] or lengths)]
    print(f"adding problem: baseline MSE {BASELINE_MSE:.4f}, solved below {SOLVED}; {host}")
    print(f"{'T':>4} {'model':<9} {'test MSE':>9} {'solved at':>10} {'updates':>8} "
          f"{'|dL/dh1|/|dL/dhT| init -> trained':>36} {'wall s':>7}")
    for steps in lengths:
        generator = torch.Generator().manual_seed(args.seed + steps)
        data = (adding_data(config["train"], steps, generator),
                adding_data(config["validation"], steps, generator),
                adding_data(config["test"], steps, generator))
        probe = (data[2][0][:50], data[2][1][:50])
        results.setdefault(f"T={steps}", {})
        for cell in args.cells:
            row = train_one(cell, steps, config, args.seed, probe, data)
            init, trained = row.pop("flows")
            row["gradient_flow"] = {"init": init.to_dict()["norms"]["layer 1"],
                                    "trained": trained.to_dict()["norms"]["layer 1"]}
            results[f"T={steps}"][NAMES[cell]] = row
            ratio = row["gradient_ratio_h1_over_hT"]
            save(args, config, results, figure, host,
                 earlier_wall + time.perf_counter() - start)
            print(f"{steps:>4} {NAMES[cell]:<9} {row['test_mse']:>9.4f} "
                  f"{str(row['steps_to_solve'] or '-'):>10} {row['steps_trained']:>8} "
                  f"{ratio['init']:>17.2e} -> {ratio['trained']:<16.2e} {row['wall_s']:>7}",
                  flush=True)
    done = summary(results)[0]
    if figure and done:        # the longest sequences run so far, every model they have
        draw(results[f"T={max(done)}"], max(done), figure, host)
    save(args, config, results, figure, host, earlier_wall + time.perf_counter() - start)
    return results


if __name__ == "__main__":
    main()
