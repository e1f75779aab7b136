"""The trainer: what it fits, the loop it runs (against a hand-written loop), its errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import rnnkit
from rnnkit.data import PadCollate
from rnnkit.training import History, NonFiniteError, Trainer
from tests.helpers import assert_doctests_pass


class Regressor(nn.Module):
    """A recurrent layer and a linear head: per-sample ``(B, D)`` or per-step ``(B, T, D)``."""

    def __init__(self, layer="lstm", inputs=1, hidden=16, outputs=1, per_step=False):
        super().__init__()
        kind = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU}[layer]
        self.rnn = kind(inputs, hidden, batch_first=True)
        self.head = nn.Linear(hidden, outputs)
        self.per_step = per_step

    def forward(self, x, lengths=None):  # x: (B, T, F)
        y, state = self.rnn(x, lengths=lengths)  # y: (B, T, H)
        h = state[0] if isinstance(state, tuple) else state  # (1, B, H) at each last step
        return self.head(y) if self.per_step else self.head(h[-1])


def sine_windows(n=96, steps=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    t = torch.arange(steps + 1) * 0.4
    wave = torch.sin(t + phase)  # (N, T + 1)
    return wave[:, :-1, None], wave[:, -1:]  # (N, T, 1), (N, 1)


def test_lstm_fits_the_next_step_of_a_sine_wave():
    x, y = sine_windows()
    torch.manual_seed(0)
    model = Regressor("lstm")
    baseline = F.mse_loss(torch.zeros_like(y), y).item()  # about 0.5
    trainer = Trainer(model, loss="mse", lr=2e-2, verbose=False)
    history = trainer.fit((x, y), epochs=15, batch_size=16)
    val_x, val_y = sine_windows(seed=1)
    result = trainer.evaluate((val_x, val_y))
    assert history.history["loss"][-1] < history.history["loss"][0]
    # stated: below 1e-3 on unseen phases (measured 7.5e-5; predicting 0 gives about 0.5)
    assert result["loss"] < 1e-3 < baseline / 100


def mnist1d_like(n, classes=10, steps=24, seed=0):
    """Sequences in the spirit of MNIST-1D: one smooth template per class, shifted by up to
    2 steps, scaled and noisy."""
    g = torch.Generator().manual_seed(1234)
    grid = torch.linspace(0, 1, steps)
    freq = torch.randint(1, 4, (classes, 1), generator=g).float()
    templates = torch.sin(2 * math.pi * freq * grid + torch.rand(classes, 1, generator=g) * 6)
    templates = templates + torch.randn(classes, steps, generator=g) * 0.3
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    shifts = torch.randint(-2, 3, (n,), generator=g)
    x = torch.stack([torch.roll(templates[c], int(s)) for c, s in zip(labels, shifts, strict=True)])
    x = x * (0.8 + 0.4 * torch.rand(n, 1, generator=g)) + 0.15 * torch.randn(n, steps,
                                                                             generator=g)
    return x[..., None], labels  # (N, T, 1), (N,)


def test_gru_classifier_beats_chance_by_a_wide_margin():
    x, y = mnist1d_like(600)
    test_x, test_y = mnist1d_like(300, seed=1)
    torch.manual_seed(0)
    model = Regressor("gru", hidden=32, outputs=10)
    trainer = Trainer(model, loss="cross_entropy", lr=1e-2, verbose=False)
    trainer.fit((x, y), epochs=12, batch_size=32)
    predicted = trainer.predict(test_x).argmax(-1)
    accuracy = (predicted == test_y).float().mean().item()
    assert accuracy > 0.6  # chance is 0.1


def test_training_equals_a_hand_written_loop():
    x, y = sine_windows(n=20)
    torch.manual_seed(1)
    model = Regressor("gru", hidden=4)
    twin = Regressor("gru", hidden=4)
    twin.load_state_dict(model.state_dict())
    trainer = Trainer(model, loss="mse", optimizer="sgd", lr=0.1, clip_grad_norm=0.5,
                      verbose=False)
    trainer.fit((x, y), epochs=2, batch_size=8, shuffle=False)
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    for _ in range(2):
        for i in range(0, 20, 8):
            opt.zero_grad()
            F.mse_loss(twin(x[i:i + 8]), y[i:i + 8]).backward()
            torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert trainer.global_step == 6 and trainer.epoch == 2


def test_padding_never_counts():
    g = torch.Generator().manual_seed(2)
    lengths = [5, 2, 4, 3, 1, 5]
    seqs = [(torch.randn(n, 1, generator=g), torch.randn(n, 2, generator=g)) for n in lengths]
    torch.manual_seed(0)
    model = Regressor("gru", hidden=4, outputs=2, per_step=True)
    trainer = Trainer(model, loss="mse", verbose=False)
    loader = DataLoader(seqs, batch_size=4, collate_fn=PadCollate(batch_first=True,
                                                                  target_padding_value=99.0))
    got = trainer.evaluate(loader)["loss"]
    with torch.no_grad():  # oracle: each sequence alone, no padding anywhere
        squared = [F.mse_loss(model(x[None])[0], y, reduction="sum") for x, y in seqs]
    assert got == pytest.approx(float(sum(squared)) / (2 * sum(lengths)), rel=1e-5)
    per_sample = Regressor("gru", hidden=4, outputs=2)
    per_sample.load_state_dict(model.state_dict())
    lasts = [(x, y[-1]) for x, y in seqs]  # per-sample target: the last step's
    loader = DataLoader(lasts, batch_size=4, collate_fn=PadCollate(batch_first=True))
    got = Trainer(per_sample, loss="mse", verbose=False).evaluate(loader)["loss"]
    with torch.no_grad():
        oracle = sum(F.mse_loss(per_sample(x[None])[0], y, reduction="sum") for x, y in lasts)
    assert got == pytest.approx(float(oracle) / (2 * len(lengths)), rel=1e-5)


def test_the_epoch_loss_is_the_exact_mean_over_unequal_batches():
    x, y = sine_windows(n=10)
    model = Regressor("gru", hidden=4)
    trainer = Trainer(model, loss="mse", optimizer="sgd", lr=1e-12, verbose=False)  # ~frozen
    history = trainer.fit((x, y), epochs=1, batch_size=4, shuffle=False)
    with torch.no_grad():
        oracle = F.mse_loss(model(x), y).item()
    assert history.history["loss"][0] == pytest.approx(oracle, rel=1e-5)


def test_nonfinite_input_is_named_and_not_applied():
    x, y = sine_windows(n=12)
    x[9, 3, 0] = float("nan")  # batch 3 of 4 samples
    model = Regressor("gru", hidden=4)
    trainer = Trainer(model, loss="mse", verbose=False)
    with pytest.raises(NonFiniteError, match=r"epoch 1/2, batch 3 .*input 0 holds nan") as info:
        trainer.fit((x, y), epochs=2, batch_size=4, shuffle=False)
    assert info.value.batch == 3 and info.value.step == 2 and info.value.where == "input 0"


def test_nonfinite_loss_stops_before_the_update():
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.w * x.sum(1) * float("inf")

    model = Exploding()
    trainer = Trainer(model, loss="mse", verbose=False)
    with pytest.raises(NonFiniteError, match="epoch 1/1, batch 1 .*the loss is inf"):
        trainer.fit((torch.ones(4, 3, 1), torch.zeros(4, 1)), epochs=1)
    assert model.w.item() == 1.0 and trainer.global_step == 0


def test_scheduler_callbacks_and_history():
    x, y = sine_windows(n=8)
    calls = []

    class Spy:
        def on_fit_start(self, trainer):
            calls.append("fit_start")

        def on_epoch_start(self, trainer, epoch):
            calls.append(f"epoch_start {epoch}")

        def on_batch_end(self, trainer, logs):
            calls.append(f"batch {logs['epoch']} {logs['batch']} {logs['step']} "
                         f"{logs['samples_seen']}")
            assert set(logs) == {"epoch", "step", "batch", "batch_size", "samples_seen",
                                 "loss", "lr"}

        def on_epoch_end(self, trainer, epoch, logs):
            calls.append(f"epoch_end {epoch}")
            assert {"loss", "val_loss", "lr", "seconds", "samples_per_s"} <= set(logs)
            if epoch == 2:
                trainer.stop_training = True

        def on_fit_end(self, trainer, history):
            calls.append("fit_end")

    trainer = Trainer(Regressor("gru", hidden=4), lr=0.1,
                      scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5),
                      callbacks=[Spy()], verbose=False)
    history = trainer.fit((x, y), validation=(x, y), epochs=5, batch_size=4)
    assert isinstance(history, History) and history.epochs == [0, 1, 2]
    # the rate each epoch trained with (logged before the scheduler steps, as Keras does)
    assert history.history["lr"] == pytest.approx([0.1, 0.05, 0.025])
    assert calls[:4] == ["fit_start", "epoch_start 0", "batch 0 1 1 4", "batch 0 2 2 8"]
    assert calls[-2:] == ["epoch_end 2", "fit_end"]
    assert len(history.history["val_loss"]) == 3
    # a second fit goes on from epoch 3
    trainer.callbacks = []
    history = trainer.fit((x, y), epochs=1, batch_size=4)
    assert history.epochs == [0, 1, 2, 3]


def test_plateau_scheduler_steps_on_the_validation_loss():
    x, y = sine_windows(n=8)
    trainer = Trainer(Regressor("gru", hidden=4), optimizer="sgd", lr=1e-12,
                      scheduler=lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
                          o, patience=0, factor=0.5, threshold=0.5), verbose=False)
    history = trainer.fit((x, y), validation=(x, y), epochs=3)
    assert history.history["lr"] == pytest.approx([1e-12, 1e-12, 5e-13])


def test_bf16_runs_under_autocast_close_to_fp32():
    x, y = sine_windows(n=16)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 1))
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    full = Trainer(model, verbose=False).evaluate((x, y))["loss"]
    half = Trainer(model, precision="bf16", verbose=False).evaluate((x, y))["loss"]
    assert seen == [torch.float32, torch.bfloat16]
    assert half == pytest.approx(full, rel=5e-2) and half != full
    trainer = Trainer(model, precision="bf16", lr=1e-2, verbose=False)
    history = trainer.fit((x, y), epochs=5)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_the_seed_makes_runs_repeat():
    x, y = mnist1d_like(64)

    def run():
        torch.manual_seed(5)
        model = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(24, 10))
        Trainer(model, loss="cross_entropy", seed=3, verbose=False).fit((x, y), epochs=2,
                                                                         batch_size=8)
        return torch.cat([p.flatten() for p in model.parameters()])

    assert torch.equal(run(), run())


def test_predict_pads_sequence_outputs_and_takes_bare_inputs():
    model = Regressor("gru", hidden=4, outputs=3, per_step=True)
    seqs = [(torch.randn(n, 1), torch.tensor(0)) for n in (2, 5, 3)]
    loader = DataLoader(seqs, batch_size=2, collate_fn=PadCollate(batch_first=True))
    out = Trainer(model, verbose=False).predict(loader)
    assert out.shape == (3, 5, 3)
    assert torch.equal(out[2, 3:], torch.zeros(2, 3))  # the second batch held T = 3
    assert Trainer(model, verbose=False).predict(torch.randn(7, 4, 1), batch_size=3).shape == (
        7, 4, 3)


def test_bad_arguments_are_named():
    model = Regressor()
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'"):
        Trainer(model, optimizer="adamm")
    with pytest.raises(ValueError, match="precision"):
        Trainer(model, precision="fp8")
    with pytest.raises(ValueError, match="tbptt"):
        Trainer(model, tbptt=0)
    with pytest.raises(TypeError, match="nn.Module"):
        Trainer(lambda x: x)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(5, 1))
    seqs = [(torch.randn(n, 1), torch.zeros(1)) for n in (5, 2)]
    loader = DataLoader(seqs, batch_size=2, collate_fn=PadCollate(batch_first=True))
    with pytest.raises(TypeError, match="takes no lengths= argument"):
        Trainer(plain, verbose=False).fit(loader, epochs=1)
    with pytest.raises(TypeError, match="takes no state= argument"):
        Trainer(plain, tbptt=2, verbose=False).fit(loader, epochs=1)
    with pytest.raises(ValueError, match="holds no"):
        Trainer(plain, verbose=False).fit(DataLoader([], batch_size=2), epochs=1)


def test_optimizer_instances_and_factories():
    model = Regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    assert Trainer(model, optimizer=opt).optimizer is opt
    built = Trainer(model, optimizer=lambda p: torch.optim.RMSprop(p, lr=0.2)).optimizer
    assert isinstance(built, torch.optim.RMSprop) and built.param_groups[0]["lr"] == 0.2
    assert isinstance(Trainer(model, optimizer="rmsprop").optimizer, torch.optim.RMSprop)


def test_docs_trainer_section_runs_and_prints_what_it_says(capsys):
    """docs/training.md "Trainer": each example prints its "prints" block."""
    text = (Path(__file__).parents[2] / "docs" / "training.md").read_text(encoding="utf-8")
    section = text.split("\n## Trainer\n", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"```python\n(.*?)```\n\nprints\n\n```\n(.*?)```", section,
                          flags=re.S)
    assert len(examples) == 3
    for index, (code, expected) in enumerate(examples):
        exec(compile(code, f"docs/training.md trainer example {index}", "exec"), {})  # noqa: S102
        assert capsys.readouterr().out == expected, f"example {index}"


def test_doctests():
    assert_doctests_pass("rnnkit.training.trainer")


def test_metrics_see_what_the_loss_sees_and_never_padding():
    pytest.importorskip("torchmetrics")
    g = torch.Generator().manual_seed(7)
    lengths = [5, 2, 4, 3]
    seqs = [(torch.randn(n, 1, generator=g), torch.randint(0, 3, (n,), generator=g))
            for n in lengths]
    torch.manual_seed(0)
    model = Regressor("gru", hidden=4, outputs=3, per_step=True)
    loader = DataLoader(seqs, batch_size=3, collate_fn=PadCollate(batch_first=True,
                                                                  target_padding_value=0))
    trainer = Trainer(model, loss="sequence_cross_entropy", metrics=["accuracy"],
                      verbose=False)
    result = trainer.evaluate(loader)
    with torch.no_grad():  # oracle: each tagged sequence alone
        hits = sum(int((model(x[None])[0].argmax(-1) == y).sum()) for x, y in seqs)
    assert result["accuracy"] == pytest.approx(hits / sum(lengths))
    history = trainer.fit(loader, validation=loader, epochs=2)
    assert len(history.history["accuracy"]) == 2 and len(history.history["val_accuracy"]) == 2
    # per-sample labels on sequence outputs: the last valid step, as the loss
    classifier = Regressor("gru", hidden=4, outputs=3)
    labelled = [(x, y[-1]) for x, y in seqs]
    loader = DataLoader(labelled, batch_size=3, collate_fn=PadCollate(batch_first=True))
    result = Trainer(classifier, loss="cross_entropy", metrics=["accuracy"],
                     verbose=False).evaluate(loader)
    with torch.no_grad():
        hits = sum(int(classifier(x[None])[0].argmax(-1) == y) for x, y in labelled)
    assert result["accuracy"] == pytest.approx(hits / len(labelled))


def test_epoch_size_counts_samples_across_passes():
    x, y = sine_windows(n=10)
    seen = []

    class Spy:
        def on_fit_start(self, trainer):
            pass

        def on_epoch_start(self, trainer, epoch):
            pass

        def on_batch_end(self, trainer, logs):
            seen.append((logs["epoch"], logs["batch_size"]))

        def on_epoch_end(self, trainer, epoch, logs):
            pass

        def on_fit_end(self, trainer, history):
            pass

    trainer = Trainer(Regressor("gru", hidden=4), callbacks=[Spy()], verbose=False)
    trainer.fit((x, y), epochs=3, epoch_size=6, batch_size=4, shuffle=False)
    # pass 0 gives 4, 4, 2; pass 1 goes on inside epoch 1
    assert seen == [(0, 4), (0, 4), (1, 2), (1, 4), (2, 4), (2, 2)]


def test_the_default_progress_bar_prints_a_line_per_epoch(capsys):
    x, y = sine_windows(n=8)
    Trainer(Regressor("gru", hidden=4)).fit((x, y), epochs=2, batch_size=4)
    out = capsys.readouterr().out  # not a terminal: plain lines
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and "loss: " in out


class Crash(rnnkit.training.Callback):
    """Raises at a given update: a crash inside fit, after the checkpoints before it."""

    def __init__(self, at=None):
        self.at = at

    def on_batch_end(self, trainer, logs):
        if logs["step"] == self.at:
            raise KeyboardInterrupt("crash")


def test_early_stopping_resumes_with_its_counters(tmp_path):
    x, y = sine_windows(n=16)

    def run(crash_at=None, resume=False):
        torch.manual_seed(0)
        stop = rnnkit.training.EarlyStopping(monitor="loss", patience=1, min_delta=10.0)
        trainer = Trainer(Regressor("gru", hidden=4), callbacks=[stop, Crash(crash_at)],
                          verbose=False)
        trainer.fit((x, y), epochs=6, batch_size=4, checkpoint_dir=tmp_path / "run",
                    checkpoint_every=1, resume=resume)
        return trainer

    # no epoch beats the first by min_delta: patience 1 stops after epoch 1
    with pytest.raises(KeyboardInterrupt):
        run(crash_at=6)  # in epoch 1 (4 updates per epoch)
    resumed = run(resume=True)
    assert resumed.history.epochs == [0, 1] and resumed.global_step == 8
    assert resumed.callbacks[0].stopped_epoch == 1


def test_a_model_checkpoint_callback_decides_when_to_save(tmp_path):
    x, y = sine_windows(n=16)
    saver = rnnkit.training.ModelCheckpoint(every_n_steps=3, every_epoch=False)
    Trainer(Regressor("gru", hidden=4), callbacks=[saver], verbose=False).fit(
        (x, y), epochs=2, batch_size=4, checkpoint_dir=tmp_path, keep_last=None)
    steps = sorted(int(p.name.split("-")[1]) for p in rnnkit.training.list_checkpoints(tmp_path))
    assert steps == [3, 6]  # not the epoch ends (4, 8)
