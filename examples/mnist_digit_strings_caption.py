"""Captioning digit strings: an image of 3-7 handwritten digits in, the digits' words out.

The images are those of the CTC example (``examples/mnist_digit_strings_ctc.py``, row 10):
real MNIST test digits placed side by side with random gaps (``rnnkit.data.digit_strings``);
the held-out strings are built from digits never seen in training. Here the caption is the
digits as words, ``"three one four"``, written by ``rnnkit.models.ImageToSequence``: a small
CNN reads the image into a grid of features, a bidirectional LSTM runs along each grid row,
and an LSTM decoder with Bahdanau attention writes one word per step, looking at the grid
(Show, Attend and Tell). Each training digit is augmented as in the CTC example (moved,
rotated, scaled, sheared). The attention of each word is drawn over the image::

    python examples/mnist_digit_strings_caption.py            # ~10 min on 2 cores
    python examples/mnist_digit_strings_caption.py --tiny     # a few seconds (what CI runs)
    python examples/mnist_digit_strings_caption.py \
        --results docs/results/mnist_digit_strings_caption.json

Reported beside the CTC recognizer's row: exact caption accuracy, word accuracy (1 - word
error rate, edit distance over words: the CTC row's 1 - character error rate), parameters and
training time (wall and CPU seconds; the box may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import _results
import torch
from mnist_digit_strings_ctc import AUGMENT
from mnist_digit_strings_ctc import SETTINGS as CTC_SETTINGS

import rnnkit
from rnnkit.data.text import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
FIGURE = "docs/figures/mnist_digit_strings_attention.png"
CTC_RESULTS = ROOT / "docs" / "results" / "mnist_digit_strings_ctc.json"
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0-3, as seq2seq's
# each training digit moved, rotated, scaled and sheared as in the CTC example (row 10)
AUGMENTATION = {name: CTC_SETTINGS[name] for name in AUGMENT}

SETTINGS = dict(train_strings=24000, test_strings=2000, channels=(8, 32, 64), row_size=96,
                hidden=128, embedding=32, batch_size=32, epochs=2, lr=3e-3)
TINY = dict(train_strings=96, test_strings=16, channels=(4, 8, 8), row_size=8, hidden=16,
            embedding=8, batch_size=32, epochs=1, lr=3e-3)


def vocabulary() -> Vocabulary:
    from rnnkit.data.digit_strings import DIGIT_WORDS

    return Vocabulary(DIGIT_WORDS, level="word", specials=SPECIALS)


class CaptionCollate:
    """DigitStrings items -> ``((images, target_in, widths), target_out)`` for rnnkit.Trainer:
    ``target_in`` = <bos> + words (padded with <pad>), ``target_out`` = words + <eos> (-100)."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.bos, self.eos, self.pad = vocab["<bos>"], vocab["<eos>"], vocab["<pad>"]
        self.first_word = vocab["zero"]  # the ten words follow in digit order

    def __call__(self, items: list[dict[str, Any]]) -> tuple:
        from rnnkit.data.digit_strings import collate_digit_strings

        batch = collate_digit_strings(items)
        digits, lengths = batch["digits"], batch["digit_lengths"]  # (B, L) -1 padded, (B,)
        size, steps = digits.shape
        words = torch.where(digits >= 0, digits + self.first_word, torch.full_like(digits, -1))
        target_in = torch.full((size, steps + 1), self.pad, dtype=torch.int64)
        target_in[:, 0] = self.bos
        target_in[:, 1:] = torch.where(words >= 0, words, torch.full_like(words, self.pad))
        target_out = torch.full((size, steps + 1), -100, dtype=torch.int64)
        target_out[:, :steps] = torch.where(words >= 0, words, torch.full_like(words, -100))
        target_out[torch.arange(size), lengths] = self.eos
        return (batch["images"], target_in, batch["widths"]), target_out


