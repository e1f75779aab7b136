"""An exponential moving average of the weights, for evaluating and keeping the averaged model.

The weights after the last update carry the noise of the last minibatches; their running
average over the last few hundred updates usually reads held-out data better and varies less
from seed to seed (Polyak averaging; Keras's ``use_ema=True`` optimizers, TensorFlow's
``tf.train.ExponentialMovingAverage``, PyTorch's ``torch.optim.swa_utils.AveragedModel`` with
``get_ema_multi_avg_fn``). After every batch's update, with ``w`` each floating-point
parameter and buffer (a batch norm's running statistics too) and ``a`` its average::

    a <- w                              at the first update counted (``start``)
    a <- decay * a + (1 - decay) * w    at every later one

which is what ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
use_buffers=True)`` keeps (the tests check it update by update); integer buffers (a batch
norm's ``num_batches_tracked``) are copied, not averaged. At the end of ``fit`` the averages
replace the model's weights (Keras's ``finalize_variable_values``), so what is evaluated,
saved or predicted afterwards is the averaged model; ``overwrite_at_end=False`` leaves the
last weights and :meth:`ExponentialMovingAverage.swapped_in` lends the averages for a while.

    >>> import torch
    >>> from rnnkit.training import Trainer
    >>> from rnnkit.training.averaging import ExponentialMovingAverage
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Linear(3, 1)
    >>> x, y = torch.randn(64, 3), torch.randn(64, 1)
    >>> ema = ExponentialMovingAverage(decay=0.9)
    >>> history = Trainer(model, callbacks=[ema], verbose=False).fit((x, y), epochs=2)
    >>> ema.updates                      # 2 epochs of 2 batches of 32
    4
    >>> bool(torch.equal(model.weight, ema.average["weight"]))
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.training.callbacks import Callback

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage(Callback):
    """Keep an exponential moving average of a model's parameters and buffers while it trains.

    Args:
        decay: weight of the old average at each update, in ``[0, 1)``; the average spans
            about ``1 / (1 - decay)`` updates (0.998: the last ~500).
        start: updates left out: the average begins with the weights after update
            ``start + 1`` (``trainer.global_step``; 0: from the first update, as
            ``AveragedModel``). With a learning rate that is high early, a later start keeps
            the early weights out.
        overwrite_at_end: at the end of ``fit``, copy the averages into the model.

    ``average`` maps the names of ``model.state_dict()`` to the averaged tensors (empty before
    the first update); ``updates`` counts the updates averaged (the first one included).
    """

    def __init__(self, decay: float = 0.999, *, start: int = 0,
                 overwrite_at_end: bool = True) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or \
                not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"ExponentialMovingAverage: decay must be a number in [0, 1), got "
                             f"{decay!r}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"ExponentialMovingAverage: start must be a non-negative int "
                             f"(updates), got {start!r}")
        self.decay = float(decay)
        self.start = start
        self.overwrite_at_end = bool(overwrite_at_end)
        self.average: dict[str, Tensor] = {}
        self.updates = 0

    def _tensors(self, model: nn.Module) -> dict[str, Tensor]:
        # state_dict(keep_vars=True): the live parameters and buffers, no copies
        return dict(model.state_dict(keep_vars=True))

    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (the trainer calls this after
        every batch from ``start`` on; call it by hand to average outside a trainer)."""
        live = self._tensors(model)
        with torch.no_grad():
            if self.updates == 0 or set(live) != set(self.average):
                if self.average:
                    raise ValueError(
                        f"ExponentialMovingAverage: the model's tensors changed since the "
                        f"average began ({sorted(set(live) ^ set(self.average))[:4]}); "
                        "average one model")
                self.average = {name: t.detach().clone() for name, t in live.items()}
            else:
                floats = [name for name, t in live.items() if t.is_floating_point()]
                torch._foreach_lerp_([self.average[n] for n in floats],
                                     [live[n].detach() for n in floats], 1.0 - self.decay)
                for name, t in live.items():
                    if not t.is_floating_point():
                        self.average[name].copy_(t)
        self.updates += 1

    def copy_to(self, model: nn.Module) -> None:
        """Write the averages into ``model``'s parameters and buffers."""
        if not self.average:
            raise RuntimeError("ExponentialMovingAverage: nothing averaged yet (no update)")
        live = self._tensors(model)
        with torch.no_grad():
            for name, t in live.items():
                t.copy_(self.average[name])

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """``with ema.swapped_in(model):`` the model holds the averages inside the block and
        its own weights again after it."""
        kept = {name: t.detach().clone() for name, t in self._tensors(model).items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, t in self._tensors(model).items():
                    t.copy_(kept[name])

    # ------------------------------------------------------------------ trainer hooks
    def on_batch_end(self, trainer: Any, logs: Mapping[str, Any]) -> None:
        if trainer.global_step > self.start:
            self.update(trainer.model)

    def on_fit_end(self, trainer: Any, history: Any) -> None:
        if self.overwrite_at_end and self.average:
            self.copy_to(trainer.model)

    def state_dict(self) -> dict[str, Any]:
        return {"average": {name: t.clone() for name, t in self.average.items()},
                "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.average = {name: t.clone() for name, t in state["average"].items()}
        self.updates = int(state["updates"])
