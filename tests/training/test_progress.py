"""ProgressPrinter's table against hand-computed numbers; ProgressBar's bar and plain lines.

The expected rows were worked out by hand from CNTK's rules (ProgressWriter.cpp: write after
minibatch n of the epoch when (n + 1) & n == 0; averages weighted by samples) and printed
with the widths of cntk/logging/progress_print.py.
"""

import io
import re

import pytest
import torch

from rnnkit.training.progress import ProgressBar, ProgressPrinter
from tests.training.fake_trainer import FakeTrainer, regression_batches

SIZES = [2, 4, 4, 2, 2, 2, 2, 4]
LOSSES = [1.0, 0.5, 0.25, 2.0, 1.0, 1.0, 1.0, 0.5]
METRICS = [0.5, 0.25, 0.0, 1.0, 0.5, 0.5, 0.5, 0.0]


class _Stub:
    is_main_process = True
    epochs = 3


def _feed(printer, epoch=0, lr=0.1, metrics=METRICS, seconds=2.0):
    stub = _Stub()
    printer.on_fit_start(stub)
    printer.on_epoch_start(stub, epoch)
    seen = 0
    for i, (size, loss) in enumerate(zip(SIZES, LOSSES, strict=True)):
        seen += size
        logs = {"epoch": epoch, "step": i + 1, "batch": i, "batch_size": size,
                "samples_seen": seen, "loss": loss, "lr": lr}
        if metrics is not None:
            logs["metric"] = metrics[i]
        printer.on_batch_end(stub, logs)
    printer.on_epoch_end(stub, epoch, {"loss": 17 / 22, "seconds": seconds})


def test_geometric_table_matches_hand_computed_rows():
    out = io.StringIO()
    _feed(ProgressPrinter(0, tag="Training", file=out))
    # after minibatch 1: 2 samples, loss 1, metric 0.5
    # after minibatch 3: loss (2*1 + 4*.5 + 4*.25)/10 = 0.5, since last 3/8 = 0.375;
    #                    metric (1 + 1 + 0)/10 = 0.2, since last 1/8 = 0.125; 10 samples
    # after minibatch 7: loss 15/18 = 0.8333, since last 10/8 = 1.25;
    #                    metric 7/18 = 0.3889, since last 5/8 = 0.625; 18 samples
    # epoch: loss 17/22 = 0.772727, metric 7/22 = 31.82 %, 22 samples in 2 s = 11 samples/s
    assert out.getvalue().splitlines() == [
        " average      since    average      since      examples",
        "    loss       last     metric       last              ",
        " ------------------------------------------------------",
        "Learning rate per minibatch: 0.1",
        "        1          1        0.5        0.5             2",
        "      0.5      0.375        0.2      0.125            10",
        "    0.833       1.25      0.389      0.625            18",
        "Finished Epoch[1 of 3]: [Training] loss = 0.772727 * 22, metric = 31.82% * 22 "
        "2.000s ( 11.0 samples/s);",
    ]


def test_geometric_table_without_metric_leaves_columns_blank():
    out = io.StringIO()
    _feed(ProgressPrinter(0, file=out), metrics=None)
    lines = out.getvalue().splitlines()
    assert lines[4] == "        1          1" + " " * 35 + "2"
    assert lines[-1] == "Finished Epoch[1 of 3]: loss = 0.772727 * 22 2.000s ( 11.0 samples/s);"


def test_arithmetic_schedule_with_first():
    out = io.StringIO()
    _feed(ProgressPrinter(freq=2, first=1, metric_is_pct=True, file=out))
    # writes after minibatch 1 (first), 2, 4, 6, 8; each line covers the window since the last
    assert out.getvalue().splitlines()[1:6] == [
        " Minibatch[   1-   1]: loss = 1.000000 * 2, metric = 50.00% * 2;",
        " Minibatch[   2-   2]: loss = 0.500000 * 4, metric = 25.00% * 4;",
        # (4*.25 + 2*2)/6, metric (0 + 2)/6
        " Minibatch[   3-   4]: loss = 0.833333 * 6, metric = 33.33% * 6;",
        " Minibatch[   5-   6]: loss = 1.000000 * 4, metric = 50.00% * 4;",
        # (2*1 + 4*.5)/6, metric (1 + 0)/6
        " Minibatch[   7-   8]: loss = 0.666667 * 6, metric = 16.67% * 6;",
    ]


