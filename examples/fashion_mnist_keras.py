"""Fashion-MNIST read row by row: the seed's Keras SimpleRNN in Keras 3, plain PyTorch and
rnnkit, side by side on the same machine in the same run (issue 13, row 2).

The model is the seed's (``../shared/seeds/001_*.txt``, "RNN in Keras for MNIST"): each
28x28 image is 28 steps of 28 pixels, ``SimpleRNN(16, activation="relu")``, ``Dense(10)``,
softmax, categorical cross-entropy, RMSprop lr 0.01 (Keras: rho 0.9, epsilon 1e-7), batch
100, 20 epochs, shuffled each epoch. Targets: rnnkit's test accuracy within 1 point of Keras
(mean over seeds), its training >= 20x faster than Keras and >= 3x faster than plain PyTorch::

    python examples/fashion_mnist_keras.py                         # 3 seeds x 20 epochs
    python examples/fashion_mnist_keras.py --seeds 0 --epochs 5
    python examples/fashion_mnist_keras.py --results docs/results/fashion_mnist_keras.json
    python examples/fashion_mnist_keras.py --tiny                  # seconds (CI)

Data: the Debian package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``
puts the four IDX files in /usr/share/datasets/fashion-mnist), or ``--data DIR`` /
``$RNNKIT_FASHION_MNIST`` pointing at the same files from
https://github.com/zalandoresearch/fashion-mnist. Keras: ``pip install 'rnnkit[reproduce]'``
(Keras 3; this example runs it on its torch backend, so it needs no TensorFlow).

The three forms of a seed are paired: they start from the same weights (Keras's draw:
glorot-uniform input and output weights, orthogonal recurrent weights, zero biases) and see the
images in the same order, so accuracy compares the frameworks, not two draws. The PyTorch
form is what a PyTorch user writes: ``nn.RNN`` (two bias vectors),
``torch.optim.RMSprop(alpha=0.9, eps=1e-7)``, ``cross_entropy`` on the logits. The rnnkit form
is Keras's model exactly, which that is not:

* Keras's RMSprop divides by ``sqrt(v + epsilon)``, torch's by ``sqrt(v) + eps``: with
  epsilon 1e-7 torch's floor is 1e-7 instead of 3.2e-4, so torch takes near-full steps on
  near-zero gradients. The rnnkit form uses ``rnnkit.training.RMSprop`` (Keras's formula).
* Keras's SimpleRNN has one bias vector, ``nn.RNN`` two (``bias_ih``, ``bias_hh``) with equal
  gradients, which under RMSprop moves the effective bias twice as far per step. The rnnkit
  form keeps ``bias_hh_l0`` at zero and out of training (``requires_grad=False``).
* Keras's categorical cross-entropy takes the softmax probabilities clipped to
  ``[1e-7, 1 - 1e-7]``: a sample predicted beyond that (right or wrong) gives no gradient. The
  rnnkit form trains on :func:`rnnkit.training.keras_crossentropy`, that loss from the logits.

``tests/examples/test_fashion_mnist_keras.py`` trains the Keras model and the rnnkit form from
the same weights on the same batches and checks that their parameters agree. Training time is
the time inside ``fit`` / the epoch loops (wall and process CPU time: on a shared box the
CPU-time ratio is the steadier one). The three forms of a seed train in turns, one epoch
each, so that a change in the machine's speed falls on all of them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import _results
import torch
from torch import nn

import rnnkit
from rnnkit.data.idx import IDXSequenceDataset

DATA_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
HOW_TO_GET = ("Fashion-MNIST not found. Install the Debian package (sudo apt-get install "
              "dataset-fashion-mnist: /usr/share/datasets/fashion-mnist), or download the four "
              "IDX files from https://github.com/zalandoresearch/fashion-mnist and pass --data "
              "DIR (or set RNNKIT_FASHION_MNIST).")
HIDDEN, CLASSES, BATCH, LR, RHO, EPSILON = 16, 10, 100, 0.01, 0.9, 1e-7


def find_data(path: str | None) -> Path | None:
    """The folder holding the IDX files: ``--data``, ``$RNNKIT_FASHION_MNIST`` or Debian's."""
    if path is not None:
        candidates = [Path(path)]
    elif os.environ.get("RNNKIT_FASHION_MNIST"):
        candidates = [Path(os.environ["RNNKIT_FASHION_MNIST"])]
    else:
        candidates = list(DATA_DIRS)
    for folder in candidates:
        try:
            rnnkit.data.idx.find_idx_pair(folder, "train")
            rnnkit.data.idx.find_idx_pair(folder, "test")
            return folder
        except (FileNotFoundError, NotADirectoryError):
            continue
    return None