def decode_all(model: torch.nn.Module, data: Any, vocab: Vocabulary, *, beam_width: int = 1,
               batch_size: int = 250) -> tuple[list[list[int]], list[list[int]]]:
    """Greedy (or beam) captions of every item as digit lists, and the references."""
    from rnnkit.data.digit_strings import collate_digit_strings

    first = vocab["zero"]
    found, references = [], []
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        batch = collate_digit_strings(items)
        method = {"method": "greedy"} if beam_width == 1 else {"method": "beam",
                                                               "beam_width": beam_width}
        hyps = model.decode(batch["images"], batch["widths"], max_length=12, **method)
        for tokens, length in zip(hyps.tokens[:, 0], hyps.lengths[:, 0], strict=True):
            ids = [int(t) for t in tokens[: int(length)] if int(t) >= first]
            found.append([t - first for t in ids])
        for digits, n in zip(batch["digits"], batch["digit_lengths"], strict=True):
            references.append(digits[: int(n)].tolist())
    return found, references


def score(found: list[list[int]], references: list[list[int]]) -> dict[str, Any]:
    import editdistance

    exact = sum(f == r for f, r in zip(found, references, strict=True))
    edits = sum(editdistance.eval(f, r) for f, r in zip(found, references, strict=True))
    words = sum(len(r) for r in references)
    return {"exact": round(exact / len(references), 6),
            "word_accuracy": round(1.0 - edits / words, 6),
            "wrong": len(references) - exact, "strings": len(references)}


def attention_figure(model: Any, data: Any, vocab: Vocabulary, path: Path,
                     indices: tuple[int, ...] = (0, 1)) -> list[str]:
    """One column per held-out string: the image, then one row per decoded word with its
    attention (the grid cells scaled back to the pixels they read) over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rnnkit.data.digit_strings import collate_digit_strings

    items = [data[i] for i in indices if i < len(data)]
    batch = collate_digit_strings(items)
    hyps = model.decode(batch["images"], batch["widths"], max_length=12)
    grids = model.attention_grid(hyps.attention, model.encode(batch["images"], batch["widths"]))
    captions, rows = [], int(hyps.lengths.max()) + 1
    figure, axes = plt.subplots(rows, len(items), squeeze=False,
                                figsize=(3.4 * len(items), 0.9 * rows + 0.4))
    factor_h, factor_w = model.encoder.height_factor, model.encoder.width_factor
    for column, item in enumerate(items):
        image = item["image"].numpy()  # (28, W)
        length = int(hyps.lengths[column, 0])
        words = [vocab.itos[int(t)] for t in hyps.tokens[column, 0, :length]]
        captions.append(" ".join(w for w in words if w not in SPECIALS))
        axes[0, column].imshow(image, cmap="gray_r", aspect="equal")
        axes[0, column].set_title(f"read: {item['text']}", fontsize=9)
        for step in range(rows - 1):
            axis = axes[step + 1, column]
            axis.imshow(image, cmap="gray_r", aspect="equal")
            if step < length:
                grid = grids[column, 0, step].numpy()  # (H', W')
                heat = np.kron(grid, np.ones((factor_h, factor_w)))  # pixels each cell reads
                full = np.full(image.shape, np.nan)  # pixels no grid cell reads: no colour
                h, w = min(heat.shape[0], image.shape[0]), min(heat.shape[1], image.shape[1])
                full[:h, :w] = heat[:h, :w]
                axis.imshow(np.ma.masked_invalid(full), cmap="Reds", alpha=0.65,
                            vmin=0.0, vmax=max(float(grid.max()), 1e-6), aspect="equal")
                axis.set_ylabel(words[step], rotation=0, ha="right", va="center", fontsize=9)
        for axis in axes[:, column]:
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
    figure.suptitle("where the decoder looks for each word (held-out digits)", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    figure.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(figure)
    return captions


def ctc_row() -> dict[str, Any] | None:
    """Row 10's result (the CTC recognizer on the same images), when it has been run."""
    if not CTC_RESULTS.exists():
        return None
    try:
        return _results.load_results(CTC_RESULTS)
    except ValueError:
        return None


