"""rnnkit.diagnostics against independent oracles: autograd on the hidden states of
hand-written torch loops (``retain_grad``), and a linear RNN whose gradient is known in closed
form, dL/dh_t = (W^T)^(T-t) dL/dh_T for a loss of h_T alone."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.diagnostics import GradientFlow, gradient_flow, plot_gradient_flow


def _norms(grads: list[list[torch.Tensor | None]], steps: int) -> torch.Tensor:
    """Per step, the norm over the batch of per-sequence (H,) gradients (None = no step)."""
    out = torch.zeros(steps, dtype=torch.float64)
    for per_sequence in grads:
        for t, g in enumerate(per_sequence):
            if g is not None:
                out[t] += g.double().pow(2).sum()
    return out.sqrt()


class _Tagger(nn.Module):
    """A drop-in stack and a head on every step, so the loss reaches h_t directly and
    through later steps."""

    def __init__(self, layer: nn.Module, features: int) -> None:
        super().__init__()
        self.rnn = layer
        self.head = nn.Linear(features, 1)

    def forward(self, x, lengths=None):
        out, _ = self.rnn(x, lengths=lengths)   # (B, T, D*H)
        return self.head(out).squeeze(-1)       # (B, T)


def _tagger_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output * target).sum()             # linear in each step's output, padding 0


def test_bidirectional_lstm_with_lengths_matches_a_hand_written_loop():
    torch.manual_seed(0)
    H, F, T = 4, 3, 7
    lstm = rnnkit.LSTM(F, H, num_layers=2, bidirectional=True, batch_first=True)
    model = _Tagger(lstm, 2 * H)
    x = torch.randn(3, T, F)
    lengths = torch.tensor([7, 4, 2])
    target = torch.randn(3, T) * (torch.arange(T)[None] < lengths[:, None])
    flow = gradient_flow(model, (x, target, lengths), loss=_tagger_loss)
    assert list(flow) == ["layer 1", "layer 1 reverse", "layer 2", "layer 2 reverse"]

    # oracle: torch.nn.LSTMCell with the drop-in's weights, each sequence alone, unpadded
    def cell(layer: int, direction: int) -> nn.LSTMCell:
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        c = nn.LSTMCell(F if layer == 0 else 2 * H, H)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(c, name).copy_(getattr(lstm, name + suffix))
        return c

    cells = {(layer, d): cell(layer, d) for layer in range(2) for d in range(2)}
    hidden: dict[tuple[int, int], list[list[torch.Tensor]]] = {k: [] for k in cells}
    total = 0.0
    for b in range(3):
        n = int(lengths[b])
        layer_input = list(x[b, :n].unbind(0))  # n x (F,)
        for layer in range(2):
            outs = []
            for d in range(2):
                h = c = torch.zeros(1, H)
                steps: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
                for t in (range(n - 1, -1, -1) if d else range(n)):
                    h, c = cells[(layer, d)](layer_input[t][None], (h, c))
                    h.retain_grad()
                    steps[t] = h
                hidden[(layer, d)].append(steps)
                outs.append(steps)
            layer_input = [torch.cat([f[0], r[0]]) for f, r in zip(*outs, strict=True)]
        out = model.head(torch.stack(layer_input)).squeeze(-1)  # (n,)
        total = total + (out * target[b, :n]).sum()
    total.backward()
    assert flow.loss == pytest.approx(float(total.detach()), rel=1e-5)
    for (layer, d), per_sequence in hidden.items():
        grads = [[h.grad[0] for h in steps] for steps in per_sequence]
        label = f"layer {layer + 1}" + (" reverse" if d else "")
        torch.testing.assert_close(flow[label], _norms(grads, T), rtol=1e-5, atol=1e-7)


def test_bidirectional_cell_stack_of_a_task_model_matches_its_cells_stepped_by_hand():
    # SequenceClassifier(cell="indrnn", bidirectional) runs Bidirectional(Recurrence): the
    # backward half runs forwards over each sequence reversed within its length
    torch.manual_seed(1)
    model = rnnkit.SequenceClassifier(2, 3, cell="indrnn", hidden_size=5, bidirectional=True,
                                      pooling="mean")
    x, lengths = torch.randn(3, 6, 2), torch.tensor([6, 3, 5])
    y = torch.tensor([0, 2, 1])
    loss = nn.CrossEntropyLoss(reduction="sum")
    flow = gradient_flow(model, {"inputs": x, "target": y, "lengths": lengths}, loss=loss)
    layer = model.backbone.layers[0]
    total = 0.0
    hidden = {0: [], 1: []}
    for b in range(3):
        n = int(lengths[b])
        outs = []
        for d, cell in enumerate((layer.forward_layer.cell, layer.backward_layer.cell)):
            h = torch.zeros(1, 5)
            steps = [None] * n
            for t in (range(n - 1, -1, -1) if d else range(n)):
                out, h = cell(x[b, t][None], h)
                h.retain_grad()
                steps[t] = h
            hidden[d].append(steps)
            outs.append(torch.cat(steps))       # (n, 5)
        pooled = torch.cat(outs, dim=-1).mean(0, keepdim=True)   # mean over valid steps
        total = total + loss(model.head(pooled), y[b:b + 1])
    total.backward()
    for d, label in ((0, "layer 1"), (1, "layer 1 reverse")):
        grads = [[h.grad[0] for h in steps] for steps in hidden[d]]
        torch.testing.assert_close(flow[label], _norms(grads, 6), rtol=1e-5, atol=1e-7)


class _LinearCell(nn.Module):
    """h_t = W h_{t-1} + U x_t: a user-written cell (the cell contract: state_size)."""

    def __init__(self, w: torch.Tensor, features: int) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.u = nn.Parameter(torch.randn(w.shape[0], features))
        self.state_size = w.shape[0]
        self.input_size, self.hidden_size, self.output_size = features, w.shape[0], w.shape[0]

    def forward(self, x, h):
        h = h @ self.w.T + x @ self.u.T
        return h, h


@pytest.mark.parametrize("scale", [0.8, 1.15])   # vanishing and exploding
def test_linear_rnn_gradient_is_the_closed_form(scale):
    torch.manual_seed(2)
    H, T = 6, 25
    q, _ = torch.linalg.qr(torch.randn(H, H, dtype=torch.float64))
    w = (scale * q).float()                        # every singular value = scale
    fold = rnnkit.Fold(_LinearCell(w, 2), batch_first=True)
    v = torch.randn(H)

    class Readout(nn.Module):
        def __init__(self):
            super().__init__()
            self.fold = fold

        def forward(self, x):
            last, _ = self.fold(x)                 # (B, H): h_T
            return last @ v                        # (B,)

    x = torch.randn(1, T, 2)
    flow = gradient_flow(Readout(), (x, None), loss=lambda out, _: out.sum())
    expected = torch.stack([torch.linalg.matrix_power(w.T.double(), T - t) @ v.double()
                            for t in range(1, T + 1)]).norm(dim=1)
    torch.testing.assert_close(flow["layer 1"], expected, rtol=1e-4, atol=0)
    # an orthogonal W times `scale`: exactly scale^(T-t) |v|
    geometric = torch.tensor([scale ** (T - t) for t in range(1, T + 1)],
                             dtype=torch.float64) * v.double().norm()
    torch.testing.assert_close(flow["layer 1"], geometric, rtol=1e-4, atol=0)


def test_fast_paths_and_gradients_are_left_as_they_were():
    torch.manual_seed(3)
    model = rnnkit.SequenceRegressor(2, 1, cell="gru", hidden_size=4)
    x, y = torch.randn(2, 5, 2), torch.randn(2, 1)
    engine = model.backbone.drop_in.engine
    before = model(x).detach()
    flow = gradient_flow(model, (x, y))
    assert model.backbone.drop_in.engine == engine
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model(x).detach(), before)
    assert flow.loss == pytest.approx(float(nn.functional.mse_loss(before, y)), rel=1e-5)
    assert torch.isfinite(flow["layer 1"]).all() and (flow["layer 1"] > 0).all()


def test_steps_no_sequence_reaches_are_nan_and_json_gets_none():
    model = rnnkit.SequenceRegressor(1, 1, cell="lstm", hidden_size=3)
    flow = gradient_flow(model, (torch.randn(2, 4, 1), torch.randn(2, 1), torch.tensor([2, 3])))
    assert torch.isnan(flow["layer 1"][3]) and not torch.isnan(flow["layer 1"][:3]).any()
    assert flow.to_dict()["norms"]["layer 1"][3] is None


def test_clear_errors():
    with pytest.raises(ValueError, match="torch.nn run as one kernel: use the drop-ins"):
        gradient_flow(nn.Sequential(nn.LSTM(2, 3)), (torch.randn(4, 1, 2), None))
    model = rnnkit.SequenceRegressor(2, 1, hidden_size=3)
    with pytest.raises(ValueError, match="batch must be"):
        gradient_flow(model, torch.randn(2, 4, 2))
    with pytest.raises(ValueError, match="scalar"):
        gradient_flow(model, (torch.randn(2, 4, 2), torch.randn(2, 1)),
                      loss=lambda out, y: out - y)
    with pytest.raises(KeyError, match="has layer 1"):
        gradient_flow(model, (torch.randn(2, 4, 2), torch.randn(2, 1)))["layer 9"]


def test_plot_gradient_flow_writes_panels(tmp_path):
    pytest.importorskip("matplotlib")
    torch.manual_seed(4)
    x, y = torch.randn(4, 12, 1), torch.randn(4, 1)
    flows = {name: gradient_flow(rnnkit.SequenceRegressor(1, 1, cell=name, hidden_size=4,
                                                          num_layers=2), (x, y))
             for name in ("elman", "gru")}
    path = plot_gradient_flow({"at initialisation": flows, "again": flows},
                              tmp_path / "flow.png", title="t", note="machine")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    plot_gradient_flow(flows, tmp_path / "one.png", layers="last")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp files
    with pytest.raises(TypeError, match="not a GradientFlow"):
        plot_gradient_flow({"a": {"b": 1.0}}, tmp_path / "bad.png")
    assert isinstance(flows["gru"], GradientFlow) and not math.isnan(flows["gru"].loss)


def test_docs_examples_run(capsys):
    from tests.helpers import doc_python_blocks

    namespace: dict = {}
    for i, block in enumerate(doc_python_blocks("diagnostics.md")):
        exec(compile(block, f"docs/diagnostics.md block {i}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "['layer 1', 'layer 1 reverse', 'layer 2', 'layer 2 reverse']" in out
    assert "[0, 2, 4]" in out
