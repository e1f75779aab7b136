"""ExponentialMovingAverage against torch.optim.swa_utils.AveragedModel (EMA, buffers too)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from rnnkit.training import Callback, ExponentialMovingAverage, Trainer


class Net(torch.nn.Module):
    """A conv with batch norm (running statistics: averaged buffers; an integer counter)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(2, 3, 3, padding=1)
        self.norm = torch.nn.BatchNorm1d(3)
        self.out = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 2, T)
        return self.out(torch.relu(self.norm(self.conv(x))).mean(-1))  # (B, 1)


class Oracle(Callback):
    """torch's AveragedModel updated after every update the trainer makes."""

    def __init__(self, model: torch.nn.Module, decay: float, start: int) -> None:
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                      use_buffers=True)
        self.start = start

    def on_batch_end(self, trainer, logs) -> None:  # noqa: ANN001
        if trainer.global_step > self.start:
            self.averaged.update_parameters(trainer.model)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(40, 2, 5, generator=generator), torch.randn(40, 1, generator=generator)


@pytest.mark.parametrize("decay, start", [(0.9, 0), (0.5, 3), (0.0, 0)])
def test_equals_averaged_model_update_by_update(decay: float, start: int) -> None:
    torch.manual_seed(0)
    model = Net()
    oracle = Oracle(model, decay, start)
    ema = ExponentialMovingAverage(decay, start=start, overwrite_at_end=False)
    last = copy.deepcopy(model)

    class Compare(Callback):
        def on_batch_end(self, trainer, logs) -> None:  # noqa: ANN001
            if trainer.global_step <= start:
                assert ema.updates == 0
                return
            want = oracle.averaged.module.state_dict()
            for name, tensor in ema.average.items():
                if tensor.is_floating_point():
                    torch.testing.assert_close(tensor, want[name], rtol=1e-6, atol=1e-7)
            assert int(ema.average["norm.num_batches_tracked"]) == trainer.global_step

    trainer = Trainer(model, callbacks=[oracle, ema, Compare()], lr=0.05, verbose=False)
    trainer.fit(data(), epochs=2, batch_size=8)  # 10 updates
    assert ema.updates == 10 - start
    # the weights moved on and the average differs from them (with decay > 0)
    assert not torch.equal(model.conv.weight, last.conv.weight)
    if decay > 0:
        assert not torch.equal(model.conv.weight, ema.average["conv.weight"])
    else:  # decay 0: the average is the last weights
        torch.testing.assert_close(model.conv.weight, ema.average["conv.weight"])


def test_overwrite_at_end_and_swapped_in() -> None:
    torch.manual_seed(0)
    model = Net()
    ema = ExponentialMovingAverage(0.8)
    oracle = Oracle(model, 0.8, 0)
    x, y = data()
    Trainer(model, callbacks=[oracle, ema], lr=0.05, verbose=False).fit((x, y), epochs=1,
                                                                      batch_size=8)
    want = oracle.averaged.module.state_dict()
    for name, tensor in model.state_dict().items():  # the model now holds the averages
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, want[name], rtol=1e-6, atol=1e-7)
    model.eval()
    torch.testing.assert_close(model(x), oracle.averaged.module.eval()(x))

    # swapped_in lends the averages to a model holding other weights, then gives them back
    other = Net()
    before = copy.deepcopy(other.state_dict())
    with ema.swapped_in(other):
        torch.testing.assert_close(other.conv.weight, want["conv.weight"])
    for name, tensor in other.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_resume_keeps_the_average(tmp_path) -> None:  # noqa: ANN001
    x, y = data()
    torch.manual_seed(0)
    whole = Net()
    ema_whole = ExponentialMovingAverage(0.7)
    Trainer(whole, callbacks=[ema_whole], lr=0.05, verbose=False).fit(
        (x, y), epochs=2, batch_size=8)
    torch.manual_seed(0)
    part = Net()
    Trainer(part, callbacks=[ExponentialMovingAverage(0.7)], lr=0.05, verbose=False).fit(
        (x, y), epochs=1, batch_size=8, checkpoint_dir=tmp_path)
    resumed = ExponentialMovingAverage(0.7)
    Trainer(part, callbacks=[resumed], lr=0.05, verbose=False).fit(
        (x, y), epochs=2, batch_size=8, checkpoint_dir=tmp_path, resume=True)
    assert resumed.updates == ema_whole.updates == 10
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(part.state_dict()[name], tensor)


def test_bad_arguments_and_no_update() -> None:
    with pytest.raises(ValueError, match=r"decay must be a number in \[0, 1\), got 1.0"):
        ExponentialMovingAverage(1.0)
    with pytest.raises(ValueError, match="start must be a non-negative int"):
        ExponentialMovingAverage(0.9, start=-1)
    with pytest.raises(RuntimeError, match="nothing averaged yet"):
        ExponentialMovingAverage(0.9).copy_to(Net())
    ema = ExponentialMovingAverage(0.9)
    ema.update(Net())
    with pytest.raises(ValueError, match="the model's tensors changed"):
        ema.update(torch.nn.Linear(2, 2))