def keras_init(rnn_input: torch.Tensor, rnn_recurrent: torch.Tensor, biases: list[torch.Tensor],
               head: torch.Tensor) -> None:
    """Keras's SimpleRNN/Dense initialisers on torch-layout weights ``(out, in)``."""
    with torch.no_grad():
        nn.init.xavier_uniform_(rnn_input)      # glorot_uniform
        nn.init.orthogonal_(rnn_recurrent)      # orthogonal
        nn.init.xavier_uniform_(head)
        for bias in biases:
            bias.zero_()


class RowReader(nn.Module):
    """``rnn`` (an ``nn.RNN`` or ``rnnkit.RNN``, relu, 28 -> 16) over the rows, then a
    linear layer on its last state: logits ``(B, 10)`` (the softmax is in the loss).
    ``single_bias``: Keras's SimpleRNN, one bias (``bias_hh_l0`` stays zero, untrained)."""

    def __init__(self, rnn: nn.Module, single_bias: bool = False) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(HIDDEN, CLASSES)
        keras_init(rnn.weight_ih_l0, rnn.weight_hh_l0, [rnn.bias_ih_l0, rnn.bias_hh_l0,
                                                        self.head.bias], self.head.weight)
        if single_bias:
            rnn.bias_hh_l0.requires_grad_(False)

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Start from ``weights`` (:func:`initial_weights`'s names, torch layout ``(out,
        in)``); the second bias of ``nn.RNN`` stays zero, as Keras has none."""
        rnn = self.rnn
        with torch.no_grad():
            for target, name in ((rnn.weight_ih_l0, "input"), (rnn.weight_hh_l0, "recurrent"),
                                 (rnn.bias_ih_l0, "bias"), (self.head.weight, "head"),
                                 (self.head.bias, "head_bias")):
                target.copy_(weights[name])
            rnn.bias_hh_l0.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_n = self.rnn(x)                     # (1, B, 16)
        return self.head(h_n[0])                 # (B, 10)


def initial_weights(seed: int) -> dict[str, torch.Tensor]:
    """A start drawn with Keras's initialisers in torch (for runs without the Keras form)."""
    torch.manual_seed(seed)
    reader = RowReader(nn.RNN(28, HIDDEN, nonlinearity="relu"))
    rnn = reader.rnn
    return {"input": rnn.weight_ih_l0.detach().clone(),
            "recurrent": rnn.weight_hh_l0.detach().clone(),
            "bias": rnn.bias_ih_l0.detach().clone(), "head": reader.head.weight.detach().clone(),
            "head_bias": reader.head.bias.detach().clone()}


