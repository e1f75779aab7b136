"""GridLSTMCell and BidirectionalGridLSTMCell (issue 14).

Oracles: TF1 contrib's own expected numbers (``tensorflow/contrib/rnn/python/kernel_tests/
rnn_cell_test.py``), a NumPy transcription of TF1's ``GridLSTMCell._compute`` and
``_make_tf_features`` (``tensorflow/contrib/rnn/python/ops/rnn_cell.py``) working on TF1's
variable layout, ``rnnkit.LSTMCell`` with copied weights, and finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.cells import BidirectionalGridLSTMCell, GridLSTMCell, LSTMCell, MultiCell
from rnnkit.errors import ShapeError
from rnnkit.layers import Bidirectional, Fold, Recurrence
from tests.helpers import assert_doctests_pass, gradcheck_cell, randomise

# ---------------------------------------------------------------------------------------------
# TF1's tests, ported. TF1 builds them under variable_scope(initializer=constant(0.5)): every
# weight matrix is 0.5, the biases (created with zeros_initializer) are 0 and forget_bias=1.0
# is added in each step, which is rnnkit's bias with the forget rows at 1.0 (reset's default).
# ---------------------------------------------------------------------------------------------


def tf_constant_init(cell: GridLSTMCell) -> GridLSTMCell:
    with torch.no_grad():
        for name, param in cell.named_parameters():
            if name.startswith("weight"):
                param.fill_(0.5)
    return cell


TF_INPUTS = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 3.0, 3.0, 3.0]])
TF_RAMP_INPUTS = torch.tensor([[1.0, 1.1, 1.2, 1.3], [2.0, 2.1, 2.2, 2.3], [3.0, 3.1, 3.2, 3.3]])


def tf_state(cell: GridLSTMCell, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TF1's tests start every state tensor at 0.1."""
    parts = [torch.full((batch_size, cell.hidden_size), 0.1)] * len(cell.tf_state_names())
    return cell.from_tf_state(parts)


def test_tf_grid_lstm_cell_with_coupled_input_forget_gates():
    # testGridLstmCellWithCoupledInputForgetGates: num_units=2, input_size=4, feature_size=2,
    # frequency_skip=1 (3 windows), couple_input_forget_gates=True.
    expected_output = np.array([
        [0.416383, 0.416383, 0.403238, 0.403238, 0.524020, 0.524020,
         0.565425, 0.565425, 0.557865, 0.557865, 0.609699, 0.609699],
        [0.627331, 0.627331, 0.622393, 0.622393, 0.688342, 0.688342,
         0.708078, 0.708078, 0.694245, 0.694245, 0.715171, 0.715171],
        [0.711050, 0.711050, 0.709197, 0.709197, 0.736533, 0.736533,
         0.744264, 0.744264, 0.737390, 0.737390, 0.745250, 0.745250]])
    expected_state = np.array([
        [0.625556, 0.625556, 0.416383, 0.416383, 0.759134, 0.759134,
         0.524020, 0.524020, 0.798795, 0.798795, 0.557865, 0.557865],
        [0.875488, 0.875488, 0.627331, 0.627331, 0.936432, 0.936432,
         0.688342, 0.688342, 0.941961, 0.941961, 0.694245, 0.694245],
        [0.957327, 0.957327, 0.711050, 0.711050, 0.979522, 0.979522,
         0.736533, 0.736533, 0.980245, 0.980245, 0.737390, 0.737390]])
    cell = tf_constant_init(GridLSTMCell(4, 2, feature_size=2, frequency_skip=1,
                                         num_frequency_blocks=[3], coupled_gates=True))
    output, state = cell(TF_INPUTS, tf_state(cell, 3))
    np.testing.assert_allclose(output.detach().numpy(), expected_output, atol=1e-6)
    parts = cell.to_tf_state(state)
    assert len(parts) == 3 * 2 and all(p.shape == (3, 2) for p in parts)
    np.testing.assert_allclose(torch.cat(parts, 1).detach().numpy(), expected_state, atol=1e-6)


BIDIRECTIONAL_OUTPUT = np.array([
    [0.464130, 0.464130, 0.419165, 0.419165, 0.593283, 0.593283,
     0.738350, 0.738350, 0.661638, 0.661638, 0.866774, 0.866774,
     0.520789, 0.520789, 0.476968, 0.476968, 0.604341, 0.604341,
     0.760207, 0.760207, 0.635773, 0.635773, 0.850218, 0.850218],
    [0.669636, 0.669636, 0.628966, 0.628966, 0.736057, 0.736057,
     0.895927, 0.895927, 0.755559, 0.755559, 0.954359, 0.954359,
     0.692621, 0.692621, 0.652363, 0.652363, 0.737517, 0.737517,
     0.899558, 0.899558, 0.745984, 0.745984, 0.946840, 0.946840],
    [0.751109, 0.751109, 0.711716, 0.711716, 0.778357, 0.778357,
     0.940779, 0.940779, 0.784530, 0.784530, 0.980604, 0.980604,
     0.759940, 0.759940, 0.720652, 0.720652, 0.778552, 0.778552,
     0.941606, 0.941606, 0.781035, 0.781035, 0.977731, 0.977731]])