def ctc_comparison() -> tuple[str, Any]:
    """Row 10's figures as one line, and the part of its record kept in ours."""
    ctc = ctc_row()
    if ctc is None:
        return "CTC recognizer (row 10): pending (not run yet)", "pending"
    found = ctc.get("details", {})
    greedy = found.get("decodings", {}).get("greedy", {})
    parts = [f"{ctc['metric']} {ctc['ours']}"]
    if "cer" in greedy:
        parts.append(f"word (digit) accuracy {1 - greedy['cer']:.4f}")
    if "parameters" in found:
        parts.append(f"{found['parameters']:,} parameters")
    if "train_cpu_s" in found:
        parts.append(f"trained in {found.get('train_wall_s', '?')} s wall / "
                     f"{found['train_cpu_s']} s CPU on {found.get('threads', '?')} thread(s)")
    kept = {key: ctc[key] for key in ("metric", "ours", "settings", "wall_s", "machine")}
    kept["details"] = {key: found[key] for key in ("parameters", "updates", "train_wall_s",
                                                   "train_cpu_s", "threads") if key in found}
    kept["details"]["greedy"] = greedy
    return "CTC recognizer (row 10, strings of the same held-out digits): " + \
        ", ".join(parts), kept


def note(details: dict[str, Any], ctc_text: str) -> str:
    greedy, beam = details["greedy"], details["beam_4"]
    return (f"ImageToSequence, {details['parameters']:,} parameters: {greedy['exact']:.2%} "
            f"of {greedy['strings']} held-out strings captioned exactly (greedy; beam 4: "
            f"{beam['exact']:.2%}), word accuracy {greedy['word_accuracy']:.2%}, trained in "
            f"{details['train_wall_s']:.0f} s wall / {details['train_cpu_s']:.0f} s CPU on "
            f"{details['threads']} thread(s). {ctc_text}.")


