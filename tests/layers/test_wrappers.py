"""TF1's cell wrappers (rnnkit/layers/wrappers.py).

Two kinds of oracle:

* TF1's own tests with their expected numbers, ported from TensorFlow 1.x
  ``tensorflow/contrib/rnn/python/kernel_tests/core_rnn_cell_test.py`` (``RNNCellTest``'s
  ``testOutputProjectionWrapper``, ``testInputProjectionWrapper``, ``testResidualWrapper*``,
  ``testEmbeddingWrapper*`` and the ``DropoutWrapperTest`` class; Apache-2.0). Their cells
  are built under ``constant_initializer(0.5)``: every kernel 0.5, TF1's GRU gate bias 1.0
  (candidate bias 0), LSTM biases 0 plus ``forget_bias=1.0``, ``_Linear`` biases 0. rnnkit's
  GRU with ``reset_after=False`` and LSTM hold the same numbers (TF's LSTM state is
  ``(c, h)``, rnnkit's ``(h, c)``).
* the same computation written out by hand with torch: ``torch.nn`` cells with copied
  weights, the embedding looked up by indexing, the projections as matrix products, and the
  dropout masks drawn from a generator seeded as the wrapper's, in the documented order.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rnnkit.cells import GRUCell, LSTMCell, MultiCell
from rnnkit.errors import DTypeError, ShapeError
from rnnkit.layers import (
    Bidirectional,
    DeviceWrapper,
    DropoutWrapper,
    EmbeddingWrapper,
    Fold,
    InputProjectionWrapper,
    OutputProjectionWrapper,
    Recurrence,
    ResidualWrapper,
    Sequence,
    UnfoldFrom,
)
from rnnkit.layers.wrappers import state_leaf_names
from tests.helpers import gradcheck_cell

# ----------------------------------------------------------------------------- TF1's cells


def tf_gru(input_size: int, units: int) -> GRUCell:
    """TF1 ``GRUCell(units)`` under ``constant_initializer(0.5)``."""
    cell = GRUCell(input_size, units, reset_after=False)
    with torch.no_grad():
        for param in (cell.weight_ih, cell.weight_hh):
            param.fill_(0.5)
        cell.bias_ih.zero_()
        cell.bias_hh.zero_()
        cell.bias_ih[: 2 * units] = 1.0  # TF1's gate bias (r, z) starts at 1.0
    return cell


def tf_lstm(input_size: int, units: int) -> LSTMCell:
    """TF1 ``LSTMCell(units)`` (forget_bias=1.0) under ``constant_initializer(0.5)``."""
    cell = LSTMCell(input_size, units)
    with torch.no_grad():
        cell.weight_ih.fill_(0.5)
        cell.weight_hh.fill_(0.5)
        cell.bias_ih.zero_()
        cell.bias_hh.zero_()
        cell.bias_ih[units: 2 * units] = 1.0  # torch gate order i, f, g, o: f's slice
    return cell


def constant(module: nn.Module, value: float = 0.5) -> nn.Module:
    """A wrapper's own parameters as TF1's ``constant_initializer`` sets them (biases 0)."""
    with torch.no_grad():
        for param in module.parameters(recurse=False):
            param.fill_(value)
        for child in module.children():
            if isinstance(child, nn.Linear):
                child.weight.fill_(value)
                child.bias.zero_()
    return module


def close(got, want, atol=1e-5):
    torch.testing.assert_close(got, torch.as_tensor(want, dtype=got.dtype), atol=atol, rtol=1e-5)


# ------------------------------------------------------------------ TF1's RNNCellTest ports


def test_output_projection_wrapper_tf1():
    cell = constant(OutputProjectionWrapper(tf_gru(3, 3), 2))
    g, new_m = cell(torch.ones(1, 3), torch.full((1, 3), 0.1))
    assert new_m.shape == (1, 3)
    close(g, [[0.231907, 0.231907]])


def test_input_projection_wrapper_tf1():
    cell = constant(InputProjectionWrapper(tf_gru(3, 3), num_proj=3, input_size=2))
    g, new_m = cell(torch.ones(1, 2), torch.full((1, 3), 0.1))
    assert new_m.shape == (1, 3)
    close(g, [[0.154605, 0.154605, 0.154605]])


def test_input_projection_wrapper_infers_its_input_size_as_tf1():
    cell = InputProjectionWrapper(tf_gru(3, 3), num_proj=3)  # a lazy projection
    assert cell.input_size is None
    cell(torch.ones(1, 2), torch.full((1, 3), 0.1))  # materialises the (3, 2) weight
    assert cell.input_size == 2
    constant(cell)
    close(cell(torch.ones(1, 2), torch.full((1, 3), 0.1))[0], [[0.154605] * 3])


def test_residual_wrapper_tf1():
    base = tf_gru(3, 3)
    x, m = torch.ones(1, 3), torch.full((1, 3), 0.1)
    g, m_new = base(x, m)
    g_res, m_new_res = ResidualWrapper(base)(x, m)
    close(g_res, g + 1.0)  # residual connection
    torch.testing.assert_close(m_new_res, m_new)  # the state is untouched


def test_residual_wrapper_with_slice_tf1():
    base = tf_gru(5, 3)
    x, m = torch.ones(1, 5), torch.full((1, 3), 0.1)
    g, m_new = base(x, m)
    g_res, m_new_res = ResidualWrapper(base, lambda inp, out: inp[:, :3] + out)(x, m)
    close(g_res, g + 1.0)
    torch.testing.assert_close(m_new_res, m_new)


def test_embedding_wrapper_tf1():
    cell = constant(EmbeddingWrapper(tf_gru(2, 2), embedding_classes=3, embedding_size=2))
    assert cell.output_size == 2
    g, new_m = cell(torch.tensor([[1]]), torch.full((1, 2), 0.1))
    assert new_m.shape == (1, 2)
    close(g, [[0.17139, 0.17139]])


def test_embedding_wrapper_with_dynamic_rnn_tf1():
    # TF1: "This will fail if output's dtype is inferred from input's."
    cell = EmbeddingWrapper(LSTMCell(2, 1), embedding_classes=1, embedding_size=2)
    outputs, (h, c) = Recurrence(cell, batch_first=True)(
        torch.tensor([[[0], [0]]]), lengths=torch.tensor([2]))
    assert outputs.dtype == h.dtype == c.dtype == torch.float32
    assert outputs.shape == (1, 2, 1)


# -------------------------------------------------------------- TF1's DropoutWrapperTest

TRUE_FULL_OUTPUT = [[[0.751109] * 3], [[0.895509] * 3]]
TRUE_FULL_FINAL_C = [[1.949385] * 3]


def run_tf1_dropout(batch_size=None, time_steps=None, **kwargs):
    """TF1's ``_testDropoutWrapper``: a DropoutWrapper(LSTMCell(3)) over time-major input
    from the state ``c = h = 0.1``, in training mode."""
    if batch_size is None:
        batch_size, time_steps = 1, 2
        x = torch.tensor([[[2.0, 2.0, 2.0]], [[1.0, 1.0, 1.0]]])
    else:
        x = torch.randn(time_steps, batch_size, 3, generator=torch.Generator().manual_seed(1))
    m = (torch.full((batch_size, 3), 0.1), torch.full((batch_size, 3), 0.1))
    layer = Recurrence(DropoutWrapper(tf_lstm(3, 3), **kwargs)).train()
    outputs, (h, c) = layer(x, m)
    assert outputs.shape == (time_steps, batch_size, 3)
    assert h.shape == c.shape == (batch_size, 3)
    return outputs, h, c


def test_dropout_wrapper_keep_all_tf1():
    outputs, h, c = run_tf1_dropout(input_keep_prob=1.0, output_keep_prob=1.0,
                                    state_keep_prob=1.0)
    close(outputs, TRUE_FULL_OUTPUT)
    close(h, TRUE_FULL_OUTPUT[1])
    close(c, TRUE_FULL_FINAL_C)


def test_dropout_wrapper_keep_no_output_tf1():
    outputs, h, c = run_tf1_dropout(output_keep_prob=1e-10)
    close(outputs, torch.zeros(2, 1, 3))
    close(h, TRUE_FULL_OUTPUT[1])
    close(c, TRUE_FULL_FINAL_C)


def test_dropout_wrapper_keep_no_state_except_lstm_memory_tf1():
    outputs, h, c = run_tf1_dropout(state_keep_prob=1e-10)
    close(outputs[0], TRUE_FULL_OUTPUT[0])
    # the second output reads the zeroed h
    assert (outputs[1] - torch.tensor(TRUE_FULL_OUTPUT[1])).norm() > 1e-4
    close(h, torch.zeros(1, 3))  # h was dropped ...
    close(c, [[1.713925] * 3])  # ... c, an LSTM's memory, never is


def test_dropout_wrapper_keep_no_input_tf1():
    outputs, h, c = run_tf1_dropout(input_keep_prob=1e-10)
    assert (outputs - torch.tensor(TRUE_FULL_OUTPUT)).norm() > 1e-4
    assert (h - torch.tensor(TRUE_FULL_OUTPUT[1])).norm() > 1e-4
    assert (c - torch.tensor(TRUE_FULL_FINAL_C)).norm() > 1e-4


def test_dropout_wrapper_with_seed_tf1():
    first = run_tf1_dropout(input_keep_prob=0.5, output_keep_prob=0.5, state_keep_prob=0.5,
                            seed=10)
    second = run_tf1_dropout(input_keep_prob=0.5, output_keep_prob=0.5, state_keep_prob=0.5,
                             seed=10)
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dropout_wrapper_recurrent_output_tf1():
    outputs, _, _ = run_tf1_dropout(output_keep_prob=0.8, variational_recurrent=True,
                                    input_size=3, batch_size=5, time_steps=7)
    kept = outputs.abs() > 1e-6
    for step in kept[1:]:  # the same dropout pattern at every step
        assert torch.equal(step, kept[0])
    assert not kept.all()  # (0.8 over 15 units: some dropped, with this seed)


def test_dropout_wrapper_recurrent_state_input_and_output_with_seed_tf1():
    options = dict(input_keep_prob=0.9, output_keep_prob=0.9, state_keep_prob=0.9,
                   variational_recurrent=True, input_size=3, batch_size=5, time_steps=7,
                   seed=-234987)
    first, second = run_tf1_dropout(**options), run_tf1_dropout(**options)
    kept = first[0].abs() > 1e-6
    for step in kept:
        assert torch.equal(step, kept[0])
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------- the same computation, by hand


def torch_gru(cell: GRUCell) -> nn.GRUCell:
    twin = nn.GRUCell(cell.input_size, cell.hidden_size)
    twin.load_state_dict(cell.state_dict())
    return twin


def torch_lstm(cell: LSTMCell) -> nn.LSTMCell:
    twin = nn.LSTMCell(cell.input_size, cell.hidden_size)
    twin.load_state_dict(cell.state_dict())
    return twin


def bernoulli(generator, shape, keep):
    return torch.empty(shape).bernoulli_(keep, generator=generator)


@pytest.mark.parametrize("shape", [(4, 5, 2, 6, 5, [5, 2, 4]), (1, 1, 1, 1, 1, [1])],
                         ids=["small", "tiny"])
@pytest.mark.parametrize("variational", [False, True])
def test_a_wrapper_stack_equals_the_computation_by_hand(variational, shape):
    """MultiCell of [Dropout(Residual(GRU)), OutputProjection(LSTM)] under an
    InputProjection, run by Recurrence with lengths, in training mode. ``shape``: projection
    P (the GRU's size), LSTM L, output O, input F, steps, lengths (one per sequence)."""
    P, L, O, F, steps, lengths = shape
    torch.manual_seed(0)
    gru, lstm = GRUCell(P, P), LSTMCell(P, L)
    stack = MultiCell([
        DropoutWrapper(ResidualWrapper(gru), input_keep_prob=0.9, output_keep_prob=0.7,
                       state_keep_prob=0.8, variational_recurrent=variational, seed=3),
        OutputProjectionWrapper(lstm, O, activation="tanh"),
    ])
    cell = InputProjectionWrapper(stack, num_proj=P, activation="relu", input_size=F)
    batch = len(lengths)
    x = torch.randn(steps, batch, F)
    lengths = torch.tensor(lengths)
    outputs, (h1, (h2, c2)) = Recurrence(cell).train()(x, lengths=lengths)

    # by hand
    t_gru, t_lstm = torch_gru(gru), torch_lstm(lstm)
    w_in, b_in = cell.projection.weight, cell.projection.bias
    w_out, b_out = stack[1].projection.weight, stack[1].projection.bias
    generator = torch.Generator().manual_seed(3)
    hg = torch.zeros(batch, P)
    hl, cl = torch.zeros(batch, L), torch.zeros(batch, L)
    masks = None
    want = torch.zeros(steps, batch, O)
    with torch.no_grad():
        for t in range(steps):
            running = (t < lengths)[:, None]  # (B, 1)
            xt = torch.where(running, x[t], 0.0)
            p = torch.relu(xt @ w_in.T + b_in)  # (B, P)
            if masks is None or not variational:
                m_in = bernoulli(generator, (batch, P), 0.9)
                m_state = bernoulli(generator, (batch, P), 0.8)
                m_out = bernoulli(generator, (batch, P), 0.7)
                masks = (m_in, m_state, m_out)
            m_in, m_state, m_out = masks
            p = p / 0.9 * m_in
            h_new = t_gru(p, hg)
            o1 = p + h_new  # residual
            h_new = h_new / 0.8 * m_state  # the state dropout
            o1 = o1 / 0.7 * m_out  # the output dropout
            hl_new, cl_new = t_lstm(o1, (hl, cl))
            y = torch.tanh(hl_new @ w_out.T + b_out)
            hg = torch.where(running, h_new, hg)
            hl = torch.where(running, hl_new, hl)
            cl = torch.where(running, cl_new, cl)
            want[t] = torch.where(running, y, 0.0)
    torch.testing.assert_close(outputs, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h1, hg, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h2, hl, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(c2, cl, atol=1e-6, rtol=1e-5)


def test_embedding_wrapper_under_drivers_equals_lookup_by_hand():
    torch.manual_seed(1)
    inner = GRUCell(3, 4)
    cell = EmbeddingWrapper(inner, embedding_classes=7, embedding_size=3)
    ids = torch.tensor([[1, 6, 0, 2], [5, 5, 3, 0]])  # (B, T)
    lengths = torch.tensor([4, 3])
    out, h = Recurrence(cell, batch_first=True)(ids.unsqueeze(-1), lengths=lengths)
    last, h_fold = Fold(cell, batch_first=True)(ids.unsqueeze(-1), lengths=lengths)
    twin = torch_gru(inner)
    with torch.no_grad():
        for row in range(2):
            state = torch.zeros(1, 4)
            for t in range(int(lengths[row])):
                state = twin(cell.embedding[ids[row, t]][None], state)
                torch.testing.assert_close(out[row, t], state[0])
            torch.testing.assert_close(h[row], state[0])
            torch.testing.assert_close(last[row], state[0])
    assert out[1, 3].eq(0).all()  # padding
    torch.testing.assert_close(h_fold, h)


def test_embedding_wrapper_generates_with_unfold_from():
    """UnfoldFrom feeds each step's argmax id back in: a greedy decoder loop."""
    torch.manual_seed(2)
    cell = OutputProjectionWrapper(
        EmbeddingWrapper(GRUCell(3, 8), embedding_classes=5, embedding_size=3), 5)
    generate = UnfoldFrom(cell, head=lambda logits: logits.argmax(-1, keepdim=True),
                          max_length=6)
    state0 = torch.randn(2, 8)
    ids, final, lengths = generate(torch.tensor([[0], [4]]), state=state0.clone())
    with torch.no_grad():
        for row in range(2):
            token, state = torch.tensor([[0], [4]])[row], state0[row:row + 1]
            for t in range(6):
                logits, state = cell(token, state)
                token = logits.argmax(-1)
                assert int(ids[t, row, 0]) == int(token)
            torch.testing.assert_close(final[row], state[0])
    assert lengths.tolist() == [6, 6]


def test_wrapped_cells_run_in_bidirectional_and_sequence():
    torch.manual_seed(3)
    forward = ResidualWrapper(GRUCell(4, 4))
    backward = OutputProjectionWrapper(LSTMCell(4, 3), 4)
    layer = Bidirectional(Recurrence(forward, batch_first=True),
                          backward_layer=Recurrence(backward, batch_first=True))
    x = torch.randn(2, 5, 4)
    lengths = torch.tensor([5, 3])
    out, _ = layer(x, lengths=lengths)
    want_forward, _ = Recurrence(forward, batch_first=True)(x, lengths=lengths)
    want_backward, _ = Recurrence(backward, batch_first=True, go_backwards=True)(
        x, lengths=lengths)
    torch.testing.assert_close(out, torch.cat([want_forward, want_backward], dim=-1))
    features = Sequence(DropoutWrapper(forward, output_keep_prob=0.5).eval())(x)
    torch.testing.assert_close(features, Fold(forward, batch_first=True)(x)[0])
    # the default backward copy is re-initialised, wrappers' own parameters included
    both = Bidirectional(OutputProjectionWrapper(GRUCell(4, 4), 2), batch_first=True)
    assert both(x)[0].shape == (2, 5, 4)
    copied = both.backward_layer.cell
    assert not torch.equal(copied.projection.weight, both.forward_layer.cell.projection.weight)


# ------------------------------------------------------------------- dropout behaviour


def test_dropout_wrapper_in_eval_mode_is_the_cell():
    cell = LSTMCell(3, 4)
    wrapper = DropoutWrapper(cell, 0.5, 0.5, 0.5, variational_recurrent=True).eval()
    x = torch.randn(6, 2, 3)
    # the loop for both: the bare LSTMCell would take the compiled kernel (other rounding)
    torch.testing.assert_close(Recurrence(wrapper)(x)[0], Recurrence(cell, engine="loop")(x)[0],
                               rtol=0, atol=0)


def test_dropout_rates_and_scaling():
    """Each output unit survives with probability p and is scaled by 1/p."""
    torch.manual_seed(4)
    cell = DropoutWrapper(ResidualWrapper(GRUCell(8, 8)), output_keep_prob=0.3).train()
    x = torch.randn(4000, 8)
    raw, _ = cell.cell(x, torch.zeros(4000, 8))
    out, _ = cell(x, torch.zeros(4000, 8))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.02
    torch.testing.assert_close(out[kept], raw[kept] / 0.3)


def test_variational_masks_are_per_sequence_and_redrawn_each_call():
    torch.manual_seed(5)
    layer = Recurrence(DropoutWrapper(GRUCell(3, 16), output_keep_prob=0.5,
                                      variational_recurrent=True)).train()
    x = torch.randn(6, 8, 3)
    first = layer(x)[0] != 0  # (T, B, H)
    assert torch.equal(first, first[:1].expand_as(first))  # the same at every step
    assert not torch.equal(first[0, 0], first[0, 1])  # each sequence its own (TF1: shared)
    second = layer(x)[0] != 0
    assert not torch.equal(first, second)  # a new mask for a new call


def test_fresh_masks_every_step_without_variational():
    torch.manual_seed(6)
    layer = Recurrence(DropoutWrapper(GRUCell(3, 16), output_keep_prob=0.5)).train()
    kept = layer(torch.randn(6, 2, 3))[0] != 0
    assert not torch.equal(kept[0], kept[1])


def test_dropout_state_filter_visitor_chooses_the_state_tensors():
    names = []

    def drop_c_only(name):
        names.append(name)
        return name.endswith("c")

    cell = MultiCell([LSTMCell(3, 3), GRUCell(3, 3)])
    wrapper = DropoutWrapper(cell, state_keep_prob=1e-10,
                             dropout_state_filter_visitor=drop_c_only).train()
    state = cell.initial_state(2)
    state = ((state[0][0] + 1, state[0][1] + 1), state[1] + 1)
    _, ((h1, c1), h2) = wrapper(torch.randn(2, 3), state)
    assert names == ["cell 0/h", "cell 0/c", "cell 1/h"]
    assert c1.eq(0).all() and h1.ne(0).all() and h2.ne(0).all()
    _, ((h1, c1), h2) = DropoutWrapper(cell, state_keep_prob=1e-10).train()(
        torch.randn(2, 3), state)
    assert h1.eq(0).all() and h2.eq(0).all() and c1.ne(0).all()  # TF1's default


def test_state_leaf_names_see_through_wrappers():
    cell = ResidualWrapper(MultiCell([OutputProjectionWrapper(LSTMCell(3, 3), 3),
                                      GRUCell(3, 3)]))
    state = cell.initial_state(1)
    assert state_leaf_names(cell, state) == ["cell 0/h", "cell 0/c", "cell 1/h"]


# ------------------------------------------------------------------------- device, grads


def test_device_wrapper_pins_the_cell_and_returns_to_the_input_device():
    cell = DeviceWrapper(GRUCell(3, 4), "cpu")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    cell.double()  # dtype changes apply
    out, h = Recurrence(cell)(x)
    assert out.dtype == h.dtype == torch.float64 and cell.device == "cpu"
    twin = torch_gru(cell.cell).double()
    state = torch.zeros(2, 4, dtype=torch.float64)
    for t in range(5):
        state = twin(x[t], state)
    torch.testing.assert_close(h, state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_wrapper_runs_the_cell_on_the_gpu():
    layer_0 = DeviceWrapper(GRUCell(3, 4), "cuda:0")
    stack = MultiCell([layer_0, LSTMCell(4, 4)])
    model = Recurrence(stack).to("cpu")  # the wrapped cell stays on the GPU
    assert next(layer_0.cell.parameters()).device.type == "cuda"
    out, (h0, (h1, c1)) = model(torch.randn(5, 2, 3))
    assert out.device.type == h0.device.type == "cpu"
    reference = copy.deepcopy(layer_0.cell).cpu()
    state = torch.zeros(2, 4)
    x = torch.randn(5, 2, 3)
    for t in range(5):
        _, state = reference(x[t], state)
    torch.testing.assert_close(model(x)[1][0], state, atol=1e-5, rtol=1e-4)


def test_gradcheck_through_a_wrapper_stack():
    torch.manual_seed(7)
    cell = OutputProjectionWrapper(
        ResidualWrapper(InputProjectionWrapper(LSTMCell(3, 3), 3, "tanh", input_size=3)), 2,
        "sigmoid").double()
    state = tuple(torch.randn(2, 3, dtype=torch.float64) for _ in range(2))
    gradcheck_cell(cell, torch.randn(2, 3, dtype=torch.float64), state)


# -------------------------------------------------------------------------------- errors


class BareCell(nn.Module):
    """A user's cell that declares only its state size (no input or output size)."""

    state_size = 4

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.GRUCell(3, 4)

    def forward(self, x, h):
        h = self.inner(x, h)
        return h, h


def test_clear_errors():
    with pytest.raises(ValueError, match="ResidualWrapper: the cell reads 3 features and "
                                         "outputs 4"):
        ResidualWrapper(GRUCell(3, 4))
    with pytest.raises(ShapeError, match=r"the input \(2, 3\) and the cell's output "
                                         r"\(2, 4\) differ in shape; pass residual_fn"):
        ResidualWrapper(BareCell())(torch.randn(2, 3), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="must be a recurrent cell"):
        ResidualWrapper(nn.Linear(2, 2))
    embed = EmbeddingWrapper(GRUCell(2, 2), embedding_classes=3, embedding_size=2)
    with pytest.raises(DTypeError, match="integer token ids"):
        embed(torch.randn(2, 1), None)
    with pytest.raises(ValueError, match=r"token id 3 is outside \[0, embedding_classes=3\)"):
        embed(torch.tensor([[3]]), None)
    with pytest.raises(ValueError, match="the cell reads 2 features but embedding_size=5"):
        EmbeddingWrapper(GRUCell(2, 2), 3, 5)
    with pytest.raises(ValueError, match=r"output_keep_prob must be in \(0, 1\], got 0"):
        DropoutWrapper(GRUCell(2, 2), output_keep_prob=0)
    with pytest.raises(ValueError, match="reads token ids"):
        DropoutWrapper(embed, input_keep_prob=0.5)
    with pytest.raises(ShapeError, match=r"expected input of shape \(batch, 4\)"):
        InputProjectionWrapper(GRUCell(2, 2), 2, input_size=4)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="unknown activation 'tanhh'"):
        OutputProjectionWrapper(GRUCell(2, 2), 2, activation="tanhh")
    with pytest.raises(ValueError, match="invalid device"):
        DeviceWrapper(GRUCell(2, 2), "nowhere")
