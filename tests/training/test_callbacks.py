"""Callbacks against the hook contract, driven by a minimal fake trainer.

EarlyStopping's cases are ported from Keras' ``keras/src/callbacks/early_stopping_test.py``;
the learning-rate cases compare with torch's schedulers stepped by hand.
"""

import csv
import math
import warnings

import pytest
import torch

from rnnkit.training.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    NaNGuard,
    NonFiniteLossError,
    PlotCurves,
    TensorBoard,
    default_callbacks,
    monitor_direction,
)
from rnnkit.training.checkpoint import load_checkpoint
from rnnkit.training.progress import ProgressBar, ProgressPrinter
from tests.training.fake_trainer import FakeTrainer, regression_batches


class _WeightModel(torch.nn.Module):
    """Keras' DummyModel: one weight set to the epoch number, to see which epoch is restored."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(-1.0))


class _Stub:
    def __init__(self):
        self.model = _WeightModel()
        self.stop_training = False
        self.is_main_process = True


def _run_losses(stopper, losses, key="loss", stub=None, stop_at=None):
    stub = stub or _Stub()
    stopper.on_fit_start(stub)
    trained = 0
    for epoch, loss in enumerate(losses):
        trained += 1
        with torch.no_grad():
            stub.model.w.fill_(epoch)
        stopper.on_epoch_end(stub, epoch, {key: loss})
        if stop_at is not None and epoch == stop_at:
            stub.stop_training = True
        if stub.stop_training:
            break
    stopper.on_fit_end(stub, None)
    return stub, trained


# --- EarlyStopping (Keras' tests) ---

@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_early_stopping_patience(patience):
    losses = [10.0, 9.0, 8.0, 9.0, 8.9, 8.8, 8.7, 8.6, 8.5]
    stopper = EarlyStopping(monitor="loss", patience=patience)
    _run_losses(stopper, losses)
    assert stopper.stopped_epoch == max(patience, 1) + 2


def test_early_stopping_restores_best_weights():
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    stub, _ = _run_losses(stopper, [0.2, 0.15, 0.1, 0.11, 0.12], key="val_loss")
    assert stub.model.w.item() == 2.0


def test_early_stopping_baseline_never_beaten_stops_after_patience():
    stopper = EarlyStopping(monitor="val_loss", patience=5, baseline=0.5,
                            restore_best_weights=True)
    stub, trained = _run_losses(stopper, [0.9, 0.8, 0.7, 0.71, 0.72, 0.73], key="val_loss")
    assert trained == 5
    assert stub.model.w.item() == 2.0


def test_early_stopping_restores_when_another_callback_stops():
    stopper = EarlyStopping(monitor="val_loss", patience=5, baseline=0.5,
                            restore_best_weights=True)
    stub, trained = _run_losses(stopper, [0.9, 0.8, 0.7, 0.71, 0.72, 0.73], key="val_loss",
                                stop_at=3)
    assert trained == 4
    assert stub.model.w.item() == 2.0


def test_early_stopping_min_delta_counts_small_gains_as_none():
    # 1.0 -> 0.95 is an improvement of 0.05 < min_delta 0.1: no improvement, stop at epoch 1
    stopper = EarlyStopping(monitor="loss", min_delta=-0.1, patience=1)   # abs() as Keras
    _run_losses(stopper, [1.0, 0.95, 0.5])
    assert stopper.stopped_epoch == 1
    stopper = EarlyStopping(monitor="accuracy", min_delta=0.1, patience=1)
    _run_losses(stopper, [0.5, 0.7, 0.75, 0.78], key="accuracy")
    assert stopper.stopped_epoch == 2 and stopper.best == 0.7


def test_early_stopping_start_from_epoch_is_a_warm_up():
    stopper = EarlyStopping(monitor="loss", patience=0, start_from_epoch=3)
    _, trained = _run_losses(stopper, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert trained == 5 and stopper.stopped_epoch == 4


@pytest.mark.parametrize("mode,monitor,expected", [
    ("max", "val_mse", "max"), ("min", "val_loss", "min"), ("auto", "val_mse", "min"),
    ("auto", "loss", "min"), ("auto", "acc", "max"), ("auto", "val_accuracy", "max"),
    ("auto", "f1", "max"), ("auto", "val_perplexity", "min"), ("auto", "bpc", "min"),
])
def test_monitor_direction(mode, monitor, expected):
    assert monitor_direction(monitor, mode) == expected
    assert EarlyStopping(monitor=monitor, mode=mode).mode == expected


def test_unknown_direction_and_bad_arguments_are_named():
    with pytest.raises(ValueError, match="monitor='unknown'.*mode='max'"):
        EarlyStopping(monitor="unknown")
    with pytest.raises(ValueError, match="mode='maximum'"):
        EarlyStopping(mode="maximum")
    with pytest.raises(ValueError, match="patience=-1"):
        EarlyStopping(patience=-1)


def test_missing_monitor_warns_with_available_keys():
    stopper = EarlyStopping(monitor="val_loss")
    with pytest.warns(UserWarning, match="'val_loss', which is not in the logs; available: loss"):
        _run_losses(stopper, [1.0, 2.0])
    assert stopper.stopped_epoch == 0


def test_early_stopping_resumes_exactly():
    losses = [1.0, 0.8, 0.85, 0.7, 0.75, 0.76, 0.77, 0.78]
    whole = EarlyStopping(monitor="loss", patience=2, restore_best_weights=True)
    stub_whole, trained_whole = _run_losses(whole, losses)

    first = EarlyStopping(monitor="loss", patience=2, restore_best_weights=True)
    stub = _Stub()
    first.on_fit_start(stub)
    for epoch in range(5):
        with torch.no_grad():
            stub.model.w.fill_(epoch)
        first.on_epoch_end(stub, epoch, {"loss": losses[epoch]})
    state = first.state_dict()
    resumed = EarlyStopping(monitor="loss", patience=2, restore_best_weights=True)
    resumed.load_state_dict(state)
    resumed.on_fit_start(stub)
    for epoch in range(5, len(losses)):
        with torch.no_grad():
            stub.model.w.fill_(epoch)
        resumed.on_epoch_end(stub, epoch, {"loss": losses[epoch]})
        if stub.stop_training:
            break
    resumed.on_fit_end(stub, None)
    assert resumed.stopped_epoch == whole.stopped_epoch == 5
    assert stub.model.w.item() == stub_whole.model.w.item() == 3.0
    assert trained_whole == 6
    # loaded after on_fit_start (what rnnkit.Trainer does) works the same
    late = EarlyStopping(monitor="loss", patience=2)
    late.on_fit_start(stub)
    late.load_state_dict(first.state_dict())
    assert late.wait == first.wait and late.best == first.best
    # and the next fit starts afresh
    late.on_fit_end(stub, None)
    late.on_fit_start(stub)
    assert late.wait == 0 and late.best is None


def test_early_stopping_in_a_training_loop():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    stopper = EarlyStopping(monitor="val_loss", patience=1)
    trainer = FakeTrainer(model, [stopper], val_losses=[1.0, 0.5, 0.6, 0.7, 0.2, 0.1])
    history = trainer.fit(regression_batches(), epochs=6)
    assert history.epochs == [0, 1, 2]


# --- LearningRateScheduler ---

def _lrs(trainer):
    return trainer.optimizer.param_groups[0]["lr"]


def test_scheduler_per_epoch_matches_torch():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    seen = []

    class Record(Callback):
        def on_epoch_start(self, trainer, epoch):
            seen.append(_lrs(trainer))

    cb = LearningRateScheduler(lambda opt: torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5))
    FakeTrainer(model, [cb, Record()], lr=0.1).fit(regression_batches(), epochs=6)
    # the oracle: StepLR's closed form lr0 * gamma ** (epoch // step_size)
    assert seen == pytest.approx([0.1 * 0.5 ** (e // 2) for e in range(6)])


def test_scheduler_per_step_and_instance():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    trainer = FakeTrainer(model, [], lr=0.1)
    sched = torch.optim.lr_scheduler.ExponentialLR(trainer.optimizer, gamma=0.9)
    cb = LearningRateScheduler(sched, interval="step")
    trainer.callbacks = [cb]
    trainer.fit(regression_batches(n_batches=4), epochs=2)
    assert _lrs(trainer) == pytest.approx(0.1 * 0.9 ** 8)


def test_reduce_on_plateau_uses_the_monitored_value():
    model = torch.nn.Linear(3, 1)
    cb = LearningRateScheduler(
        lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=0),
        monitor="val_loss")
    trainer = FakeTrainer(model, [cb], lr=1.0, val_losses=[1.0, 0.5, 0.6, 0.4, 0.45])
    trainer.fit(regression_batches(), epochs=5)
    # val_loss rises at epochs 2 and 4 (patience 0): two reductions
    assert _lrs(trainer) == pytest.approx(0.01)


def test_keras_schedule_function():
    model = torch.nn.Linear(3, 1)
    cb = LearningRateScheduler(schedule=lambda epoch, lr: lr if epoch < 2 else lr * 0.5)
    trainer = FakeTrainer(model, [cb], lr=0.2)
    trainer.fit(regression_batches(), epochs=4)
    assert _lrs(trainer) == pytest.approx(0.05)


def test_scheduler_resumes_exactly():
    def factory(opt):
        return torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)

    trainer = FakeTrainer(torch.nn.Linear(3, 1), [cb := LearningRateScheduler(factory)], lr=1.0)
    trainer.fit(regression_batches(), epochs=3)
    state = cb.state_dict()
    resumed_cb = LearningRateScheduler(factory)
    resumed_cb.load_state_dict(state)
    resumed = FakeTrainer(torch.nn.Linear(3, 1), [resumed_cb], lr=1.0)
    resumed.optimizer.load_state_dict(trainer.optimizer.state_dict())   # as the trainer does
    resumed.fit(regression_batches(), epochs=5, start_epoch=3)
    assert _lrs(resumed) == pytest.approx(0.5 ** 5)


def test_scheduler_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        LearningRateScheduler()
    with pytest.raises(ValueError, match="interval='batch'"):
        LearningRateScheduler(lambda o: None, interval="batch")
    other = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    cb = LearningRateScheduler(torch.optim.lr_scheduler.StepLR(other, 1))
    with pytest.raises(ValueError, match="another optimizer"):
        FakeTrainer(torch.nn.Linear(3, 1), [cb]).fit(regression_batches(), epochs=1)


# --- Checkpoint ---

def test_checkpoint_every_n_steps_and_keep_last(tmp_path):
    cb = ModelCheckpoint(every_n_steps=3, every_epoch=False, keep_last=2)
    trainer = FakeTrainer(torch.nn.Linear(3, 1), [cb], run_dir=tmp_path)
    trainer.fit(regression_batches(n_batches=4), epochs=3)   # steps 1..12
    assert [p.name for p in trainer.saved] == [f"step-{s:09d}" for s in (3, 6, 9, 12)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000009", "step-000000012"]


def test_checkpoint_best_only(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_best_only=True)
    trainer = FakeTrainer(torch.nn.Linear(3, 1), [cb], run_dir=tmp_path,
                          val_losses=[1.0, 0.5, 0.7, 0.4])
    trainer.fit(regression_batches(n_batches=2), epochs=4)
    assert [p.name for p in trainer.saved] == ["step-000000002", "step-000000004",
                                               "step-000000008"]


def test_checkpoint_never_saves_non_finite_weights(tmp_path):
    model = torch.nn.Linear(3, 1)
    cb = ModelCheckpoint()
    trainer = FakeTrainer(model, [cb], run_dir=tmp_path)
    with torch.no_grad():
        model.bias.fill_(math.inf)
    with pytest.warns(UserWarning, match="not finite"):
        cb.on_epoch_end(trainer, 0, {"loss": 1.0})
    assert trainer.saved == []


# --- NaNGuard ---

def test_nan_guard_names_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    # planted Inf loss at global step 6 = epoch 2, minibatch 2 (4 minibatches per epoch)
    trainer = FakeTrainer(model, [NaNGuard(), ModelCheckpoint()], run_dir=tmp_path,
                          planted={6: math.inf})
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(regression_batches(n_batches=4), epochs=3)
    message = str(info.value)
    assert "loss is inf" in message and "epoch 2, step 6 (minibatch 2 of the epoch)" in message
    assert "step-000000004" in message
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000004"]
    good = load_checkpoint(tmp_path, model=torch.nn.Linear(3, 1))
    assert good.path.name == "step-000000004"
    assert all(torch.isfinite(p).all() for p in good.model.parameters())


def test_nan_guard_checks_gradients():
    model = torch.nn.Linear(3, 1)
    trainer = FakeTrainer(model, [])
    model.weight.grad = torch.tensor([[0.0, math.nan, 0.0]])
    with pytest.raises(NonFiniteLossError, match="gradient of weight.*no checkpoint"):
        NaNGuard().on_batch_end(trainer, {"epoch": 0, "step": 1, "batch": 1, "loss": 0.5})
    NaNGuard(check_gradients=False).on_batch_end(
        trainer, {"epoch": 0, "step": 1, "batch": 1, "loss": 0.5})


# --- CSVLogger ---

def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_rows_and_late_columns(tmp_path):
    trainer = FakeTrainer(torch.nn.Linear(3, 1), [], run_dir=tmp_path)
    cb = CSVLogger()
    cb.on_epoch_end(trainer, 0, {"epoch": 0, "loss": 1.5, "lr": 0.1})
    cb.on_epoch_end(trainer, 1, {"epoch": 1, "loss": 1.25, "val_loss": 2.0, "lr": 0.1,
                                 "confusion_matrix": [[1, 0], [0, 1]]})
    rows = _read_csv(tmp_path / "history.csv")
    assert rows == [
        {"epoch": "0", "loss": "1.5", "lr": "0.1", "val_loss": "", "confusion_matrix": ""},
        {"epoch": "1", "loss": "1.25", "lr": "0.1", "val_loss": "2.0",
         "confusion_matrix": "[[1, 0], [0, 1]]"}]
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]   # no temp files left


def test_csv_logger_resume_replaces_rows_instead_of_duplicating(tmp_path):
    trainer = FakeTrainer(torch.nn.Linear(3, 1), [], run_dir=tmp_path)
    killed = CSVLogger()
    for epoch in range(3):
        killed.on_epoch_end(trainer, epoch, {"loss": 10.0 - epoch})
    resumed = CSVLogger()      # the checkpoint was from epoch 1: epochs 1, 2 run again
    for epoch in (1, 2, 3):
        resumed.on_epoch_end(trainer, epoch, {"loss": 5.0 - epoch})
    rows = _read_csv(tmp_path / "history.csv")
    assert [(r["epoch"], r["loss"]) for r in rows] == [
        ("0", "10.0"), ("1", "4.0"), ("2", "3.0"), ("3", "2.0")]
    fresh = CSVLogger(append=False)
    fresh.on_epoch_end(trainer, 0, {"loss": 7.0})
    assert len(_read_csv(tmp_path / "history.csv")) == 1


def test_csv_logger_writes_only_on_main_process_and_with_a_directory(tmp_path):
    CSVLogger().on_epoch_end(FakeTrainer(torch.nn.Linear(3, 1), [], run_dir=tmp_path,
                                         is_main_process=False), 0, {"loss": 1.0})
    CSVLogger().on_epoch_end(FakeTrainer(torch.nn.Linear(3, 1), []), 0, {"loss": 1.0})
    assert list(tmp_path.iterdir()) == []


# --- TensorBoard ---

def test_tensorboard_writes_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = FakeTrainer(torch.nn.Linear(3, 1), [TensorBoard(update_freq=2)],
                          run_dir=tmp_path)
    trainer.fit(regression_batches(n_batches=4), epochs=2)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("batch/loss")] == [2, 4, 6, 8]
    epoch_loss = [e.value for e in events.Scalars("epoch/loss")]
    assert epoch_loss == pytest.approx(trainer.history.history["loss"], rel=1e-6)


def test_tensorboard_needs_a_directory():
    with pytest.raises(ValueError, match="log_dir"):
        TensorBoard().on_fit_start(FakeTrainer(torch.nn.Linear(3, 1), []))


# --- PlotCurves ---

def test_plot_curves_png(tmp_path):
    from matplotlib.image import imread

    cb = PlotCurves()
    trainer = FakeTrainer(torch.nn.Linear(3, 1), [cb], run_dir=tmp_path,
                          val_losses=[1.0, 0.8, 0.7])
    trainer.fit(regression_batches(), epochs=3)
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(png).shape[:2] == (360, 500)    # one panel: 5.0 x 3.6 in at 100 dpi
    assert cb.quantities() == ["loss"]
    assert [r["val_loss"] for r in cb.records] == [1.0, 0.8, 0.7]
    cb.on_epoch_end(trainer, 3, {"loss": 0.5, "accuracy": 0.9, "val_accuracy": 0.8})
    assert cb.quantities() == ["loss", "accuracy"]
    assert imread(png).shape[:2] == (360, 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]


def test_plot_curves_resume_drops_epochs_trained_again():
    cb = PlotCurves()
    trainer = FakeTrainer(torch.nn.Linear(3, 1), [])
    for epoch in range(3):
        cb.on_epoch_end(trainer, epoch, {"loss": float(epoch)})
    other = PlotCurves()
    other.load_state_dict(cb.state_dict())
    other.on_epoch_end(trainer, 1, {"loss": 9.0})
    assert [(r["epoch"], r["loss"]) for r in other.records] == [(1.0, 0.0), (2.0, 9.0)]


# --- defaults ---

def test_default_callbacks(tmp_path):
    made = default_callbacks(None, run_dir=tmp_path)
    assert [type(c) for c in made] == [CSVLogger, ProgressBar]
    printer = ProgressPrinter(0)
    assert default_callbacks([printer], run_dir=None) == [printer]
    assert default_callbacks([], progress=False) == []
    with pytest.raises(TypeError, match="int is not an rnnkit.training.Callback"):
        default_callbacks([3])

    class Duck:       # all five hooks, no base class: accepted
        def on_fit_start(self, trainer): ...
        def on_epoch_start(self, trainer, epoch): ...
        def on_batch_end(self, trainer, logs): ...
        def on_epoch_end(self, trainer, epoch, logs): ...
        def on_fit_end(self, trainer, history): ...

    duck = Duck()
    assert default_callbacks([duck], progress=False) == [duck]


def test_callback_states_are_weights_only_safe(tmp_path):
    callbacks = [EarlyStopping(monitor="loss", restore_best_weights=True), CSVLogger(),
                 PlotCurves(), ModelCheckpoint(), ProgressPrinter(0),
                 LearningRateScheduler(lambda o: torch.optim.lr_scheduler.StepLR(o, 1))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = FakeTrainer(torch.nn.Linear(3, 1), callbacks, run_dir=tmp_path)
        trainer.fit(regression_batches(), epochs=2)
    states = [cb.state_dict() for cb in callbacks]
    torch.save(states, tmp_path / "states.pt")
    loaded = torch.load(tmp_path / "states.pt", weights_only=True)
    for cb, state in zip(callbacks, loaded, strict=True):
        cb.load_state_dict(state)