BIDIRECTIONAL_STATE = np.array([
    [0.710660, 0.710660, 0.464130, 0.464130, 0.877293, 0.877293,
     0.593283, 0.593283, 0.958505, 0.958505, 0.661638, 0.661638,
     0.785405, 0.785405, 0.520789, 0.520789, 0.890836, 0.890836,
     0.604341, 0.604341, 0.928512, 0.928512, 0.635773, 0.635773],
    [0.967579, 0.967579, 0.669636, 0.669636, 1.038811, 1.038811,
     0.736057, 0.736057, 1.058201, 1.058201, 0.755559, 0.755559,
     0.993088, 0.993088, 0.692621, 0.692621, 1.040288, 1.040288,
     0.737517, 0.737517, 1.048773, 1.048773, 0.745984, 0.745984],
    [1.053842, 1.053842, 0.751109, 0.751109, 1.079919, 1.079919,
     0.778357, 0.778357, 1.085620, 1.085620, 0.784530, 0.784530,
     1.062455, 1.062455, 0.759940, 0.759940, 1.080101, 1.080101,
     0.778552, 0.778552, 1.082402, 1.082402, 0.781035, 0.781035]])
# testBidirectionGridLSTMCellWithSliceOffset: the forward half is the same as above
SLICE_OFFSET_OUTPUT = np.concatenate([BIDIRECTIONAL_OUTPUT[:, :12], np.array([
    [0.322645, 0.322645, 0.276068, 0.276068, 0.584654, 0.584654,
     0.690292, 0.690292, 0.640446, 0.640446, 0.840071, 0.840071],
    [0.493625, 0.493625, 0.449236, 0.449236, 0.730828, 0.730828,
     0.865996, 0.865996, 0.749429, 0.749429, 0.944958, 0.944958],
    [0.608587, 0.608587, 0.566683, 0.566683, 0.777345, 0.777345,
     0.925820, 0.925820, 0.782597, 0.782597, 0.976858, 0.976858]])], 1)
SLICE_OFFSET_STATE = np.concatenate([BIDIRECTIONAL_STATE[:, :12], np.array([
    [0.516575, 0.516575, 0.322645, 0.322645, 0.866628, 0.866628,
     0.584654, 0.584654, 0.934002, 0.934002, 0.640446, 0.640446],
    [0.749836, 0.749836, 0.493625, 0.493625, 1.033488, 1.033488,
     0.730828, 0.730828, 1.052186, 1.052186, 0.749429, 0.749429],
    [0.895999, 0.895999, 0.608587, 0.608587, 1.078978, 1.078978,
     0.777345, 0.777345, 1.083843, 1.083843, 0.782597, 0.782597]])], 1)


@pytest.mark.parametrize("offset, expected_output, expected_state", [
    (0, BIDIRECTIONAL_OUTPUT, BIDIRECTIONAL_STATE),          # testBidirectionGridLSTMCell
    (1, SLICE_OFFSET_OUTPUT, SLICE_OFFSET_STATE),            # ...WithSliceOffset
], ids=["no_offset", "backward_slice_offset_1"])
def test_tf_bidirectional_grid_lstm_cell(offset, expected_output, expected_state):
    # num_units=2, feature_size=2, frequency_skip=1, share_time_frequency_weights=True
    cell = tf_constant_init(BidirectionalGridLSTMCell(
        4, 2, feature_size=2, frequency_skip=1, num_frequency_blocks=[3],
        share_time_frequency_weights=True, backward_slice_offset=offset))
    output, state = cell(TF_RAMP_INPUTS, tf_state(cell, 3))
    assert output.shape == (3, 2 * 3 * 4)
    np.testing.assert_allclose(output.detach().numpy(), expected_output, atol=1e-6)
    parts = cell.to_tf_state(state)
    assert len(parts) == 3 * 4 and parts._fields[6] == "bwd_state_f00_b00_c"
    np.testing.assert_allclose(torch.cat(parts, 1).detach().numpy(), expected_state, atol=1e-6)