class TorchForm:
    """The hand-written PyTorch loop, one epoch per :meth:`epoch` call: shuffle, minibatches
    of 100 gathered batch-first as they are needed, cross-entropy, RMSprop.

    ``kind`` "pytorch": ``nn.RNN`` (two biases), ``torch.optim.RMSprop``, plain
    cross-entropy, as a PyTorch user writes it. "rnnkit": ``rnnkit.RNN`` (its compiled Elman
    kernel) as Keras's model and optimizer exactly: one bias, ``rnnkit.training.RMSprop``,
    Keras's clipped loss.

    Per batch, not per epoch: gathering the whole shuffled epoch (188 MB, then a time-major
    copy of it for the rnnkit form) took ~0.4 ms of every update on fresh pages, against
    ~0.08 ms for one batch of 100 images (Intel Xeon, one thread)."""

    def __init__(self, kind: str, data: dict, weights: dict[str, torch.Tensor]) -> None:
        rnn_class = {"pytorch": nn.RNN, "rnnkit": rnnkit.RNN}[kind]
        self.data = data
        self.model = RowReader(rnn_class(28, HIDDEN, nonlinearity="relu", batch_first=True),
                               single_bias=kind == "rnnkit")
        self.model.set_weights(weights)
        warm_up = RowReader(rnn_class(28, HIDDEN, nonlinearity="relu", batch_first=True))
        warm_up(torch.zeros(2, 28, 28)).sum().backward()  # loads kernels, untimed
        params = [p for p in self.model.parameters() if p.requires_grad]
        if kind == "rnnkit":
            self.optimizer = rnnkit.training.RMSprop(params, learning_rate=LR, rho=RHO,
                                                     epsilon=EPSILON)
            self.loss_fn = rnnkit.training.keras_crossentropy
        else:
            self.optimizer = torch.optim.RMSprop(params, lr=LR, alpha=RHO, eps=EPSILON,
                                                 foreach=True)
            self.loss_fn = nn.functional.cross_entropy
        self.train_s = self.train_cpu_s = 0.0

    def epoch(self, order: torch.Tensor) -> None:
        """One pass over the training images in ``order`` (a permutation, whole batches)."""
        x, y = self.data["x"], self.data["y"]
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in order.view(-1, BATCH):
            # index_select, not x[batch]: one row copy per image (~0.07 ms) where advanced
            # indexing computes an offset per pixel (~0.19 ms)
            xb, yb = x.index_select(0, batch), y.index_select(0, batch)   # (B, T, F), (B,)
            loss = self.loss_fn(self.model(xb), yb)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.train_s += time.perf_counter() - wall
        self.train_cpu_s += time.process_time() - cpu

    @torch.no_grad()
    def result(self) -> dict:
        self.model.eval()
        logits = self.model(self.data["x_test"])                  # (N, 10), batch-first
        accuracy = float((logits.argmax(-1) == self.data["y_test"]).float().mean())
        return {"accuracy": accuracy, "train_s": self.train_s, "train_cpu_s": self.train_cpu_s}


class KerasForm:
    """The seed's script in Keras 3 on its torch backend; :meth:`epoch` is one
    ``fit(..., epochs=1)`` on the epoch's order of the images."""

    def __init__(self, data: dict, seed: int) -> None:
        """The seed's model, its weights drawn by Keras from ``seed``."""
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras

        if keras.backend.backend() != "torch":
            raise SystemExit(f"fashion_mnist_keras: Keras runs on {keras.backend.backend()!r}; "
                             "set KERAS_BACKEND=torch before anything imports keras")
        keras.utils.set_random_seed(seed)
        self.keras = keras
        self.model = keras.Sequential([
            keras.Input((28, 28)),
            keras.layers.SimpleRNN(HIDDEN, activation="relu"),
            keras.layers.Dense(CLASSES),
            keras.layers.Activation("softmax"),
        ])
        self.model.compile(loss="categorical_crossentropy",
                           optimizer=keras.optimizers.RMSprop(learning_rate=LR, rho=RHO,
                                                              epsilon=EPSILON),
                           metrics=["accuracy"])
        self.x, self.x_test = data["x"].numpy(), data["x_test"].numpy()
        self.y = keras.utils.to_categorical(data["y"].numpy(), CLASSES)
        self.y_test = keras.utils.to_categorical(data["y_test"].numpy(), CLASSES)
        self.train_s = self.train_cpu_s = 0.0

    def initial_weights(self) -> dict[str, torch.Tensor]:
        """Keras's initial weights in torch layout ``(out, in)``, for the torch forms."""
        kernel, recurrent, bias = self.model.layers[0].get_weights()
        head, head_bias = self.model.layers[1].get_weights()
        return {"input": torch.from_numpy(kernel.T.copy()),
                "recurrent": torch.from_numpy(recurrent.T.copy()),
                "bias": torch.from_numpy(bias.copy()), "head": torch.from_numpy(head.T.copy()),
                "head_bias": torch.from_numpy(head_bias.copy())}

    def epoch(self, order: torch.Tensor) -> None:
        """``fit`` for one epoch on the images in ``order`` (the copy in that order is made
        before the clock starts; Keras's own shuffle, inside fit, would be timed)."""
        index = order.numpy()
        x, y = self.x[index], self.y[index]
        wall, cpu = time.perf_counter(), time.process_time()
        self.model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        self.train_s += time.perf_counter() - wall
        self.train_cpu_s += time.process_time() - cpu

    def result(self) -> dict:
        _, test_accuracy = self.model.evaluate(self.x_test, self.y_test, batch_size=1000,
                                               verbose=0)
        return {"accuracy": float(test_accuracy), "train_s": self.train_s,
                "train_cpu_s": self.train_cpu_s, "keras": self.keras.__version__}