def test_metric_not_in_percent():
    out = io.StringIO()
    _feed(ProgressPrinter(freq=8, metric_is_pct=False, file=out, num_epochs=5))
    lines = out.getvalue().splitlines()
    assert lines[1] == " Minibatch[   1-   8]: loss = 0.772727 * 22, metric = 0.318182 * 22;"
    assert lines[2].startswith("Finished Epoch[1 of 5]: loss = 0.772727 * 22, "
                               "metric = 0.318182 * 22 ")


def test_counters_restart_each_epoch_and_lr_changes_are_printed():
    out = io.StringIO()
    printer = ProgressPrinter(0, file=out)
    _feed(printer, epoch=0, lr=0.1)
    _feed(printer, epoch=1, lr=0.05)
    lines = out.getvalue().splitlines()
    assert lines.count(" average      since    average      since      examples") == 1
    assert "Learning rate per minibatch: 0.05" in lines
    second = lines[lines.index("Learning rate per minibatch: 0.05") + 1:]
    assert second[0] == "        1          1        0.5        0.5             2"
    assert second[-1].startswith("Finished Epoch[2 of 3]")


def test_state_dict_resumes_mid_epoch_exactly():
    whole = io.StringIO()
    _feed(ProgressPrinter(0, file=whole))
    stub = _Stub()
    first = ProgressPrinter(0, file=io.StringIO())
    first.on_fit_start(stub)
    first.on_epoch_start(stub, 0)
    seen = 0
    for i in range(5):
        seen += SIZES[i]
        first.on_batch_end(stub, {"epoch": 0, "step": i + 1, "batch": i, "batch_size": SIZES[i],
                                  "samples_seen": seen, "loss": LOSSES[i], "lr": 0.1,
                                  "metric": METRICS[i]})
    resumed_out = io.StringIO()
    resumed = ProgressPrinter(0, file=resumed_out)
    resumed.load_state_dict(first.state_dict())
    resumed.on_fit_start(stub)
    resumed.on_epoch_start(stub, 0)
    for i in range(5, 8):
        seen += SIZES[i]
        resumed.on_batch_end(stub, {"epoch": 0, "step": i + 1, "batch": i,
                                    "batch_size": SIZES[i], "samples_seen": seen,
                                    "loss": LOSSES[i], "lr": 0.1, "metric": METRICS[i]})
    resumed.on_epoch_end(stub, 0, {"seconds": 2.0})
    assert resumed_out.getvalue().splitlines() == whole.getvalue().splitlines()[-2:]


def test_log_to_file_and_only_main_process(tmp_path):
    log = tmp_path / "log.txt"
    _feed(ProgressPrinter(0, log_to_file=str(log)))
    assert log.read_text().splitlines()[4] == (
        "        1          1        0.5        0.5             2")
    out = io.StringIO()

    class Worker(_Stub):
        is_main_process = False

    printer = ProgressPrinter(0, file=out)
    printer.on_fit_start(Worker())
    printer.on_batch_end(Worker(), {"batch_size": 2, "loss": 1.0, "lr": 0.1})
    assert out.getvalue() == ""


def test_bad_freq():
    with pytest.raises(ValueError, match="freq=-1"):
        ProgressPrinter(-1)


def test_progress_bar_plain_lines_off_a_terminal():
    out = io.StringIO()
    trainer = FakeTrainer(torch.nn.Linear(3, 1), [ProgressBar(file=out)],
                          val_losses=[0.5, 0.25])
    history = trainer.fit(regression_batches(), epochs=2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    loss = history.history["loss"][1]
    assert re.fullmatch(rf"Epoch 2/2 - \d+\.\d\ds - \d+ samples/s - loss: {loss:.4g} - "
                        r"val_loss: 0\.25 - lr: 0\.1", lines[1]), lines[1]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_draws_a_bar_on_a_terminal():
    out = _Terminal()
    trainer = FakeTrainer(torch.nn.Linear(3, 1), [ProgressBar(file=out)])
    trainer.steps_per_epoch = 4
    trainer.fit(regression_batches(), epochs=2)
    text = out.getvalue()
    assert "Epoch 1/2" in text and "Epoch 2/2" in text
    assert "4/4" in text and "loss=" in text and "samples/s=" in text
