"""Losses for the trainer: masked means with exact sums and counts.

Symbols: ``B`` batch, ``T`` time steps, ``C`` classes, ``D`` features. The trainer is
batch-major: sequence outputs are ``(B, T, ...)`` and ``mask (B, T)`` is True at real steps.

Every loss :func:`resolve_loss` returns has

* ``loss(output, target, mask=None)`` -> the mean over the elements it counts (a scalar Tensor),
* ``loss.sum_and_count(output, target, mask=None)`` -> ``(sum, count)`` so an epoch's average
  is ``sum of sums / sum of counts``: exact, whatever the batch sizes and padding,
* ``loss.align(output, target, mask=None)`` -> the ``(output, target, mask)`` the loss compares
  (a sequence output against a per-sample target gives each sequence's last valid step), which
  the trainer also hands to the metrics so they see what the loss sees.

Names:

* ``"mse"`` (``"mean_squared_error"``, CNTK's ``squared_error``), ``"mae"`` (``"l1"``),
  ``"huber"``: output and target of one shape (``(B, 1)`` against ``(B,)`` is accepted); a
  sequence output ``(B, T, D)`` against per-step targets ``(B, T, D)`` is masked per step, against
  per-sample targets ``(B, D)`` uses each sequence's last valid step.
* ``"cross_entropy"``: logits ``(B, C)`` against class ids ``(B,)`` or class probabilities
  ``(B, C)``; logits ``(B, T, C)`` against ``(B,)`` use each sequence's last valid step, against
  ``(B, T)`` they count every real step (as ``"sequence_cross_entropy"``).
* ``"sequence_cross_entropy"``: logits ``(B, T, C)`` against ids ``(B, T)``, masked.
* ``"binary_cross_entropy"``: logits against 0/1 targets of the same shape (with logits, as
  ``torch.nn.BCEWithLogitsLoss``).
* any callable ``(output, target) -> scalar`` (a ``torch.nn`` loss module, a function); it is
  taken as a mean over the batch, so its sum is ``value * B``. A callable that takes a ``mask``
  keyword gets the mask.

Target ids equal to ``ignore_index`` (-100, as in torch) never count.

Example:
    >>> import torch
    >>> loss = resolve_loss("sequence_cross_entropy")
    >>> logits = torch.randn(2, 3, 5)                      # (B, T, C)
    >>> target = torch.tensor([[1, 2, 0], [4, 0, 0]])      # (B, T), second row 1 step
    >>> mask = torch.tensor([[True, True, True], [True, False, False]])
    >>> total, count = loss.sum_and_count(logits, target, mask)
    >>> count
    4
    >>> bool(torch.isclose(loss(logits, target, mask), total / count))
    True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.errors import ShapeError

__all__ = ["IGNORE_INDEX", "LOSSES", "CallableLoss", "Loss", "resolve_loss"]

#: Target id that never counts in a cross-entropy (``torch.nn.functional.cross_entropy``'s).
IGNORE_INDEX = -100


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def last_valid_step(output: Tensor, mask: Tensor | None) -> Tensor:
    """``(B, T, *F)`` -> ``(B, *F)``: each row's last True step of ``mask`` (or step T - 1)."""
    if mask is None:
        return output[:, -1]
    lengths = mask.sum(1).clamp(min=1).to(output.device)  # (B,)
    index = (lengths - 1).view(-1, *([1] * (output.dim() - 1)))  # (B, 1, ...)
    index = index.expand(-1, 1, *output.shape[2:])
    return output.gather(1, index).squeeze(1)  # (B, *F)