def run_seed(forms: list[str], data: dict, seed: int, epochs: int) -> dict[str, dict]:
    """Train every form from ``seed``, paired: all start from the same weights (Keras's draw,
    or :func:`initial_weights` without Keras) and see the images in the same order (one
    permutation per epoch from ``seed``), so that their accuracies differ by the frameworks
    and not by the draw (measured unpaired, 12 seeds each: the seed spread is ~1.2 points, as
    wide as the target). One epoch of each form in turn: the box's speed drifts (another
    tenant, the clock), and taking turns spreads a drift over all forms alike where running
    each form's 20 epochs in one go put it on one form (seen: Keras 5.5 then 13.0 s/epoch, an
    hour apart, on the same idle Intel Xeon)."""
    keras_form = KerasForm(data, seed) if "keras" in forms else None
    weights = keras_form.initial_weights() if keras_form else initial_weights(seed)
    trainers = {form: keras_form if form == "keras" else TorchForm(form, data, weights)
                for form in forms}
    generator = torch.Generator().manual_seed(seed)
    steps = len(data["x"]) // BATCH
    for _ in range(epochs):
        order = torch.randperm(len(data["x"]), generator=generator)[: steps * BATCH]
        for trainer in trainers.values():
            trainer.epoch(order)
    return {form: trainer.result() for form, trainer in trainers.items()}


def load(folder: Path, train_size: int | None, test_size: int | None) -> dict:
    train = IDXSequenceDataset.from_dir(folder, "train")     # pixels / 255, (N, 28, 28)
    test = IDXSequenceDataset.from_dir(folder, "test")
    return {"x": train.x[:train_size].contiguous(), "y": train.y[:train_size].contiguous(),
            "x_test": test.x[:test_size].contiguous(), "y_test": test.y[:test_size].contiguous()}


