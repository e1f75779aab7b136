"""How a cell family describes itself to rnnkit's compiled step-loop template.

A cell class that sets ``compiled_adapter = SomeAdapter`` runs on the compiled kernels
(``rnnkit.engine.compiled``): the engine asks the adapter for the hoisted input projection,
the recurrent tensors by the names its C++ family (``csrc/<family>.cpp``) reads, its flags and
numbers, the state's parts, and a torch-op step used for gradients of gradients. The engine
does the rest (checks, the autograd Function, lengths, reverse, the double-backward path), so
a new family touches its cell file, its kernel file and its tests. Nothing here imports the
engine: cells stay below it.

Symbols: T time steps, B batch, H_in input features, H hidden size, X the projection's width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn


class CompiledAdapter:
    """Base of the per-family adapters; one instance per call, bound to ``cell``.

    Subclasses set :attr:`family` and implement :meth:`parameter_shapes`, :meth:`project`,
    :meth:`kernel_tensors` and :meth:`step`; the rest has defaults for a cell whose state is
    one ``(B, H)`` tensor that is also its output.
    """

    #: The C++ family's registered name (``RNNKIT_REGISTER_FAMILY`` in its csrc file).
    family: str = ""

    #: Whether :meth:`project` computes its GEMM with :attr:`linear`, so that a
    #: ``precision="bf16"`` call can run it in bfloat16 (the recurrent GEMMs are the
    #: template's, bf16 for every family). An adapter that leaves it False runs bf16 calls on
    #: another path (the engine says which).
    bf16: bool = False

    def __init__(self, cell: nn.Module) -> None:
        self.cell = cell
        #: ``F.linear``, or for a ``precision="bf16"`` call the engine's bf16 GEMM with the
        #: same signature: what :meth:`project` multiplies with.
        self.linear = F.linear

    def refusal(self) -> str | None:
        """Why this cell's options are not covered by the kernel, or None."""
        return None

    def describe(self) -> str:
        """What ``supports()`` and ``explain`` say runs (e.g. ``"ElmanCell (tanh)"``)."""
        return type(self.cell).__name__

    def parameter_shapes(self) -> dict[str, tuple[int, ...] | None]:
        """Every parameter the kernels read, by attribute name (``"ln_hh.weight"`` for a
        submodule's), with the shape the cell's sizes give it (None: must be absent)."""
        raise NotImplementedError

    def state_parts(self) -> tuple[tuple[str, int], ...]:
        """``(name, width)`` of each state tensor, in the cell's order. One part: the state
        is a tensor; several: a tuple. The kernel carries them side by side in one
        ``(B, sum of widths)`` row whose first ``output_size`` values are the output."""
        return (("state", self.cell.hidden_size),)

    def project(self, inputs: Tensor) -> Tensor:
        """The hoisted input projection ``(T, B, X)`` of ``inputs`` ``(T, B, H_in)``, in
        torch ops (autograd differentiates it)."""
        raise NotImplementedError

    def kernel_tensors(self) -> dict[str, Tensor | None]:
        """The recurrent tensors by the kernel's names (None: absent, not passed)."""
        raise NotImplementedError

    def projection_operands(self) -> tuple[Tensor, Tensor | None, Tensor | None] | None:
        """``(weight, bias, second_bias)`` when :meth:`project` is exactly
        ``projection(inputs, weight, sum_bias(bias, second_bias))`` with ``F.linear`` (no
        norm), so that the engine may compute it inside the recurrence's autograd node (one
        node instead of four); None (the default): the engine calls :meth:`project`."""
        return None

    def flags(self) -> dict[str, bool]:
        return {}

    def numbers(self) -> dict[str, float]:
        return {}

    def step(self, xp: Tensor, state: Tensor, tensors: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """One step in torch ops from the projection ``xp`` ``(B, X)`` and the carried state
        ``(B, sum of widths)``: ``(output, new state)``. The same function as the kernel; the
        engine differentiates it for gradients of gradients (``create_graph=True``)."""
        raise NotImplementedError


def projection(x: Tensor, weight: Tensor, bias: Tensor | None, norm: nn.Module | None = None,
               linear: Callable[..., Tensor] = F.linear) -> Tensor:
    """``W x + b`` (or ``LN(W x) + b``) for all T steps at once: ``(T, B, H_in) -> (T, B, X)``;
    ``linear`` is the adapter's :attr:`CompiledAdapter.linear` (``F.linear`` or bf16)."""
    T, B, _ = x.shape
    flat = x.reshape(T * B, x.shape[2])  # (T*B, H_in)
    if norm is None:
        out = linear(flat, weight, bias)  # (T*B, X), one GEMM (addmm) for all steps
    else:
        out = F.layer_norm(
            linear(flat, weight, None), (weight.shape[0],), norm.weight, norm.bias, norm.eps
        )
        if bias is not None:
            out = out + bias
    return out.view(T, B, weight.shape[0])  # (T, B, X)


def sum_bias(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """``a + b`` where either may be absent."""
    if a is None:
        return b
    return a if b is None else a + b