def refresh_comparison(path: str) -> int:
    """Rewrite the CTC side of a results file from row 10's current one (no training)."""
    record = _results.load_results(path)
    ctc_text, kept = ctc_comparison()
    record["anchor"] = ctc_text
    record["details"]["ctc_row_10"] = kept
    record["details"]["note"] = note(record["details"], ctc_text)
    _results.write_results(path, **record)
    print(f"{path}: {ctc_text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _results.add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: torch's; 1 on a busy shared machine)")
    parser.add_argument("--mnist", help="the MNIST test IDX files (default: $RNNKIT_MNIST or "
                                        "../shared/data/mnist-test)")
    parser.add_argument("--figure", help=f"the attention PNG (default: {FIGURE} with "
                                         "--results; beside the results with --tiny)")
    parser.add_argument("--refresh-comparison", metavar="RESULTS_JSON",
                        help="only rewrite the CTC comparison of a results file from row 10's "
                             "current results (after the CTC example has been rerun)")
    args = parser.parse_args(argv)
    if args.refresh_comparison:
        return refresh_comparison(args.refresh_comparison)
    settings = TINY if args.tiny else SETTINGS
    if args.threads:
        torch.set_num_threads(args.threads)
    from rnnkit.data.digit_strings import (
        DigitStrings,
        load_mnist_digits,
        split_digit_pool,
    )

    start = time.perf_counter()
    try:
        images, labels = load_mnist_digits(args.mnist)
    except (FileNotFoundError, OSError) as error:
        print(f"MNIST test digits missing: {error}", file=sys.stderr)
        return 2  # reproduce.MISSING_DATA
    train_pool, test_pool = split_digit_pool(images, labels, held_out=0.2, seed=args.seed)
    train = DigitStrings(train_pool, count=settings["train_strings"], seed=args.seed,
                         **AUGMENTATION)
    test = DigitStrings(test_pool, count=settings["test_strings"], seed=args.seed + 1)
    vocab = vocabulary()

    torch.manual_seed(args.seed)
    model = rnnkit.models.ImageToSequence(
        len(vocab), image_height=28, channels=settings["channels"], pools=(2, 2, 2),
        row_encoder="lstm", row_size=settings["row_size"], embedding_dim=settings["embedding"],
        hidden_size=settings["hidden"], cell="lstm", attention="bahdanau")
    parameters = sum(p.numel() for p in model.parameters())
    loader = torch.utils.data.DataLoader(train, batch_size=settings["batch_size"], shuffle=True,
                                         collate_fn=CaptionCollate(vocab),
                                         generator=torch.Generator().manual_seed(args.seed))
    total_steps = settings["epochs"] * len(loader)
    scheduler = lambda opt: torch.optim.lr_scheduler.OneCycleLR(  # noqa: E731
        opt, max_lr=settings["lr"], total_steps=total_steps)
    trainer = rnnkit.Trainer(model, loss="sequence_cross_entropy", lr=settings["lr"],
                             clip_grad_norm=1.0, scheduler=scheduler, scheduler_interval="step",
                             seed=args.seed, verbose=False)
    wall, cpu = time.perf_counter(), time.process_time()
    history = trainer.fit(loader, epochs=settings["epochs"])
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    losses = [round(float(x), 4) for x in history.history["loss"]]
    print(f"trained {parameters:,} parameters, {total_steps} updates in {train_wall:.0f} s "
          f"wall, {train_cpu:.0f} s CPU; loss per epoch {losses}", flush=True)

    model.eval()
    with torch.no_grad():
        greedy = score(*decode_all(model, test, vocab))
        beam = score(*decode_all(model, test, vocab, beam_width=4))
    print(f"held-out strings: greedy exact {greedy['exact']:.4f}, word accuracy "
          f"{greedy['word_accuracy']:.4f}; beam 4 exact {beam['exact']:.4f}", flush=True)

    figure = Path(args.figure) if args.figure else None
    if figure is None and args.results:  # a tiny run draws beside its results (code tested)
        figure = Path(args.results).with_suffix(".png") if args.tiny else ROOT / FIGURE
    captions = attention_figure(model, test, vocab, figure) if figure else []
    if figure:
        print(f"wrote {figure}: {captions}")

    ctc_text, ctc_details = ctc_comparison()
    details: dict[str, Any] = {
        "greedy": greedy, "beam_4": beam, "parameters": parameters, "updates": total_steps,
        "train_wall_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1),
        "threads": torch.get_num_threads(), "loss_per_epoch": losses,
        "ctc_row_10": ctc_details,
    }
    details["note"] = note(details, ctc_text)
    if figure and not args.tiny:
        details["figure"] = os.path.relpath(figure, ROOT) if figure.is_absolute() else \
            str(figure)
        details["captions_in_figure"] = captions
    met = greedy["exact"] >= 0.97 and train_cpu < 600  # one thread: one core's time
    if args.results:
        _results.write_results(
            args.results, row=11,
            task="MNIST digit strings captioned as words (held-out digits)",
            metric="held-out exact caption accuracy", ours=greedy["exact"], anchor=ctc_text,
            target=">= 97% exact (row 10's bar), trained in < 10 min on 2 cores",
            met=None if args.tiny else met,
            settings=(", ".join(f"{k} {v}" for k, v in {**settings, **AUGMENTATION}.items())
                      + ", pools 2x2 x3, bi-LSTM row encoder, LSTM decoder, Bahdanau "
                        "attention, Adam one-cycle, clip 1, greedy decoding"),
            seeds=[args.seed], wall_s=round(time.perf_counter() - start, 1), details=details)
    print(json.dumps({"exact": greedy["exact"], "word_accuracy": greedy["word_accuracy"],
                      "parameters": parameters}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
