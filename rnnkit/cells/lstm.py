"""The LSTM cell: ``torch.nn.LSTMCell`` plus peepholes, coupled gates, projection,
cell clipping and layer normalisation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import functional as RF
from rnnkit.cells._compiled import CompiledAdapter, projection, sum_bias
from rnnkit.cells.base import (
    RecurrentCell,
    check_flag,
    check_positive,
    check_proj_size,
    check_real,
    check_size,
    factory_kwargs,
    layer_norm_params,
    optional_parameter,
)


def init_forget_bias(cell: RecurrentCell, rows: slice) -> None:
    """Start the forget gate's total bias at ``cell.forget_bias``: ``rows`` (of the last
    dimension) of ``bias_ih`` to it, of ``bias_hh`` to 0. Nothing without biases or with
    ``forget_bias=None``."""
    if cell.bias_ih is None or cell.forget_bias is None:
        return
    with torch.no_grad():
        cell.bias_ih[..., rows].fill_(cell.forget_bias)
        cell.bias_hh[..., rows].zero_()


class LSTMAdapter(CompiledAdapter):
    """The LSTM family on the compiled template (``csrc/lstm.cpp``): both biases fold into
    the hoisted ``xp = LN_ih(W_ih x) + b_ih + b_hh`` (they come after the norms); one GEMM
    ``W_hh h`` per step, and ``W_hr m`` with a projection. The kernel carries
    ``[h | c]``."""

    family = "lstm"
    bf16 = True

    def describe(self) -> str:
        cell = self.cell
        options = []
        if cell.peepholes:
            options.append("peepholes")
        if cell.coupled_gates:
            options.append("coupled gates")
        if cell.proj_size:
            options.append(f"proj_size={cell.proj_size}")
        if cell.cell_clip is not None:
            options.append(f"cell_clip={cell.cell_clip}")
        if cell.layer_norm:
            options.append("layer norm")
        return "LSTMCell" + (" with " + ", ".join(options) if options else "")

    def parameter_shapes(self) -> dict[str, tuple[int, ...] | None]:
        cell = self.cell
        H = cell.hidden_size
        GH = cell.num_gates * H
        shapes: dict[str, tuple[int, ...] | None] = {
            "weight_ih": (GH, cell.input_size), "weight_hh": (GH, cell.output_size),
            "bias_ih": (GH,) if cell.bias_ih is not None else None,
            "bias_hh": (GH,) if cell.bias_hh is not None else None,
            "weight_hr": (cell.proj_size, H) if cell.proj_size else None}
        peep = (H,) if cell.peepholes else None
        shapes["weight_ci"] = None if cell.coupled_gates else peep
        shapes["weight_cf"] = shapes["weight_co"] = peep
        if cell.layer_norm:
            for norm, size in {"ln_ih": GH, "ln_hh": GH, "ln_c": H}.items():
                shapes[f"{norm}.weight"] = shapes[f"{norm}.bias"] = (size,)
        return shapes

    def state_parts(self) -> tuple[tuple[str, int], ...]:
        return (("state h", self.cell.output_size), ("state c", self.cell.hidden_size))

    def project(self, inputs: Tensor) -> Tensor:
        cell = self.cell
        norm = cell.ln_ih if cell.layer_norm else None
        return projection(inputs, cell.weight_ih, sum_bias(cell.bias_ih, cell.bias_hh), norm,
                          self.linear)

    def projection_operands(self):
        cell = self.cell
        return None if cell.layer_norm else (cell.weight_ih, cell.bias_ih, cell.bias_hh)

    def kernel_tensors(self) -> dict[str, Tensor | None]:
        cell = self.cell
        tensors = {"weight_hh": cell.weight_hh, "weight_hr": cell.weight_hr,
                   "weight_ci": cell.weight_ci, "weight_cf": cell.weight_cf,
                   "weight_co": cell.weight_co}
        if cell.layer_norm:
            for norm in ("ln_hh", "ln_c"):
                module = getattr(cell, norm)
                tensors[f"{norm}.weight"] = module.weight
                tensors[f"{norm}.bias"] = module.bias
        return tensors

    def flags(self) -> dict[str, bool]:
        cell = self.cell
        return {"coupled_gates": cell.coupled_gates, "peepholes": cell.peepholes,
                "layer_norm": cell.layer_norm}

    def numbers(self) -> dict[str, float]:
        cell = self.cell
        numbers = {"cell_clip": float(cell.cell_clip) if cell.cell_clip is not None else -1.0}
        if cell.layer_norm:
            numbers.update(eps_hh=float(cell.ln_hh.eps), eps_c=float(cell.ln_c.eps))
        return numbers

    def step(self, xp: Tensor, state: Tensor, tensors: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        cell = self.cell
        P, H = cell.output_size, cell.hidden_size
        h, c = state[:, :P], state[:, P:]

        def norm(v: Tensor, name: str) -> Tensor:
            module = getattr(cell, name)
            return F.layer_norm(v, (v.shape[-1],), tensors[f"{name}.weight"],
                                tensors[f"{name}.bias"], module.eps)

        a = h @ tensors["weight_hh"].t()  # (B, G*H)
        if cell.layer_norm:
            a = norm(a, "ln_hh")
        gates = (xp + a).split(H, dim=1)
        if cell.coupled_gates:
            a_f, a_g, a_o = gates
        else:
            a_i, a_f, a_g, a_o = gates
        if cell.peepholes:
            a_f = a_f + tensors["weight_cf"] * c
        f = torch.sigmoid(a_f)
        if cell.coupled_gates:
            i = 1 - f
        else:
            i = torch.sigmoid(a_i + tensors["weight_ci"] * c if cell.peepholes else a_i)
        c_new = f * c + i * torch.tanh(a_g)
        if cell.layer_norm:
            c_new = norm(c_new, "ln_c")
        if cell.cell_clip is not None and cell.cell_clip > 0:
            c_new = c_new.clamp(-cell.cell_clip, cell.cell_clip)
        gate_o = torch.sigmoid(a_o + tensors["weight_co"] * c_new if cell.peepholes else a_o)
        h_new = gate_o * torch.tanh(c_new)
        if cell.proj_size:
            h_new = h_new @ tensors["weight_hr"].t()  # (B, P)
        return h_new, torch.cat([h_new, c_new], 1)


class LSTMCell(RecurrentCell):
    r"""Long short-term memory cell; with the options off it equals ``torch.nn.LSTMCell``.

    .. math::
        \begin{aligned}
        a_t &= \mathrm{LN}_{ih}(W_{ih} x_t) + b_{ih} + \mathrm{LN}_{hh}(W_{hh} h_{t-1}) + b_{hh}
              = [a^i; a^f; a^g; a^o] \\
        f_t &= \sigma(a^f + w_{cf} \odot c_{t-1}) \\
        i_t &= \sigma(a^i + w_{ci} \odot c_{t-1})
              \quad\text{or, with coupled gates,}\quad i_t = 1 - f_t \\
        g_t &= \tanh(a^g) \\
        c_t &= \mathrm{clip}\big(\mathrm{LN}_c(f_t \odot c_{t-1} + i_t \odot g_t),
              -c_{clip}, c_{clip}\big) \\
        o_t &= \sigma(a^o + w_{co} \odot c_t) \\
        h_t &= W_{hr} (o_t \odot \tanh(c_t))
        \end{aligned}

    Each option adds one piece; with the option off the piece is the identity or zero:
    ``peepholes`` the :math:`w_{c\cdot}` terms, ``layer_norm`` the three ``LN``,
    ``cell_clip`` the clip, ``proj_size`` the :math:`W_{hr}` projection.

    Parameters (B: batch, H_in: ``input_size``, H: ``hidden_size``, P: ``proj_size``,
    H_out = P if ``proj_size > 0`` else H, G = 3 with ``coupled_gates`` else 4):

    ===============  ================  ================================================
    name             shape             notes
    ===============  ================  ================================================
    ``weight_ih``    ``(G*H, H_in)``   rows in gate order i, f, g, o (torch's); with
                                       ``coupled_gates`` f, g, o (no input-gate rows)
    ``weight_hh``    ``(G*H, H_out)``  same row order
    ``bias_ih``      ``(G*H,)``        only with ``bias``
    ``bias_hh``      ``(G*H,)``        only with ``bias``
    ``weight_hr``    ``(P, H)``        only with ``proj_size > 0`` (``torch.nn.LSTM``)
    ``weight_ci``    ``(H,)``          peephole to i; with ``peepholes`` and not coupled
    ``weight_cf``    ``(H,)``          peephole to f; with ``peepholes``
    ``weight_co``    ``(H,)``          peephole to o; with ``peepholes``
    ``ln_ih``        LayerNorm(G*H)    with ``layer_norm``
    ``ln_hh``        LayerNorm(G*H)    with ``layer_norm``
    ``ln_c``         LayerNorm(H)      with ``layer_norm``
    ===============  ================  ================================================

    Initialisation: every parameter above except the layer norms is drawn from
    :math:`U(-1/\sqrt{H}, 1/\sqrt{H})` as in ``torch.nn.LSTMCell``; the layer norms start
    as weight 1, bias 0. Then, if ``bias`` and ``forget_bias`` is not ``None``, the
    forget-gate slice of ``bias_ih`` is set to ``forget_bias`` and that of ``bias_hh`` to
    0, so the forget gate's total bias starts at exactly ``forget_bias`` (Keras
    ``unit_forget_bias``; Jozefowicz et al. 2015). ``forget_bias`` is only a starting
    point: nothing is added in ``forward``, so a loaded ``torch.nn.LSTMCell`` state_dict
    gives exactly torch's result. ``forget_bias=None`` keeps torch's uniform draw for the
    whole bias; ``forget_bias=0.0`` starts the forget bias at 0.

    Layer normalisation follows PyTorch's benchmark ``LayerNormLSTMCell``
    (``benchmarks/fastrnns/custom_lstms.py``); the biases (if any) are added after the
    normalisations. The cell clip applies after ``LN_c``, so the clipped value is both
    the carried state and what the output gate and :math:`\tanh` see.

    Args:
        input_size: H_in.
        hidden_size: H, the size of the cell state.
        bias: create ``bias_ih`` and ``bias_hh``.
        forget_bias: initial total forget-gate bias (see above), or ``None``.
        peepholes: add diagonal peephole connections from the cell state to the gates.
        coupled_gates: tie the input gate to the forget gate, :math:`i_t = 1 - f_t`.
        proj_size: if ``> 0``, project the output to this size (must be ``< hidden_size``).
        cell_clip: if given (``> 0``), clip the cell state to ``[-cell_clip, cell_clip]``.
        layer_norm: add layer normalisation (``ln_ih``, ``ln_hh``, ``ln_c``).
        device, dtype: where and in what dtype to create the parameters.

    Call: ``output, (h, c) = cell(x, (h, c))`` with ``x`` ``(B, H_in)``, ``h``
    ``(B, H_out)``, ``c`` ``(B, H)``; ``state=None`` means zeros. ``output`` is ``h``.

    Example:
        >>> import torch
        >>> from rnnkit.cells import LSTMCell
        >>> cell = LSTMCell(3, 8, peepholes=True, proj_size=4, cell_clip=3.0)
        >>> out, (h, c) = cell(torch.randn(2, 3))
        >>> out.shape, c.shape, cell.state_size, cell.output_size
        (torch.Size([2, 4]), torch.Size([2, 8]), (4, 8), 4)
    """

    compiled_adapter = LSTMAdapter

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        forget_bias: float | None = 1.0,
        peepholes: bool = False,
        coupled_gates: bool = False,
        proj_size: int = 0,
        cell_clip: float | None = None,
        layer_norm: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = input_size = check_size("input_size", input_size, owner="LSTMCell")
        self.hidden_size = hidden_size = check_size("hidden_size", hidden_size, owner="LSTMCell")
        self.proj_size = proj_size = check_proj_size("LSTMCell", proj_size, hidden_size)
        self.bias = check_flag("LSTMCell", "bias", bias)
        self.peepholes = check_flag("LSTMCell", "peepholes", peepholes)
        self.coupled_gates = check_flag("LSTMCell", "coupled_gates", coupled_gates)
        self.layer_norm = check_flag("LSTMCell", "layer_norm", layer_norm)
        self.forget_bias = check_real("LSTMCell", "forget_bias", forget_bias, optional=True)
        self.cell_clip = check_positive("LSTMCell", "cell_clip", cell_clip)

        output_size = proj_size if proj_size > 0 else hidden_size
        self.output_size = output_size
        self.state_size = (output_size, hidden_size)
        self.num_gates = 3 if coupled_gates else 4
        gate_rows = self.num_gates * hidden_size
        factory = factory_kwargs("LSTMCell", device, dtype)
        self.weight_ih = nn.Parameter(torch.empty(gate_rows, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(gate_rows, output_size, **factory))
        for name in ("bias_ih", "bias_hh"):
            self.register_parameter(name, optional_parameter(bias, gate_rows, **factory))
        self.register_parameter(
            "weight_hr", optional_parameter(proj_size > 0, proj_size, hidden_size, **factory)
        )
        for name, wanted in (
            ("weight_ci", peepholes and not coupled_gates),
            ("weight_cf", peepholes),
            ("weight_co", peepholes),
        ):
            self.register_parameter(name, optional_parameter(wanted, hidden_size, **factory))
        if layer_norm:
            self.ln_ih = nn.LayerNorm(gate_rows, **factory)
            self.ln_hh = nn.LayerNorm(gate_rows, **factory)
            self.ln_c = nn.LayerNorm(hidden_size, **factory)
        else:
            self.ln_ih = self.ln_hh = self.ln_c = None
        self.reset_parameters()

    @property
    def forget_slice(self) -> slice:
        """Rows of ``weight_ih``/``weight_hh``/biases that feed the forget gate."""
        start = 0 if self.coupled_gates else self.hidden_size
        return slice(start, start + self.hidden_size)

    def reset_parameters(self) -> None:
        """Re-draw the parameters as described in the class docstring."""
        self._reset_uniform(1.0 / math.sqrt(self.hidden_size))
        init_forget_bias(self, self.forget_slice)

    def weights(self) -> RF.LSTMWeights:
        """This cell's parameters as :class:`rnnkit.functional.LSTMWeights`."""

        norm = layer_norm_params
        return RF.LSTMWeights(
            self.weight_ih,
            self.weight_hh,
            self.bias_ih,
            self.bias_hh,
            weight_hr=self.weight_hr,
            weight_ci=self.weight_ci,
            weight_cf=self.weight_cf,
            weight_co=self.weight_co,
            ln_ih=norm(self.ln_ih),
            ln_hh=norm(self.ln_hh),
            ln_c=norm(self.ln_c),
        )

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        state = self.prepare_call(x, state)
        return RF.lstm_step(
            x, state, self.weights(), coupled_gates=self.coupled_gates, cell_clip=self.cell_clip
        )

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        defaults = {
            "bias": True,
            "forget_bias": 1.0,
            "peepholes": False,
            "coupled_gates": False,
            "proj_size": 0,
            "cell_clip": None,
            "layer_norm": False,
        }
        for name, default in defaults.items():
            value = getattr(self, name)
            if value != default:
                text += f", {name}={value!r}"
        return text
