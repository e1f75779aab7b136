"""Stateful layers: carry the final state of one call into the next (Keras ``stateful=True``).

A long sequence fed in k chunks then gives the same outputs as fed whole, while backprop is
truncated at chunk boundaries (the stored state is detached from the graph). The batch
size must stay the same between calls, because sample ``b`` of one call continues sample ``b``
of the previous one; call ``reset_states()`` to start new sequences, or
``reset_states(mask)`` to restart only the samples where ``mask`` is True.

The carried state belongs to the layer: it is held in non-persistent buffers of the layer
(``carried_state_0``, ...; see :class:`StateStore`), so ``.to()``, ``.double()`` and
``.cuda()`` move it with the parameters, while ``state_dict()`` keeps exactly
``torch.nn``'s keys (a plain ``torch.nn`` state_dict still loads with ``strict=True``).
Save and restore it exactly with the layer's ``get_carried_state()`` /
``set_carried_state(saved)`` (resuming truncated BPTT).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.engine.loop import map_state


def _flatten(state: Any) -> tuple[list[Tensor], Any]:
    """The tensors of a (nested) state and the structure to rebuild it."""
    if isinstance(state, Tensor):
        return [state], None
    if not isinstance(state, (tuple, list)):
        raise TypeError(f"a state must be a Tensor or a tuple of them, got {type(state).__name__}")
    tensors: list[Tensor] = []
    specs = []
    for part in state:
        flat, spec = _flatten(part)
        tensors.extend(flat)
        specs.append((len(flat), spec))
    return tensors, specs


def _unflatten(tensors: list[Tensor], spec: Any) -> Any:
    if spec is None:
        return tensors[0]
    parts, start = [], 0
    for count, inner in spec:
        parts.append(_unflatten(tensors[start:start + count], inner))
        start += count
    return tuple(parts)


class StateStore:
    """Holds a detached state between calls in non-persistent buffers of ``module`` (so they
    move with it); the state's batch dimension is ``batch_dim``.

    Args:
        module: the layer that owns the state.
        owner: name used in error messages (the layer's class name).
        batch_dim: which dimension of every state tensor is the batch (1 for torch-format
            ``(L*D, B, H)`` states, 0 for cell states ``(B, H)``).
    """

    def __init__(self, module: nn.Module, owner: str, batch_dim: int) -> None:
        self.module = module
        self.owner = owner
        self.batch_dim = batch_dim
        self._spec: Any = None
        self._count = 0
        self._pending: Tensor | None = None  # a reset mask given before the first call
        module.register_buffer("carried_restart", None, persistent=False)  # (B,) bool

    @property
    def restart(self) -> Tensor | None:
        return self.module.carried_restart

    @restart.setter
    def restart(self, mask: Tensor | None) -> None:
        self.module.carried_restart = mask

    @property
    def state(self) -> Any:
        """The carried state (None before the first call or after a reset)."""
        if self._count == 0:
            return None
        parts = [getattr(self.module, f"carried_state_{i}") for i in range(self._count)]
        return _unflatten(parts, self._spec)

    def _store(self, state: Any) -> None:
        for i in range(self._count):
            delattr(self.module, f"carried_state_{i}")
        if state is None:
            self._spec, self._count = None, 0
            return
        tensors, self._spec = _flatten(state)
        self._count = len(tensors)
        for i, tensor in enumerate(tensors):
            self.module.register_buffer(f"carried_state_{i}", tensor.detach(), persistent=False)

    def _batch_size(self) -> int:
        return self.module.carried_state_0.shape[self.batch_dim]

    def get(self, batch_size: int, initial: Callable[[], Any]) -> tuple[Any, bool]:
        """The state to start from and whether it was carried over (False: ``initial()``).

        ``initial`` builds the layer's fresh initial state (zeros, a constant or a learnable
        state) in the same format as the stored one; samples marked by ``reset(mask)`` take
        it, the others continue from where the previous call stopped. The caller checks a
        carried state like a user's state (:meth:`describe` names it in messages).
        """
        pending, self._pending = self._pending, None
        if pending is not None and pending.shape[0] != batch_size:
            raise ValueError(
                f"{self.owner}.reset_states(mask): the mask given before this call has "
                f"{pending.shape[0]} entries but the batch has {batch_size} sequences"
            )
        if self._count == 0:
            return initial(), False
        stored = self._batch_size()
        if stored != batch_size:
            raise ValueError(
                f"{self.owner}(stateful=True): batch size changed from {stored} to {batch_size} "
                "without a reset; call reset_states() before feeding a new batch size"
            )
        state = self.state
        if self.restart is None:
            return state, True
        restart = self.restart

        def select(fresh: Tensor, old: Tensor) -> Tensor:
            shape = [1] * old.dim()
            shape[self.batch_dim] = batch_size
            return torch.where(restart.to(old.device).view(shape), fresh.to(old), old)

        return map_state(select, initial(), state), True

    def describe(self) -> str:
        """How error messages name the carried state."""
        return (f"the state carried over from the previous call ({self.owner}(stateful=True); "
                f"call reset_states() to start from a fresh state)")

    def put(self, state: Any) -> None:
        """Store ``state`` detached from the autograd graph."""
        self._store(state)
        self.restart = None

    def reset(self, mask: Tensor | None = None, batch_size: int | None = None) -> None:
        """Forget the state, or only for the samples where ``mask`` (B,) is True.

        Before the first call the batch size is not known yet: ``batch_size`` (the layer's
        expectation, when it has one) or no check beyond ``mask`` being a 1-D bool tensor.
        """
        if mask is None:
            self._store(None)
            self.restart = None
            self._pending = None
            return
        mask = torch.as_tensor(mask)
        expected = self._batch_size() if self._count else batch_size
        if mask.dtype != torch.bool or mask.dim() != 1 or (
                expected is not None and mask.shape[0] != expected):
            size = f"({expected},)" if expected is not None else "(batch,)"
            raise ValueError(
                f"{self.owner}.reset_states(mask): mask must be a bool tensor of shape "
                f"{size}, got dtype {mask.dtype} and shape {tuple(mask.shape)}"
            )
        if self._count == 0:
            # nothing is carried yet: every sample starts fresh anyway; the mask is checked
            # against the next call's batch size
            self._pending = mask
            return
        self.restart = mask if self.restart is None else (self.restart | mask.to(self.restart))

    def get_carried(self) -> dict[str, Any] | None:
        """A detached copy of what is carried (state and pending restarts), or None."""
        if self._count == 0:
            return None
        restart = None if self.restart is None else self.restart.clone()
        return {"state": map_state(lambda t: t.detach().clone(), self.state), "restart": restart}

    def set_carried(self, saved: dict[str, Any] | None) -> None:
        """Restore what :meth:`get_carried` returned (None: forget the state)."""
        if saved is None:
            self.put(None)
            return
        if not isinstance(saved, dict) or set(saved) != {"state", "restart"}:
            raise ValueError(
                f"{self.owner}.set_carried_state: expected what get_carried_state() returned "
                f"(a dict with 'state' and 'restart'), got {type(saved).__name__}"
            )
        self.put(map_state(lambda t: t.detach().clone(), saved["state"]))
        self.restart = None if saved["restart"] is None else saved["restart"].clone()


class Stateful:
    """``reset_states`` and the carried state's get/set pair, for layers with a
    ``_state_store`` (:class:`StateStore`)."""

    _state_store: StateStore

    def reset_states(self, mask: Tensor | None = None) -> None:
        """Forget the carried state (``stateful=True``), or only where ``mask`` (B,) is True."""
        self._state_store.reset(mask)

    def get_carried_state(self) -> dict[str, Any] | None:
        """A detached copy of the carried state (with any pending ``reset_states(mask)``), or
        None: save it beside the ``state_dict`` to resume truncated BPTT exactly."""
        return self._state_store.get_carried()

    def set_carried_state(self, saved: dict[str, Any] | None) -> None:
        """Restore what :meth:`get_carried_state` returned; it is checked against the input
        at the next call like any state."""
        self._state_store.set_carried(saved)