@pytest.mark.parametrize("blocks", [
    {"num_frequency_blocks": [3]},                                    # testGridLSTMCell
    {"num_frequency_blocks": [1, 1], "start_freqindex_list": [0, 2],  # ...WithFrequencyBlocks
     "end_freqindex_list": [2, 4]},
], ids=["one_block", "two_blocks"])
def test_tf_grid_lstm_cell_smoke(blocks):
    # TF1's own tests only check shapes and that different rows differ ("the numbers in
    # results were not calculated"); the NumPy oracle below checks the numbers.
    cell = tf_constant_init(GridLSTMCell(4, 8, feature_size=2, frequency_skip=1,
                                         coupled_gates=True, **blocks))
    total = sum(blocks["num_frequency_blocks"])
    with torch.no_grad():
        output, state = cell(TF_INPUTS, tf_state(cell, 3))
    assert output.shape == (3, 8 * total * 2)
    parts = cell.to_tf_state(state)
    assert all(p.shape == (3, 8) for p in parts)
    for i in range(1, 3):
        assert float(torch.linalg.norm(output[0] - output[i])) > 1e-6
        assert float(torch.linalg.norm(parts.state_f00_b00_c[0] - parts.state_f00_b00_c[i])) > 1e-6
    expected_output, expected_state = tf_numpy_grid(cell, TF_INPUTS,
                                                    cell.to_tf_state(tf_state(cell, 3)))
    np.testing.assert_allclose(output.detach().numpy(), expected_output, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(torch.cat(parts, 1).detach().numpy(), expected_state,
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# NumPy transcription of TF1's GridLSTMCell on TF1's variable layout
# ---------------------------------------------------------------------------------------------


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def tf_variables(cell: GridLSTMCell, suffix: str = "") -> list[dict[str, np.ndarray]]:
    """rnnkit's parameters as TF1's variables, per block: ``W_f``/``W_t`` ``(F + 2H, G*H)``
    over ``[x; m_time; m_freq]`` with gates in TF1's order (i, j, f, o; coupled i, j, o),
    biases without the forget_bias TF1 adds in each step, and the ``*_diag_*`` peepholes."""
    H, G = cell.hidden_size, cell.num_gates
    order = [0, 1, 2] if cell.coupled_gates else [0, 2, 1, 3]  # ours i,f,g,o -> TF i,j,f,o
    get = {name: None if getattr(cell, name + suffix) is None
           else getattr(cell, name + suffix).detach().double().numpy()
           for name in ("weight_ih", "weight_hh_time", "weight_hh_freq", "bias_ih",
                        "weight_ci", "weight_cf", "weight_co")}
    blocks = []
    for r in range(len(cell.blocks)):
        variables = {}
        for s, lstm in enumerate(["f", "t"][: get["weight_ih"].shape[1]]):
            w = np.concatenate([get["weight_ih"][r, s], get["weight_hh_time"][r, s],
                                get["weight_hh_freq"][r, s]], 1)  # (G*H, F + 2H)
            rows = np.concatenate([np.arange(g * H, (g + 1) * H) for g in order])
            variables[f"W_{lstm}"] = w[rows].T
            b = (np.zeros(G * H) if get["bias_ih"] is None else get["bias_ih"][r, s].copy())
            if not cell.coupled_gates:
                b[H:2 * H] -= cell.forget_bias
            variables[f"B_{lstm}"] = b[rows]
            tf_lstm = "freq" if lstm == "f" else "time"
            for gate, name in (("I", "weight_ci"), ("F", "weight_cf"), ("O", "weight_co")):
                if get[name] is not None:
                    variables[f"W_{gate}_diag_{tf_lstm}f"] = get[name][r, s, 0]
                    variables[f"W_{gate}_diag_{tf_lstm}t"] = get[name][r, s, 1]
        blocks.append(variables)
    return blocks


def tf_make_features(cell, x, slice_offset=0):
    """TF1's ``_make_tf_features``: zero-pad by the offset, slice each block's windows."""
    if slice_offset > 0:
        x = np.pad(x, [(0, 0), (0, slice_offset)])
    elif slice_offset < 0:
        x = np.pad(x, [(0, 0), (-slice_offset, 0)])
        slice_offset = 0
    return [[x[:, start + slice_offset + f * cell.frequency_skip:][:, :cell.feature_size]
             for f in range(count)] for start, _, count in cell.blocks]


def tf_compute(cell, variables, freq_inputs, c_time_prev, m_time_prev):
    """TF1's ``GridLSTMCell._compute`` for one block (its names and order of operations)."""
    shared = cell.share_time_frequency_weights
    coupled, clip, fb = cell.coupled_gates, cell.cell_clip, cell.forget_bias
    v = variables
    zeros = np.zeros_like(c_time_prev[0])
    m_prev_freq, c_prev_freq = zeros, zeros
    state_out, m_out = [], []
    for k, features in enumerate(freq_inputs):
        c_prev_time, m_prev_time = c_time_prev[k], m_time_prev[k]
        cell_inputs = np.concatenate([features, m_prev_time, m_prev_freq], 1)
        split = 3 if coupled else 4
        freq = np.split(cell_inputs @ v["W_f"] + v["B_f"], split, axis=1)
        time = freq if shared else np.split(cell_inputs @ v["W_t"] + v["B_t"], split, axis=1)
        if coupled:
            (i_freq, j_freq, o_freq), (i_time, j_time, o_time) = freq, time
        else:
            (i_freq, j_freq, f_freq, o_freq), (i_time, j_time, f_time, o_time) = freq, time
        t = "freq" if shared else "time"

        def peep(gate, lstm, cf, ct):
            if f"W_{gate}_diag_{lstm}f" not in v:
                return 0.0
            return v[f"W_{gate}_diag_{lstm}f"] * cf + v[f"W_{gate}_diag_{lstm}t"] * ct

        i_freq_g = _sigmoid(i_freq + peep("I", "freq", c_prev_freq, c_prev_time))
        f_freq_g = (1.0 - i_freq_g if coupled else
                    _sigmoid(f_freq + fb + peep("F", "freq", c_prev_freq, c_prev_time)))
        c_freq = f_freq_g * c_prev_freq + i_freq_g * np.tanh(j_freq)
        if clip is not None:
            c_freq = np.clip(c_freq, -clip, clip)
        i_time_g = _sigmoid(i_time + peep("I", t, c_prev_freq, c_prev_time))
        f_time_g = (1.0 - i_time_g if coupled else
                    _sigmoid(f_time + fb + peep("F", t, c_prev_freq, c_prev_time)))
        c_time = f_time_g * c_prev_time + i_time_g * np.tanh(j_time)
        if clip is not None:
            c_time = np.clip(c_time, -clip, clip)
        m_freq = _sigmoid(o_freq + peep("O", "freq", c_freq, c_time)) * np.tanh(c_freq)
        m_time = _sigmoid(o_time + peep("O", t, c_freq, c_time)) * np.tanh(c_time)
        m_prev_freq, c_prev_freq = m_freq, c_freq
        state_out += [c_time, m_time]
        m_out += [m_time, m_freq]
    return m_out, state_out


def tf_blocks(variables: dict[str, np.ndarray], prefix: str, blocks: int) -> list[dict]:
    """TF1's variables by name (``fwd/W_f_0``, ...) as :func:`tf_variables`' per-block dicts."""
    return [{key[len(prefix):-len(f"_{r}")]: value for key, value in variables.items()
             if key.startswith(prefix) and key.endswith(f"_{r}")} for r in range(blocks)]


def tf_numpy_grid(cell, x, tf_state_parts, variables=None):
    """TF1's ``GridLSTMCell.call`` / ``BidirectionalGridLSTMCell.call`` on TF1's state tuple:
    ``(output, concatenated new state tuple)``; TF1's ``variables`` by name, or the cell's
    parameters in TF1's layout."""
    x = x.detach().double().numpy()
    parts = [p.detach().double().numpy() for p in tf_state_parts]
    directions = [("", tf_make_features(cell, x), False)]
    if cell.directions == 2:
        offset = cell.backward_slice_offset
        directions.append(("_reverse", tf_make_features(cell, x, offset), True))
    outputs, states, used = [], [], 0
    for (suffix, features, reverse), prefix in zip(directions, ["", "bwd/"] if len(
            directions) == 2 else [""], strict=True):
        if variables is None:
            per_block = tf_variables(cell, suffix)
        else:
            prefix = "fwd/" if prefix == "" and cell.directions == 2 else prefix
            per_block = tf_blocks(variables, prefix, len(cell.blocks))
        for r, block in enumerate(features):
            block = block[::-1] if reverse else block
            count = len(block)
            c_prev = parts[used:used + 2 * count:2]
            m_prev = parts[used + 1:used + 2 * count:2]
            used += 2 * count
            m_out, state_out = tf_compute(cell, per_block[r], block, c_prev, m_prev)
            outputs += m_out
            states += state_out
    return np.concatenate(outputs, 1), np.concatenate(states, 1)


OPTIONS = {  # input_size 5, feature_size 2, frequency_skip 1 (4 windows) unless given
    "plain": {},
    "peepholes": {"peepholes": True},
    "peepholes_shared": {"peepholes": True, "share_time_frequency_weights": True},
    "coupled_peepholes_clip": {"coupled_gates": True, "peepholes": True, "cell_clip": 0.3},
    "blocks_skip2_nobias": {"input_size": 9, "frequency_skip": 2, "bias": False,
                            "start_freqindex_list": [0, 3], "end_freqindex_list": [4, 9]},
    "forget_bias": {"forget_bias": 0.5, "feature_size": 3},
    "tiny": {"input_size": 1, "hidden_size": 1, "feature_size": 1},  # H = 1, one window
}


@pytest.mark.parametrize("bidirectional", [False, True], ids=["grid", "bidirectional"])
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_random_weights_match_tf_transcription(options, bidirectional):
    torch.manual_seed(0)
    options = {"input_size": 5, "hidden_size": 3, "feature_size": 2, **options}
    if bidirectional:
        cell = BidirectionalGridLSTMCell(**options, backward_slice_offset=-1)
    else:
        cell = GridLSTMCell(**options)
    cell = randomise(cell).double()
    x = torch.randn(4, cell.input_size, dtype=torch.float64)
    state = tuple(torch.randn(4, size, dtype=torch.float64) for size in cell.state_size)
    output, new_state = cell(x, state)
    expected_output, expected_state = tf_numpy_grid(cell, x, cell.to_tf_state(state))
    np.testing.assert_allclose(output.detach().numpy(), expected_output, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(torch.cat(cell.to_tf_state(new_state), 1).detach().numpy(),
                               expected_state, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["grid", "bidirectional"])
@pytest.mark.parametrize("options", [OPTIONS["peepholes"], OPTIONS["coupled_peepholes_clip"],
                                     OPTIONS["peepholes_shared"]],
                         ids=["peepholes", "coupled_peepholes_clip", "peepholes_shared"])
def test_load_tf_variables(options, bidirectional):
    """TF1's variables (drawn in TF1's layout, under a scope, beside an unrelated one) give
    TF1's numbers; and the parameters -> TF1 layout -> parameters round trip is exact."""
    rng = np.random.default_rng(5)
    cls = BidirectionalGridLSTMCell if bidirectional else GridLSTMCell
    cell = cls(5, 3, feature_size=2, **options).double()
    names = cell.tf_variable_names()
    H, width = 3, 2 + 2 * 3
    variables = {name: rng.normal(size=(H,) if "diag" in name else
                                  (width, cell.num_gates * H) if "/W_" in "/" + name
                                  else (cell.num_gates * H,)) for name in names}
    scoped = {f"rnn/grid/{name}": value for name, value in variables.items()}
    cell.load_tf_variables({**scoped, "rnn/softmax/W": np.zeros(2)}, forget_bias=0.7)
    x = torch.randn(4, 5, dtype=torch.float64)
    state = tuple(torch.randn(4, size, dtype=torch.float64) for size in cell.state_size)
    output, new_state = cell(x, state)
    cell.forget_bias = 0.7  # what the oracle adds in each step, as TF1 did
    expected_output, expected_state = tf_numpy_grid(cell, x, cell.to_tf_state(state),
                                                    variables)
    np.testing.assert_allclose(output.detach().numpy(), expected_output, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(torch.cat(cell.to_tf_state(new_state), 1).detach().numpy(),
                               expected_state, rtol=1e-12, atol=1e-12)
    twin = randomise(cls(5, 3, feature_size=2, forget_bias=0.7, **options).double())
    layout = {}
    for suffix, prefix in zip(cell._suffixes(), ["fwd/", "bwd/"] if bidirectional else [""],
                              strict=True):
        for r, block in enumerate(tf_variables(cell, suffix)):
            layout.update({f"{prefix}{key}_{r}": value for key, value in block.items()})
    twin.load_tf_variables(layout)
    for (name, param), other in zip(cell.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(other, param, rtol=1e-15, atol=1e-15, msg=name)


def test_load_tf_variables_errors():
    cell = GridLSTMCell(4, 2, feature_size=2)
    good = {"W_f_0": np.zeros((6, 8)), "B_f_0": np.zeros(8), "W_t_0": np.zeros((6, 8)),
            "B_t_0": np.zeros(8)}
    without_w_t = {key: value for key, value in good.items() if key != "W_t_0"}
    with pytest.raises(KeyError, match=r"TF1 variable 'W_t_0' is missing; expected \['W_f_0'"):
        cell.load_tf_variables(without_w_t)
    with pytest.raises(ShapeError, match=r"TF1 variable 'scope/B_t_0' has shape \(6,\), "
                                         r"expected \(8,\)"):
        cell.load_tf_variables({"W_f_0": good["W_f_0"], "B_f_0": good["B_f_0"],
                                "W_t_0": good["W_t_0"], "scope/B_t_0": np.zeros(6)})
    two_scopes = {**good, "a/B_f_0": good["B_f_0"], "b/B_f_0": good["B_f_0"]}
    del two_scopes["B_f_0"]
    with pytest.raises(KeyError, match=r"'B_f_0' matches several keys \['a/B_f_0', 'b/B_f_0'\]"):
        cell.load_tf_variables(two_scopes)
    with pytest.raises(ValueError, match=r"TF1's cell has biases; build this cell with "
                                         r"bias=True"):
        GridLSTMCell(4, 2, feature_size=2, bias=False).load_tf_variables(good)


# ---------------------------------------------------------------------------------------------
# One window, frequency connections off == LSTMCell with the same weights
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"peepholes": True, "cell_clip": 0.5},
                                     {"coupled_gates": True, "peepholes": True}],
                         ids=["plain", "peepholes_clip", "coupled_peepholes"])
@pytest.mark.parametrize("H, I, T, B", [(4, 3, 5, 2), (1, 1, 1, 1)], ids=["small", "tiny"])
def test_one_window_without_frequency_connections_is_an_lstm(options, H, I, T, B):
    torch.manual_seed(1)
    lstm = randomise(LSTMCell(I, H, **options)).double()
    grid = GridLSTMCell(I, H, feature_size=I, **options).double()  # one block, one window
    # TF1 couples f = 1 - i, rnnkit's LSTMCell i = 1 - f: the grid's input gate is then the
    # LSTM's forget gate with every sign flipped (sigma(-a) = 1 - sigma(a))
    coupled = options.get("coupled_gates", False)
    sign = torch.ones(grid.num_gates * H, 1, dtype=torch.float64)
    if coupled:
        sign[:H] = -1
    with torch.no_grad():
        for param in grid.parameters():
            param.copy_(torch.randn_like(param))  # frequency-LSTM weights: anything
        time = 1  # index of the time LSTM
        grid.weight_ih[0, time] = sign * lstm.weight_ih
        grid.weight_hh_time[0, time] = sign * lstm.weight_hh
        grid.bias_ih[0, time] = sign[:, 0] * (lstm.bias_ih + lstm.bias_hh)
        if grid.peepholes:
            gate_i = -lstm.weight_cf if coupled else lstm.weight_ci
            for param, value in ((grid.weight_ci, gate_i), (grid.weight_cf, lstm.weight_cf),
                                 (grid.weight_co, lstm.weight_co)):
                if param is not None:
                    param[0, time, 1] = value
            # the frequency connections: the time LSTM's peepholes on the frequency cell
            # (the only frequency term left with one window; m^F and c^F start at 0)
            for param in (grid.weight_ci, grid.weight_cf, grid.weight_co):
                if param is not None:
                    param[0, time, 0] = 0.0
    x = torch.randn(T, B, I, dtype=torch.float64)
    out_lstm, (h_lstm, c_lstm) = Recurrence(lstm, engine="loop")(x)
    out_grid, (h_grid, c_grid) = Recurrence(grid)(x)
    torch.testing.assert_close(out_grid[..., :H], out_lstm, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((h_grid, c_grid), (h_lstm, c_lstm), rtol=1e-12, atol=1e-12)
    assert out_grid.shape == (T, B, 2 * H)  # [m^T, m^F]


# ---------------------------------------------------------------------------------------------
# Gradients, drivers, config, state conversion, initialisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build, fast", [
    (lambda: GridLSTMCell(5, 2, feature_size=3, frequency_skip=2, peepholes=True,
                          cell_clip=2.0), False),
    (lambda: GridLSTMCell(4, 2, feature_size=2, start_freqindex_list=[0, 1],
                          end_freqindex_list=[3, 4], coupled_gates=True), True),
    (lambda: BidirectionalGridLSTMCell(4, 2, feature_size=2, frequency_skip=2, peepholes=True,
                                       share_time_frequency_weights=True,
                                       backward_slice_offset=1), True),
], ids=["peepholes_clip", "two_blocks_coupled", "bidirectional_shared_offset"])
def test_gradcheck_float64(build, fast):
    """Every input, state part and parameter against finite differences; the bigger cells
    in gradcheck's fast mode (random projections of the Jacobian) to keep the suite quick."""
    torch.manual_seed(2)
    cell = randomise(build()).double()
    x = torch.randn(2, cell.input_size, dtype=torch.float64)
    state = tuple(torch.randn(2, size, dtype=torch.float64) * 0.5 for size in cell.state_size)
    if not fast:
        gradcheck_cell(cell, x, state)
        return
    names = [name for name, _ in cell.named_parameters()]
    leaves = [t.detach().clone().requires_grad_()
              for t in (x, *state, *(p for _, p in cell.named_parameters()))]

    def step(x, h, c, *params):
        out, (h, c) = torch.func.functional_call(cell, dict(zip(names, params, strict=True)),
                                                 (x, (h, c)))
        return out, h, c

    assert torch.autograd.gradcheck(step, leaves, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("cls", [GridLSTMCell, BidirectionalGridLSTMCell])
def test_drivers_run_it_with_lengths(cls):
    torch.manual_seed(3)
    cell = cls(6, 3, feature_size=2, frequency_skip=2)
    x = torch.randn(4, 2, 6)  # (T, B, H_in)
    lengths = torch.tensor([4, 2])
    out, (h, c) = Recurrence(cell)(x, lengths=lengths)
    assert out.shape == (4, 2, cell.output_size) and out[2:, 1].eq(0).all()
    alone, (h_alone, c_alone) = Recurrence(cell)(x[:2, 1:])  # sequence 1 alone, unpadded
    torch.testing.assert_close(out[:2, 1:], alone)
    torch.testing.assert_close((h[1:], c[1:]), (h_alone, c_alone))
    # by hand: the cell stepped over sequence 0
    state = None
    for step in x[:, :1]:
        step_out, state = cell(step, state)
    torch.testing.assert_close(out[-1, :1], step_out)
    last, state = Fold(cell, batch_first=True)(x.transpose(0, 1), lengths=lengths)
    torch.testing.assert_close(last, torch.stack([out[3, 0], out[1, 1]]))
    both, _ = Bidirectional(Recurrence(cell))(x, lengths=lengths)
    assert both.shape == (4, 2, 2 * cell.output_size)
    stack = MultiCell([cell, LSTMCell(cell.output_size, 5)])
    stacked, _ = rnnkit.Recurrence(stack)(x)
    assert stacked.shape == (4, 2, 5)
    assert rnnkit.explain(Recurrence(cell), x).count("loop") >= 1


@pytest.mark.parametrize("build", [
    lambda: GridLSTMCell(6, 2, feature_size=2, frequency_skip=2, num_frequency_blocks=[3],
                         peepholes=True, init="glorot_uniform", dtype=torch.float64),
    lambda: BidirectionalGridLSTMCell(4, 2, feature_size=2, start_freqindex_list=(0, 2),
                                      end_freqindex_list=(2, 4), backward_slice_offset=-1,
                                      coupled_gates=True),
])
def test_config_round_trip(build):
    import json

    cell = build()
    twin = rnnkit.config.deserialize(json.loads(json.dumps(rnnkit.config.serialize(cell))))
    assert type(twin) is type(cell) and twin.blocks == cell.blocks
    twin.load_state_dict(cell.state_dict())
    x = torch.randn(3, cell.input_size, dtype=cell.weight_ih.dtype)
    torch.testing.assert_close(twin(x), cell(x))


def test_tf_state_round_trip_and_names():
    cell = GridLSTMCell(4, 2, feature_size=2, start_freqindex_list=[0, 1],
                        end_freqindex_list=[3, 4])
    state = tuple(torch.randn(3, size) for size in cell.state_size)
    parts = cell.to_tf_state(state)
    assert parts._fields == ("state_f00_b00_c", "state_f00_b00_m", "state_f01_b00_c",
                             "state_f01_b00_m", "state_f00_b01_c", "state_f00_b01_m",
                             "state_f01_b01_c", "state_f01_b01_m")
    torch.testing.assert_close(parts.state_f01_b00_m, state[0][:, 2:4])  # h = the m's
    torch.testing.assert_close(cell.from_tf_state(parts), state)
    with pytest.raises(ValueError, match=r"from_tf_state: expected 8 tensors"):
        cell.from_tf_state(parts[:6])


@pytest.mark.parametrize("init", ["default", "glorot_uniform"])
def test_initialisation(init):
    torch.manual_seed(4)
    cell = GridLSTMCell(6, 5, feature_size=4, frequency_skip=2, peepholes=True,
                        forget_bias=2.0, init=init)
    H = 5
    bound = 1 / H ** 0.5 if init == "default" else (6 / (4 + 2 * H + 4 * H)) ** 0.5
    for name in ("weight_ih", "weight_hh_time", "weight_hh_freq"):
        weight = getattr(cell, name)
        assert weight.abs().max() <= bound and weight.abs().max() > 0.8 * bound
    peep_bound = 1 / H ** 0.5 if init == "default" else (3 / H) ** 0.5
    assert cell.weight_co.abs().max() <= peep_bound
    expected = torch.zeros(4 * H)
    expected[H:2 * H] = 2.0  # the forget rows (gate order i, f, g, o)
    assert torch.equal(cell.bias_ih, expected.expand_as(cell.bias_ih))


def test_docstring_examples_run():
    assert_doctests_pass("rnnkit.cells.grid_lstm")


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

ERRORS = [
    ("input_width", lambda: GridLSTMCell(4, 2, feature_size=2)(torch.randn(3, 5)), ShapeError,
     r"GridLSTMCell: expected input of shape \(batch, 4\), got \(3, 5\); its 4 columns are "
     r"read as 3 window\(s\) of feature_size=2 every frequency_skip=1 in block\(s\) \[\(0, 4\)\]"),
    ("feature_wider", lambda: GridLSTMCell(4, 2, feature_size=5), ValueError,
     r"GridLSTMCell: feature_size=5 is wider than input_size=4"),
    ("not_tiled", lambda: GridLSTMCell(5, 2, feature_size=2, frequency_skip=2), ValueError,
     r"do not tile input_size=5: input columns 4..4 would never be read; use input_size=4 "
     r"or 6, or name the columns"),
    ("blocks_count", lambda: GridLSTMCell(4, 2, feature_size=2, num_frequency_blocks=[2]),
     ValueError, r"num_frequency_blocks\[0\]=2 but block 0 \[0, 4\) with feature_size=2 and "
     r"frequency_skip=1 has 3 window\(s\)"),
    ("blocks_length", lambda: GridLSTMCell(4, 2, feature_size=2, num_frequency_blocks=[3, 1]),
     ValueError, r"num_frequency_blocks has 2 entries but the input has 1 block\(s\)"),
    ("start_without_end", lambda: GridLSTMCell(4, 2, feature_size=2, start_freqindex_list=[0]),
     ValueError, r"give start_freqindex_list and end_freqindex_list together"),
    ("lists_differ", lambda: GridLSTMCell(4, 2, feature_size=2, start_freqindex_list=[0, 2],
                                          end_freqindex_list=[4]),
     ValueError, r"start_freqindex_list has 2 entries but end_freqindex_list has 1"),
    ("block_past_input", lambda: GridLSTMCell(4, 2, feature_size=2, start_freqindex_list=[2],
                                              end_freqindex_list=[6]),
     ValueError, r"block 0 \[2, 6\) must satisfy 0 <= start < end <= input_size=4"),
    ("block_narrow", lambda: GridLSTMCell(4, 2, feature_size=3, start_freqindex_list=[0, 2],
                                          end_freqindex_list=[3, 4]),
     ValueError, r"block 1 \[2, 4\) is 2 columns wide, narrower than feature_size=3"),
    ("block_not_tiled", lambda: GridLSTMCell(6, 2, feature_size=2, frequency_skip=2,
                                             start_freqindex_list=[1], end_freqindex_list=[6]),
     ValueError, r"block 0 \[1, 6\) is 5 columns wide; .*the last 1 column\(s\) would never"),
    ("list_of_floats", lambda: GridLSTMCell(4, 2, feature_size=2, num_frequency_blocks=[3.0]),
     TypeError, r"num_frequency_blocks must be a list of ints, got \[3.0\]"),
    ("feature_size_zero", lambda: GridLSTMCell(4, 2, feature_size=0), ValueError,
     r"GridLSTMCell: feature_size must be >= 1, got 0"),
    ("skip_float", lambda: GridLSTMCell(4, 2, feature_size=2, frequency_skip=1.0), TypeError,
     r"GridLSTMCell: frequency_skip must be an int, got float"),
    ("init_unknown", lambda: GridLSTMCell(4, 2, feature_size=2, init="xavier"), ValueError,
     r"GridLSTMCell: init must be one of 'default', 'glorot_uniform', got 'xavier'"),
    ("flag_int", lambda: GridLSTMCell(4, 2, feature_size=2, share_time_frequency_weights=1),
     TypeError, r"GridLSTMCell: share_time_frequency_weights must be a bool, got int"),
    ("offset_float", lambda: BidirectionalGridLSTMCell(4, 2, feature_size=2,
                                                       backward_slice_offset=1.5),
     TypeError, r"BidirectionalGridLSTMCell: backward_slice_offset must be an int, got float"),
    ("state_width", lambda: BidirectionalGridLSTMCell(4, 2, feature_size=2)(
        torch.randn(3, 4), (torch.zeros(3, 6), torch.zeros(3, 6))), ShapeError,
     r"BidirectionalGridLSTMCell: expected state h of shape \(3, 12\)"),
]


@pytest.mark.parametrize("call, error, words", [row[1:] for row in ERRORS],
                         ids=[row[0] for row in ERRORS])
def test_bad_input_gives_a_clear_error(call, error, words):
    with pytest.raises(error, match=words):
        call()
