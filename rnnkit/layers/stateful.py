"""Stateful layers: carry the final state of one call into the next (Keras ``stateful=True``).

A long sequence fed in k chunks then gives the same outputs as fed whole, while backprop is
truncated at chunk boundaries (the stored state is detached from the graph). The batch
size must stay the same between calls, because sample ``b`` of one call continues sample ``b``
of the previous one; call ``reset_states()`` to start new sequences, or
``reset_states(mask)`` to restart only the samples where ``mask`` is True.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rnnkit.engine.loop import map_state


class StateStore:
    """Holds a detached state between calls; the state's batch dimension is ``batch_dim``.

    Args:
        owner: name used in error messages (the layer's class name).
        batch_dim: which dimension of every state tensor is the batch (1 for torch-format
            ``(L*D, B, H)`` states, 0 for cell states ``(B, H)``).
    """

    def __init__(self, owner: str, batch_dim: int) -> None:
        self.owner = owner
        self.batch_dim = batch_dim
        self.state: Any = None
        self.restart: Tensor | None = None  # (B,) bool: samples to restart at the next call

    def _batch_size(self) -> int:
        leaf = self.state
        while isinstance(leaf, (tuple, list)):
            leaf = leaf[0]
        return leaf.shape[self.batch_dim]

    def get(self, batch_size: int, initial: Callable[[], Any]) -> Any:
        """The state to start from: the stored one, or ``initial()`` where none is stored.

        ``initial`` builds the layer's fresh initial state (zeros, a constant or a learnable
        state) in the same format as the stored one; samples marked by ``reset(mask)`` take
        it, the others continue from where the previous call stopped.
        """
        if self.state is None:
            return initial()
        stored = self._batch_size()
        if stored != batch_size:
            raise ValueError(
                f"{self.owner}(stateful=True): batch size changed from {stored} to {batch_size} "
                "without a reset; call reset_states() before feeding a new batch size"
            )
        if self.restart is None:
            return self.state
        restart = self.restart

        def select(fresh: Tensor, old: Tensor) -> Tensor:
            shape = [1] * old.dim()
            shape[self.batch_dim] = batch_size
            return torch.where(restart.to(old.device).view(shape), fresh, old)

        return map_state(select, initial(), self.state)

    def put(self, state: Any) -> None:
        """Store ``state`` detached from the autograd graph."""
        self.state = map_state(lambda tensor: tensor.detach(), state)
        self.restart = None

    def reset(self, mask: Tensor | None = None) -> None:
        """Forget the state, or only for the samples where ``mask`` (B,) is True."""
        if mask is None:
            self.state = None
            self.restart = None
            return
        if self.state is None:
            return
        mask = torch.as_tensor(mask)
        batch_size = self._batch_size()
        if mask.dtype != torch.bool or tuple(mask.shape) != (batch_size,):
            raise ValueError(
                f"{self.owner}.reset_states(mask): mask must be a bool tensor of shape "
                f"({batch_size},), got dtype {mask.dtype} and shape {tuple(mask.shape)}"
            )
        self.restart = mask if self.restart is None else (self.restart | mask.to(self.restart))
