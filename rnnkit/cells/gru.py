"""The GRU cell: ``torch.nn.GRUCell``, the original reset-before form, and layer norm."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import functional as RF
from rnnkit.cells._compiled import CompiledAdapter, projection
from rnnkit.cells.base import (
    RecurrentCell,
    check_flag,
    check_size,
    factory_kwargs,
    layer_norm_params,
    optional_parameter,
)


class GRUAdapter(CompiledAdapter):
    """The GRU on the compiled template (``csrc/gru.cpp``): ``xp = N_ih(W_ih x) + b_ih``
    hoisted; ``b_hh`` stays in the loop (``r`` multiplies ``W_hn h + b_hn``). reset_after:
    one GEMM ``W_hh h`` per step; reset before: ``W_h[rz] h``, then ``W_hn (r * h)``."""

    family = "gru"
    bf16 = True

    def describe(self) -> str:
        norm = ", layer norm" if self.cell.layer_norm else ""
        return f"GRUCell (reset_after={self.cell.reset_after}{norm})"

    def parameter_shapes(self) -> dict[str, tuple[int, ...] | None]:
        cell = self.cell
        H = cell.hidden_size
        shapes: dict[str, tuple[int, ...] | None] = {
            "weight_ih": (3 * H, cell.input_size), "weight_hh": (3 * H, H),
            "bias_ih": (3 * H,) if cell.bias_ih is not None else None,
            "bias_hh": (3 * H,) if cell.bias_hh is not None else None}
        if cell.layer_norm:
            norms = {"ln_ih": 3 * H, "ln_hh": 3 * H if cell.reset_after else 2 * H}
            if not cell.reset_after:
                norms["ln_hn"] = H
            for norm, size in norms.items():
                for leaf in ("weight", "bias"):
                    present = getattr(getattr(cell, norm), leaf) is not None
                    shapes[f"{norm}.{leaf}"] = (size,) if present else None
        return shapes

    def project(self, inputs: Tensor) -> Tensor:
        cell = self.cell
        # (T, B, 3H)
        return projection(inputs, cell.weight_ih, cell.bias_ih, cell.ln_ih, self.linear)

    def projection_operands(self):
        cell = self.cell
        return None if cell.ln_ih is not None else (cell.weight_ih, cell.bias_ih, None)

    def kernel_tensors(self) -> dict[str, Tensor | None]:
        cell = self.cell
        tensors = {"weight_hh": cell.weight_hh, "bias_hh": cell.bias_hh}
        for norm in ("ln_hh", "ln_hn"):
            module = getattr(cell, norm)
            if module is not None:
                tensors[f"{norm}.weight"] = module.weight
                tensors[f"{norm}.bias"] = module.bias
        return tensors

    def flags(self) -> dict[str, bool]:
        return {"reset_after": self.cell.reset_after, "layer_norm": self.cell.layer_norm}

    def numbers(self) -> dict[str, float]:
        cell = self.cell
        if not cell.layer_norm:
            return {}
        numbers = {"eps_hh": float(cell.ln_hh.eps)}
        if not cell.reset_after:
            numbers["eps_hn"] = float(cell.ln_hn.eps)
        return numbers

    def step(self, xp: Tensor, state: Tensor, tensors: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        cell, h, H = self.cell, state, self.cell.hidden_size
        w_hh, b_hh = tensors["weight_hh"], tensors.get("bias_hh")

        def norm(v: Tensor, name: str) -> Tensor:
            if not cell.layer_norm:
                return v
            module = getattr(cell, name)
            return F.layer_norm(v, (v.shape[-1],), tensors.get(f"{name}.weight"),
                                tensors.get(f"{name}.bias"), module.eps)

        x_r, x_z, x_n = xp.split(H, dim=1)
        if cell.reset_after:
            a = norm(h @ w_hh.t(), "ln_hh")  # (B, 3H)
            if b_hh is not None:
                a = a + b_hh
            a_r, a_z, a_n = a.split(H, dim=1)
            r, z = torch.sigmoid(x_r + a_r), torch.sigmoid(x_z + a_z)
            n = torch.tanh(x_n + r * a_n)
        else:
            a = norm(h @ w_hh[: 2 * H].t(), "ln_hh")  # (B, 2H)
            if b_hh is not None:
                a = a + b_hh[: 2 * H]
            a_r, a_z = a.split(H, dim=1)
            r, z = torch.sigmoid(x_r + a_r), torch.sigmoid(x_z + a_z)
            a_n = norm((r * h) @ w_hh[2 * H:].t(), "ln_hn")  # (B, H)
            if b_hh is not None:
                a_n = a_n + b_hh[2 * H:]
            n = torch.tanh(x_n + a_n)
        h_new = n + z * (h - n)
        return h_new, h_new


class GRUCell(RecurrentCell):
    r"""Gated recurrent unit cell; ``reset_after=True`` equals ``torch.nn.GRUCell``.

    .. math::
        \begin{aligned}
        r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn}))
            && \text{reset\_after=True (PyTorch, cuDNN, Keras default)} \\
        n_t &= \tanh(W_{in} x_t + b_{in} + W_{hn} (r_t \odot h_{t-1}) + b_{hn})
            && \text{reset\_after=False (Cho et al. 2014, CNTK, TF1)} \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{aligned}

    Parameters (B: batch, H_in: ``input_size``, H: ``hidden_size``), rows in gate order
    r, z, n as in ``torch.nn.GRUCell``; both forms use the same layout, so weights can be
    moved between them (the results differ, of course):

    ===============  ================  ================================================
    name             shape             notes
    ===============  ================  ================================================
    ``weight_ih``    ``(3H, H_in)``    :math:`[W_{ir}; W_{iz}; W_{in}]`
    ``weight_hh``    ``(3H, H)``       :math:`[W_{hr}; W_{hz}; W_{hn}]`
    ``bias_ih``      ``(3H,)``         only with ``bias``
    ``bias_hh``      ``(3H,)``         only with ``bias``
    ``ln_ih``        LayerNorm(3H)     with ``layer_norm``: normalises ``W_ih x``
    ``ln_hh``        LayerNorm(3H)     with ``layer_norm`` and ``reset_after``:
                                       normalises ``W_hh h`` (before ``r`` scales the
                                       n slice)
    ``ln_hh``        LayerNorm(2H)     with ``layer_norm``, not ``reset_after``:
                                       normalises the r, z slices ``W_h[rz] h``
    ``ln_hn``        LayerNorm(H)      with ``layer_norm``, not ``reset_after``:
                                       normalises ``W_hn (r * h)``, which needs ``r``
                                       first and so cannot share ``ln_hh``
    ===============  ================  ================================================

    With layer norm every product :math:`W v` above becomes :math:`\mathrm{LN}(W v)` and
    the biases are added after it. Initialisation is ``torch.nn.GRUCell``'s,
    :math:`U(-1/\sqrt{H}, 1/\sqrt{H})` for the weights and biases; layer norms start as
    weight 1, bias 0.

    Args:
        input_size: H_in.
        hidden_size: H.
        bias: create ``bias_ih`` and ``bias_hh``.
        reset_after: apply the reset gate after the recurrent product (see above).
        layer_norm: add layer normalisation as in the table.
        device, dtype: where and in what dtype to create the parameters.

    Call: ``output, h = cell(x, h)`` with ``x`` ``(B, H_in)`` and ``h`` ``(B, H)`` or ``None``
    (zeros); ``output`` is the new ``h``.

    Example:
        >>> import torch
        >>> from rnnkit.cells import GRUCell
        >>> cell = GRUCell(3, 5, reset_after=False)
        >>> out, h = cell(torch.randn(2, 3), torch.zeros(2, 5))
        >>> out.shape
        torch.Size([2, 5])
    """

    compiled_adapter = GRUAdapter

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        reset_after: bool = True,
        layer_norm: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = input_size = check_size("input_size", input_size, owner="GRUCell")
        self.hidden_size = hidden_size = check_size("hidden_size", hidden_size, owner="GRUCell")
        self.bias = check_flag("GRUCell", "bias", bias)
        self.reset_after = check_flag("GRUCell", "reset_after", reset_after)
        self.layer_norm = check_flag("GRUCell", "layer_norm", layer_norm)
        self.state_size = hidden_size
        self.output_size = hidden_size
        factory = factory_kwargs("GRUCell", device, dtype)
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size, **factory))
        for name in ("bias_ih", "bias_hh"):
            self.register_parameter(name, optional_parameter(bias, 3 * hidden_size, **factory))
        self.ln_ih = self.ln_hh = self.ln_hn = None
        if layer_norm:
            self.ln_ih = nn.LayerNorm(3 * hidden_size, **factory)
            if reset_after:
                self.ln_hh = nn.LayerNorm(3 * hidden_size, **factory)
            else:
                self.ln_hh = nn.LayerNorm(2 * hidden_size, **factory)
                self.ln_hn = nn.LayerNorm(hidden_size, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the parameters as ``torch.nn.GRUCell`` does; layer norms to 1 and 0."""
        self._reset_uniform(1.0 / math.sqrt(self.hidden_size))

    def weights(self) -> RF.GRUWeights:
        """This cell's parameters as :class:`rnnkit.functional.GRUWeights`."""

        norm = layer_norm_params
        return RF.GRUWeights(
            self.weight_ih,
            self.weight_hh,
            self.bias_ih,
            self.bias_hh,
            ln_ih=norm(self.ln_ih),
            ln_hh=norm(self.ln_hh),
            ln_hn=norm(self.ln_hn),
        )

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        state = self.prepare_call(x, state)
        return RF.gru_step(x, state, self.weights(), reset_after=self.reset_after)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            text += ", bias=False"
        if not self.reset_after:
            text += ", reset_after=False"
        if self.layer_norm:
            text += ", layer_norm=True"
        return text