class Loss:
    """A named loss with masked, exact ``sum_and_count``; see the module docstring."""

    name: str = "loss"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def align(self, output: Tensor, target: Tensor, mask: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor | None]:
        raise NotImplementedError

    def sum_and_count(self, output: Tensor, target: Tensor, mask: Tensor | None = None
                      ) -> tuple[Tensor, int]:
        raise NotImplementedError

    def __call__(self, output: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        total, count = self.sum_and_count(output, target, mask)
        return total / max(count, 1)

    def _error(self, output: Tensor, target: Tensor, why: str) -> ShapeError:
        return ShapeError(f"loss {self.name!r}: model output shape {_shape(output)} and target "
                          f"shape {_shape(target)} cannot meet: {why}")

    def _check_mask(self, output: Tensor, mask: Tensor | None) -> None:
        if mask is not None and (mask.dim() != 2 or _shape(mask) != _shape(output)[:2]):
            raise ShapeError(f"loss {self.name!r}: mask shape {_shape(mask)} does not match the "
                             f"(B, T) of the model output {_shape(output)}")

    def __repr__(self) -> str:
        smooth = f", label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return f"{type(self).__name__}({self.name!r}{smooth})"


class _Elementwise(Loss):
    """Regression losses: an elementwise function of output and target, masked per step."""

    def __init__(self, name: str, fn: Callable[[Tensor, Tensor], Tensor],
                 label_smoothing: float = 0.0) -> None:
        super().__init__(label_smoothing)
        if label_smoothing:
            raise ValueError(f"label_smoothing applies to cross-entropy, not to {name!r}")
        self.name = name
        self.fn = fn

    def align(self, output: Tensor, target: Tensor, mask: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor | None]:
        if target.dtype == torch.bool or not target.is_floating_point():
            target = target.to(output.dtype)
        if _shape(output) == _shape(target):
            if mask is not None and output.dim() >= 2 and _shape(mask) == _shape(output)[:2]:
                return output, target, mask
            return output, target, None
        b = output.shape[0] if output.dim() else None
        if target.dim() == 0 or target.shape[0] != b:
            raise self._error(output, target, "the batch sizes differ")
        # (B, 1) against (B,): one value per sample
        if output.dim() == target.dim() + 1 and output.shape[-1] == 1 and \
                _shape(output)[:-1] == _shape(target):
            return output, target.unsqueeze(-1), None
        # a sequence output against per-sample targets: each sequence's last valid step
        if output.dim() == target.dim() + 1 and _shape(output)[2:] == _shape(target)[1:]:
            self._check_mask(output, mask)
            return last_valid_step(output, mask), target, None
        if output.dim() == target.dim() and output.dim() >= 2 and \
                _shape(output)[2:] == _shape(target)[2:] and output.shape[1] != target.shape[1]:
            raise self._error(output, target, "the time axes differ (per-step targets need as "
                              "many steps as the output)")
        raise self._error(output, target, "expected equal shapes, (B, 1) against (B,), or a "
                          "sequence output (B, T, *D) against per-sample targets (B, *D)")

    def sum_and_count(self, output: Tensor, target: Tensor, mask: Tensor | None = None
                      ) -> tuple[Tensor, int]:
        output, target, mask = self.align(output, target, mask)
        err = self.fn(output.float(), target.float())  # like output
        if mask is None:
            return err.sum(), err.numel()
        m = mask.to(err.device).view(*mask.shape, *([1] * (err.dim() - 2)))  # (B, T, 1...)
        per_step = err[0, 0].numel() if err.dim() >= 2 else 1
        return (err * m).sum(), int(mask.sum()) * per_step


class _CrossEntropy(Loss):
    """Softmax cross-entropy on logits (class ids or class probabilities as targets)."""

    def __init__(self, name: str = "cross_entropy", label_smoothing: float = 0.0,
                 sequence: bool = False) -> None:
        super().__init__(label_smoothing)
        self.name = name
        self.sequence = sequence

    def align(self, output: Tensor, target: Tensor, mask: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor | None]:
        if output.dim() < 2:
            raise self._error(output, target, "cross-entropy needs logits with a class axis, "
                              "(B, C) or (B, T, C)")
        if target.shape[:1] != output.shape[:1]:
            raise self._error(output, target, "the batch sizes differ")
        soft = target.is_floating_point()
        if self.sequence:
            if output.dim() != 3 or (soft and _shape(target) != _shape(output)) or \
                    (not soft and _shape(target) != _shape(output)[:2]):
                raise self._error(output, target, "sequence cross-entropy needs logits "
                                  "(B, T, C) and class ids (B, T)")
            self._check_mask(output, mask)
            return output, target, mask
        if output.dim() == 2:  # (B, C)
            if (soft and _shape(target) == _shape(output)) or (not soft and target.dim() == 1):
                return output, target, None
            raise self._error(output, target, "logits (B, C) need class ids (B,) or class "
                              "probabilities (B, C)")
        if output.dim() == 3:  # (B, T, C)
            if (not soft and target.dim() == 1) or (soft and _shape(target) == (
                    output.shape[0], output.shape[2])):
                self._check_mask(output, mask)
                return last_valid_step(output, mask), target, None
            if (not soft and _shape(target) == _shape(output)[:2]) or (
                    soft and _shape(target) == _shape(output)):
                self._check_mask(output, mask)
                return output, target, mask
        raise self._error(output, target, "logits (B, C) need targets (B,); logits (B, T, C) "
                          "need per-sample targets (B,) or per-step targets (B, T)")

    def sum_and_count(self, output: Tensor, target: Tensor, mask: Tensor | None = None
                      ) -> tuple[Tensor, int]:
        output, target, mask = self.align(output, target, mask)
        soft = target.is_floating_point()
        logits = output.float().reshape(-1, output.shape[-1])  # (N, C)
        if soft:
            flat_target = target.float().reshape(-1, output.shape[-1])  # (N, C)
            keep = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
        else:
            flat_target = target.reshape(-1).to(torch.int64)  # (N,)
            keep = flat_target != IGNORE_INDEX
            classes = output.shape[-1]
            bad = keep & ((flat_target < 0) | (flat_target >= classes))
            if bool(bad.any()):
                value = int(flat_target[bad][0])
                raise ValueError(f"loss {self.name!r}: target class id {value} is outside "
                                 f"[0, {classes}) for logits of shape {_shape(output)}")
        if mask is not None:
            keep = keep & mask.reshape(-1).to(keep.device)
        if not soft:
            # padded steps may hold any id; give them one cross_entropy ignores
            flat_target = torch.where(keep, flat_target, torch.full_like(flat_target,
                                                                         IGNORE_INDEX))
            per = F.cross_entropy(logits, flat_target, reduction="none",
                                  label_smoothing=self.label_smoothing,
                                  ignore_index=IGNORE_INDEX)  # (N,)
        else:
            per = F.cross_entropy(logits, flat_target, reduction="none",
                                  label_smoothing=self.label_smoothing)  # (N,)
            per = per * keep
        return per.sum(), int(keep.sum())


class _BinaryCrossEntropy(Loss):
    name = "binary_cross_entropy"

    def align(self, output: Tensor, target: Tensor, mask: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor | None]:
        return _Elementwise.align(self, output, target, mask)  # same shape rules

    def sum_and_count(self, output: Tensor, target: Tensor, mask: Tensor | None = None
                      ) -> tuple[Tensor, int]:
        output, target, mask = self.align(output, target, mask)
        target = target.float()
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        err = F.binary_cross_entropy_with_logits(output.float(), target, reduction="none")
        if mask is None:
            return err.sum(), err.numel()
        m = mask.to(err.device).view(*mask.shape, *([1] * (err.dim() - 2)))
        per_step = err[0, 0].numel() if err.dim() >= 2 else 1
        return (err * m).sum(), int(mask.sum()) * per_step


class CallableLoss(Loss):
    """A user's ``(output, target) -> scalar`` mean, weighted by the batch size."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)
        try:
            target = fn.forward if isinstance(fn, torch.nn.Module) else fn
            self.takes_mask = "mask" in inspect.signature(target).parameters
        except (TypeError, ValueError):
            self.takes_mask = False

    def align(self, output: Tensor, target: Tensor, mask: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor | None]:
        return output, target, mask

    def __call__(self, output: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        value = self.fn(output, target, mask=mask) if self.takes_mask else self.fn(output, target)
        if not isinstance(value, Tensor) or value.numel() != 1:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"loss {self.name!r} must return a scalar tensor (a mean over the "
                            f"batch), got {got}")
        return value.reshape(())

    def sum_and_count(self, output: Tensor, target: Tensor, mask: Tensor | None = None
                      ) -> tuple[Tensor, int]:
        b = int(output.shape[0]) if output.dim() else 1
        return self(output, target, mask) * b, b


def _mse(o: Tensor, t: Tensor) -> Tensor:
    return (o - t).square()


def _mae(o: Tensor, t: Tensor) -> Tensor:
    return (o - t).abs()


def _huber(o: Tensor, t: Tensor) -> Tensor:
    return F.huber_loss(o, t, reduction="none")


#: Loss names :func:`resolve_loss` knows, with their aliases.
LOSSES: dict[str, Callable[[float], Loss]] = {
    "mse": lambda s: _Elementwise("mse", _mse, s),
    "mean_squared_error": lambda s: _Elementwise("mse", _mse, s),
    "squared_error": lambda s: _Elementwise("mse", _mse, s),
    "mae": lambda s: _Elementwise("mae", _mae, s),
    "l1": lambda s: _Elementwise("mae", _mae, s),
    "mean_absolute_error": lambda s: _Elementwise("mae", _mae, s),
    "huber": lambda s: _Elementwise("huber", _huber, s),
    "cross_entropy": lambda s: _CrossEntropy("cross_entropy", s),
    "cross_entropy_with_softmax": lambda s: _CrossEntropy("cross_entropy", s),
    "sequence_cross_entropy": lambda s: _CrossEntropy("sequence_cross_entropy", s,
                                                      sequence=True),
    "binary_cross_entropy": lambda s: _BinaryCrossEntropy(s),
    "bce": lambda s: _BinaryCrossEntropy(s),
}


def resolve_loss(loss: str | Loss | Callable[..., Tensor], label_smoothing: float = 0.0) -> Loss:
    """The :class:`Loss` for a name, a :class:`Loss`, or a callable (see the module docstring).

    Raises ``ValueError`` naming the known losses for an unknown name.
    """
    if isinstance(loss, Loss):
        if label_smoothing:
            raise ValueError("give label_smoothing to the loss you built, not to resolve_loss")
        return loss
    if isinstance(loss, str):
        key = loss.lower().replace("-", "_")
        if key not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; known: {', '.join(sorted(LOSSES))}, or a "
                             "callable (output, target) -> scalar")
        return LOSSES[key](label_smoothing)
    if callable(loss):
        if label_smoothing:
            raise ValueError("label_smoothing applies to the named cross-entropy losses, not "
                             "to a callable")
        return CallableLoss(loss)
    raise TypeError(f"loss must be a name ({', '.join(sorted(LOSSES))}) or a callable, got "
                    f"{type(loss).__name__}")

