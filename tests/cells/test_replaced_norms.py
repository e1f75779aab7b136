"""A layer-normalised cell's norm slots (``ln_*``) run as the modules they hold: hooks on a
norm run, and a norm replaced by a subclass or another module is used, on every path (the
kernels, which compute ``nn.LayerNorm``'s formula, refuse such a cell and say why).
Oracle: a plain cell whose LayerNorm affine parameters do the same thing by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cells import GRUCell, LSTMCell


class Doubled(nn.LayerNorm):
    """2 * LayerNorm(x): the same as a LayerNorm with weight and bias doubled."""

    def forward(self, x):
        return 2 * super().forward(x)


def _cells(cell_cls, **options):
    torch.manual_seed(0)
    plain = cell_cls(3, 4, layer_norm=True, dtype=torch.float64, **options)
    with torch.no_grad():
        for norm in (plain.ln_ih, plain.ln_hh):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    replaced = cell_cls(3, 4, layer_norm=True, dtype=torch.float64, **options)
    replaced.load_state_dict(plain.state_dict())
    doubled = Doubled(plain.ln_ih.normalized_shape, dtype=torch.float64)
    doubled.load_state_dict(plain.ln_ih.state_dict())
    replaced.ln_ih = doubled
    with torch.no_grad():  # the oracle: the same doubling in the affine parameters
        plain.ln_ih.weight.mul_(2)
        plain.ln_ih.bias.mul_(2)
    return plain, replaced


@pytest.mark.parametrize(("cell_cls", "options"), [
    (LSTMCell, {}), (GRUCell, {}), (GRUCell, {"reset_after": False})])
@pytest.mark.parametrize("engine", ["auto", "loop"])
def test_a_replaced_norm_is_used(cell_cls, options, engine):
    plain, replaced = _cells(cell_cls, **options)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 4])
    expected = rnnkit.Recurrence(plain, engine="loop")(x, lengths=lengths)[0]
    layer = rnnkit.Recurrence(replaced, engine=engine)
    torch.testing.assert_close(layer(x, lengths=lengths)[0], expected, rtol=1e-12, atol=1e-12)
    if engine == "auto":
        text = rnnkit.explain(layer, x)
        assert "ln_ih is not a plain torch.nn.LayerNorm" in text


def test_the_kernels_refuse_a_replaced_norm_and_serve_the_plain_one():
    plain, replaced = _cells(LSTMCell)
    from rnnkit.engine import compiled

    ok, why = compiled.supports(replaced)
    assert not ok and "LSTMCell.ln_ih is not a plain torch.nn.LayerNorm" in why
    assert compiled.supports(plain) == (True, "LSTMCell with layer norm")


@pytest.mark.parametrize("cell_cls", [LSTMCell, GRUCell])
def test_hooks_on_a_norm_run_at_every_step(cell_cls):
    torch.manual_seed(0)
    cell = cell_cls(3, 4, layer_norm=True)
    seen = []
    handle = cell.ln_hh.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    x = torch.randn(5, 2, 3)
    reference = cell_cls(3, 4, layer_norm=True)
    reference.load_state_dict(cell.state_dict())
    out = rnnkit.Recurrence(cell)(x)[0]
    assert seen == [torch.Size([2, cell.ln_hh.normalized_shape[0]])] * 5
    torch.testing.assert_close(out, rnnkit.Recurrence(reference)(x)[0])
    # a hook that changes the output changes the result, as a module hook does
    handle.remove()
    cell.ln_hh.register_forward_hook(lambda module, args, out: out * 0)
    changed = rnnkit.Recurrence(cell)(x)[0]
    assert not torch.allclose(changed, out)