def report(runs: dict[str, list[dict]], args: argparse.Namespace, data: dict,
           started: tuple[float, float, float], final: bool) -> None:
    """Print the means so far and, with ``--results``, write them (after every seed)."""
    seeds = [r["seed"] for r in next(iter(runs.values()))]
    summary = {}
    for form, results in runs.items():
        summary[form] = {
            "accuracy_mean": statistics.fmean(r["accuracy"] for r in results),
            "s_per_epoch": statistics.fmean(r["train_s"] for r in results) / args.epochs,
            "cpu_s_per_epoch": statistics.fmean(r["train_cpu_s"] for r in results) / args.epochs,
            "runs": results,
        }
    for form, s in summary.items():
        print(f"{form:8s} mean test accuracy {s['accuracy_mean']:.4f} ({len(seeds)} seed(s)), "
              f"{s['s_per_epoch']:.2f} s/epoch wall, {s['cpu_s_per_epoch']:.2f} s/epoch CPU")
    wall, cpu = time.perf_counter() - started[0], time.process_time() - started[1]
    details: dict = {"forms": summary, "epochs": args.epochs, "threads": args.threads,
                     "train_images": len(data["x"]), "test_images": len(data["x_test"]),
                     "seeds_requested": list(args.seeds), "finished": final,
                     "process_cpu_s": round(cpu, 1),
                     "load_at_start": round(started[2], 2),
                     "load_at_end": round(os.getloadavg()[0], 2)}
    ours, met = "not run", None
    if "rnnkit" in summary:
        mine = summary["rnnkit"]
        ours = f"{100 * mine['accuracy_mean']:.2f}%"
        checks = []
        for peer in ("keras", "pytorch"):
            if peer in summary:
                details[f"speedup_vs_{peer}_wall"] = summary[peer]["s_per_epoch"] / mine[
                    "s_per_epoch"]
                details[f"speedup_vs_{peer}_cpu"] = summary[peer]["cpu_s_per_epoch"] / mine[
                    "cpu_s_per_epoch"]
                ours += (f", {details[f'speedup_vs_{peer}_cpu']:.1f}x {peer} "
                         f"({details[f'speedup_vs_{peer}_wall']:.1f}x wall)")
        if "keras" in summary:
            gap = 100 * abs(mine["accuracy_mean"] - summary["keras"]["accuracy_mean"])
            details["accuracy_gap_points_vs_keras"] = gap
            ours += f", Keras {100 * summary['keras']['accuracy_mean']:.2f}%"
            checks += [gap <= 1.0, details["speedup_vs_keras_cpu"] >= 20]
        if "pytorch" in summary:
            ours += f", PyTorch {100 * summary['pytorch']['accuracy_mean']:.2f}%"
            checks.append(details["speedup_vs_pytorch_cpu"] >= 3)
        met = all(checks) if len(checks) == 3 and final and not args.tiny else None
        for key in ("speedup_vs_keras_cpu", "speedup_vs_pytorch_cpu"):
            if key in details:
                print(f"rnnkit {key.replace('_', ' ')}: {details[key]:.1f}x")
    if args.note:
        details["note"] = args.note
    if not args.results:
        return
    keras_version = next((r.get("keras") for r in runs.get("keras", [])), None)
    _results.write_results(
        args.results, row=2, task="Fashion-MNIST, rows as steps (the seed's Keras model)",
        metric="test accuracy (mean of seeds); training speed-up (CPU time)",
        ours=ours,
        anchor=f"the same script in Keras {keras_version or '3'} (torch backend) and plain "
               "PyTorch (nn.RNN + Linear), same machine, same run",
        target="accuracy within 1 point of Keras; >= 20x faster than Keras, >= 3x than "
               "plain PyTorch",
        met=met,
        settings=(f"SimpleRNN(16, relu) + Dense(10), RMSprop lr 0.01 rho 0.9 eps 1e-7, batch "
                  f"100, {args.epochs} epochs, {len(data['x'])} training images, "
                  "rnnkit form as Keras (one bias, Keras's RMSprop formula via "
                  "rnnkit.training.RMSprop, rnnkit.training.keras_crossentropy), PyTorch form "
                  "as written for PyTorch (nn.RNN's two biases, torch.optim.RMSprop), forms "
                  "paired (Keras's initial weights, one image order per epoch), "
                  f"{args.threads} thread(s)" + (" (tiny)" if args.tiny else "")
                  + ("" if final else f" (stopped: {len(seeds)} of {len(args.seeds)} seeds)")),
        seeds=seeds, wall_s=round(wall, 1), details=details)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--forms", nargs="+", default=["keras", "pytorch", "rnnkit"],
                        choices=["keras", "pytorch", "rnnkit"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for all three forms (1 on a busy shared box)")
    parser.add_argument("--note", default="",
                        help="a closing note kept in the results JSON (what ran, what limits it)")
    _results.add_arguments(parser)
    args = parser.parse_args(argv)
    folder = find_data(args.data)
    if folder is None:
        print(HOW_TO_GET, file=sys.stderr)
        return 2
    if "keras" in args.forms and importlib.util.find_spec("keras") is None:
        print("fashion_mnist_keras: Keras 3 is not installed: pip install 'rnnkit[reproduce]' "
              "(or leave it out: --forms pytorch rnnkit)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    train_size = test_size = None
    if args.tiny:   # 2,000 training images, 1 epoch, 1 seed: seconds
        train_size, test_size, args.epochs, args.seeds = 2000, 1000, 1, args.seeds[:1]
    data = load(folder, train_size, test_size)
    started = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    runs: dict[str, list[dict]] = {form: [] for form in args.forms}
    for k, seed in enumerate(args.seeds):
        for form, result in run_seed(args.forms, data, seed, args.epochs).items():
            result["seed"] = seed
            result["load_after"] = round(os.getloadavg()[0], 2)
            runs[form].append(result)
            print(f"seed {seed} {form:8s} test accuracy {result['accuracy']:.4f}, "
                  f"{result['train_s'] / args.epochs:.2f} s/epoch wall, "
                  f"{result['train_cpu_s'] / args.epochs:.2f} s/epoch CPU "
                  f"(load {result['load_after']:.1f})", flush=True)
        # after every seed: a long run that is stopped keeps the seeds it finished
        report(runs, args, data, started, final=k == len(args.seeds) - 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
