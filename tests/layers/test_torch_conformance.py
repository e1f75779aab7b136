"""PyTorch's own tests of ``nn.RNN/GRU/LSTM``, run with rnnkit's drop-ins in torch's place.

Two sources (issue 9 item 4: "when rnnkit claims to behave like another system, that system's
own tests are the specification"):

* ``test/test_modules.py`` (TestModule): the generic module tests, fed by the RNN, GRU and
  LSTM entries of ``torch.testing._internal.common_modules.module_db``, whose sample inputs
  (``module_inputs_func``) and error inputs (``module_error_inputs_func``) ship inside the
  installed torch. Each test runs per module x dtype x train/eval mode as torch instantiates
  it on the CPU (gradcheck tests in float64 only, ``test_if_train_and_eval_modes_differ`` in
  training mode only).
* ``test/test_nn.py`` (TestNN, TestNNDeviceType): the RNN tests that run on a CPU, and the CPU
  half of the cuDNN ones; ``test_RNN_cpu_vs_cudnn`` becomes torch.nn (CPU) vs rnnkit with the
  same weights. Each keeps torch's name.

The test bodies are rewritten for pytest from torch's source; where a test differs from its
original (smaller sizes, a subset of a product), the comment says so.
"""

from __future__ import annotations

import copy
import io
import itertools
import tempfile
from functools import partial

import pytest
import torch
from torch import nn
from torch.nn.utils import rnn as rnn_utils

import rnnkit

pytest.importorskip("expecttest")  # torch.testing._internal.common_utils imports it

_flags_frozen = torch.backends.flags_frozen()
from torch.testing._internal import common_modules  # noqa: E402
from torch.testing._internal.common_utils import (  # noqa: E402
    freeze_rng_state,
    gradcheck,
    gradgradcheck,
)

# Importing torch's test utilities freezes torch.backends' global flags for torch's own
# test runner; the rest of our suite must not feel that.
if not _flags_frozen:
    setattr(torch.backends, "__allow_nonbracketed_mutation_flag", True)

pytestmark = pytest.mark.filterwarnings(
    "ignore:dropout option adds dropout after all but last:UserWarning"
)

DROP_IN = {nn.RNN: rnnkit.RNN, nn.GRU: rnnkit.GRU, nn.LSTM: rnnkit.LSTM}
MODULE_INFOS = {
    info.module_cls.__name__: info
    for info in common_modules.module_db
    if info.module_cls in DROP_IN
}
NAMES = ("RNN", "GRU", "LSTM")
DTYPES = (torch.float32, torch.float64)


def assert_equal(actual, expected, **tolerances):
    """torch's ``TestCase.assertEqual`` for the values these tests compare."""
    torch.testing.assert_close(actual, expected, equal_nan=True, **tolerances)


def assert_not_equal(actual, expected):
    with pytest.raises(AssertionError):
        assert_equal(actual, expected)


# ----------------------------------------------------------------------------- test_modules


def module_inputs(name, dtype, requires_grad, training, device="cpu"):
    info = MODULE_INFOS[name]
    return info.module_inputs_func(
        info, device=device, dtype=dtype, requires_grad=requires_grad, training=training
    )


def with_bias(samples):
    """The samples with ``bias=True`` (half): the tests that pickle, copy or run every sample
    twice more use these, to keep the suite fast; the bias flag does not change what they
    check."""
    return [s for s in samples if s.constructor_input.kwargs.get("bias", True)]


def build(name, module_input, dtype=None, training=None):
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    module = DROP_IN[MODULE_INFOS[name].module_cls](*args, **kwargs)
    if dtype is not None:
        module.to("cpu").to(dtype)
    if training is not None:
        module.train(training)
    return module


def forward_args(module_input):
    return module_input.forward_input.args, module_input.forward_input.kwargs


def assert_parameters_are(module, device, dtype):
    device = torch.device(device)
    for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
        assert tensor.device == device, name
        if tensor.dtype.is_floating_point:
            assert tensor.dtype == dtype, name


def modes(train_only=False):
    return (True,) if train_only else (True, False)


def cases(dtypes=DTYPES, train_only=False):
    """(module name, dtype, training) as torch's @modules decorator instantiates them."""
    params = []
    for name, dtype, training in itertools.product(NAMES, dtypes, modes(train_only)):
        mode = "train" if training else "eval"
        params.append(pytest.param(name, dtype, training, id=f"{name}-{str(dtype)[6:]}-{mode}"))
    return params


@pytest.mark.parametrize(("name", "dtype", "training"), cases())
def test_forward(name, dtype, training):
    caller = {torch.float32: "float", torch.float64: "double"}[dtype]
    for module_input in module_inputs(name, dtype, False, training):
        with freeze_rng_state():
            m = build(name, module_input, dtype, training)
            args, kwargs = forward_args(module_input)
            outputs = m(*args, **kwargs)
            if module_input.reference_fn is not None:
                assert_equal(outputs, module_input.reference_fn(m, *args, **kwargs))
            getattr(m, caller)()
            m(*args, **kwargs)
            assert_parameters_are(m, "cpu", dtype)


@pytest.mark.parametrize(("name", "dtype", "training"), cases())
def test_factory_kwargs(name, dtype, training):
    # torch first checks (with mocks) that the module creates parameters; ours always do.
    for module_input in module_inputs(name, dtype, False, training):
        args = module_input.constructor_input.args
        kwargs = {**module_input.constructor_input.kwargs, "device": "cpu", "dtype": dtype}
        m = DROP_IN[MODULE_INFOS[name].module_cls](*args, **kwargs)
        m.train(training)
        assert list(m.parameters())
        assert_parameters_are(m, "cpu", dtype)


@pytest.mark.parametrize(("name", "dtype", "training"), cases())
def test_repr(name, dtype, training):
    for module_input in module_inputs(name, dtype, False, training):
        m = build(name, module_input, dtype, training)
        m.__repr__()
        str(m)


@pytest.mark.parametrize(("name", "dtype", "training"), cases())
def test_save_load(name, dtype, training):
    for module_input in with_bias(module_inputs(name, dtype, False, training)):
        with freeze_rng_state():
            m = build(name, module_input, dtype, training)
            state = m.state_dict()
            args, kwargs = forward_args(module_input)
            output = m(*args, **kwargs)
            with tempfile.TemporaryFile() as f:
                torch.save(m, f)
                f.seek(0)
                copy_ = torch.load(f, weights_only=False)
                assert_equal(copy_(*args, **kwargs), output)
            with tempfile.TemporaryFile() as f:
                torch.save(state, f)
                f.seek(0)
                assert_equal(torch.load(f), state)
                f.seek(0)
                assert_equal(torch.load(f, weights_only=True), state)


def _traverse(obj, func):
    if isinstance(obj, (tuple, list)):
        return type(obj)(_traverse(o, func) for o in obj)
    if isinstance(obj, dict):
        return {key: _traverse(o, func) for key, o in obj.items()}
    if isinstance(obj, torch.Tensor):
        return func(obj)
    return obj


def _grads(obj):
    return _traverse(obj, lambda t: t.grad if t.requires_grad else None)


def _zero_grads(obj):
    def zero(t):
        t.grad = None

    _traverse(obj, zero)


def _backward_all(outputs, grad_outputs):
    flat_out, _ = torch.utils._pytree.tree_flatten(outputs)
    flat_grad, _ = torch.utils._pytree.tree_flatten(grad_outputs)
    for out, grad in zip(flat_out, flat_grad, strict=True):
        if out.requires_grad:
            out.backward(grad, retain_graph=True)


@pytest.mark.parametrize(("name", "dtype", "training"), cases())
def test_non_contiguous_tensors(name, dtype, training):
    def non_contiguous(obj):
        def make(t):
            if t.dim() == 0:
                return t
            out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
            out.requires_grad = t.requires_grad
            return out

        return _traverse(obj, make)

    for module_input in with_bias(module_inputs(name, dtype, True, training)):
        m = build(name, module_input, dtype, training)
        inputs = forward_args(module_input)
        _traverse(inputs, lambda t: t.retain_grad() if t.requires_grad else None)
        with freeze_rng_state():
            default_output = m(*inputs[0], **inputs[1])
            grad_output = _traverse(
                default_output,
                lambda o: o.clone().detach_().normal_() if o.requires_grad else None,
            )
            _backward_all(default_output, grad_output)
        default_input_grads = copy.deepcopy(_grads(inputs))
        default_param_grads = copy.deepcopy([p.grad for p in m.parameters()])

        nc_inputs = non_contiguous(inputs)
        nc_grad_output = non_contiguous(grad_output)
        for (in_args, in_kwargs), g_out in itertools.product(
            [inputs, nc_inputs], [grad_output, nc_grad_output]
        ):
            g_out = copy.deepcopy(g_out)
            _zero_grads((in_args, in_kwargs))
            _zero_grads(list(m.parameters()))
            with freeze_rng_state():
                out = m(*in_args, **in_kwargs)
                _backward_all(out, g_out)
            assert_equal(out, default_output)
            assert_equal(_grads((in_args, in_kwargs)), default_input_grads, atol=1e-4, rtol=0)
            assert_equal([p.grad for p in m.parameters()], default_param_grads)


# torch runs the gradient checks on all 16-32 samples, with one check of the total
# derivative and one per parameter: thousands of gradgradchecks. Here: the samples of one
# configuration (bias, time-major, bidirectional, with an initial state; LSTM with and
# without a projection), the total derivative plus the partial derivative for the input and
# for the first layer's recurrent weights.
def _gradient_samples(name, training):
    chosen = []
    for module_input in module_inputs(name, torch.float64, True, training):
        kwargs = module_input.constructor_input.kwargs
        if kwargs["bias"] and not kwargs["batch_first"] and kwargs["bidirectional"]:
            has_state = len(module_input.forward_input.args) > 1
            if kwargs.get("nonlinearity", "tanh") == "tanh" and has_state:
                chosen.append(module_input)
    return chosen


def _check_gradients(name, training, check, partials=True):
    for module_input in _gradient_samples(name, training):
        m = build(name, module_input, torch.float64, training)
        params = tuple(m.parameters())
        input_args, input_kwargs = forward_args(module_input)
        assert not input_kwargs

        count = len(input_args)
        flat, spec = torch.utils._pytree.tree_flatten(input_args + params)
        assert check(partial(_call_flat, m, count, spec), flat)
        if not partials:
            continue
        # Partial derivatives: only the input, then only weight_hh_l0.
        for p in params:
            p.requires_grad_(False)
        assert check(partial(_call_flat, m, count, spec), flat)
        m.weight_hh_l0.requires_grad_(True)
        frozen_inputs = _traverse(input_args, lambda t: t.detach())
        flat, spec = torch.utils._pytree.tree_flatten(frozen_inputs + params)
        assert check(partial(_call_flat, m, count, spec), flat)


def _call_flat(module, count, spec, *flat):
    """torch's ``fn_to_gradcheck``: the module on the first ``count`` unflattened inputs."""
    rebuilt = torch.utils._pytree.tree_unflatten(flat, spec)
    with freeze_rng_state():
        output = module(*rebuilt[:count])
    return torch.utils._pytree.tree_flatten(output)[0]


@pytest.mark.parametrize(
    ("name", "dtype", "training"),
    cases(dtypes=(torch.float64,)),
)
def test_grad(name, dtype, training):
    _check_gradients(name, training, gradcheck)


@pytest.mark.parametrize(
    ("name", "dtype", "training"),
    cases(dtypes=(torch.float64,)),
)
def test_gradgrad(name, dtype, training):
    # The total derivative only: each gradgradcheck costs seconds on two shared cores.
    _check_gradients(name, training, gradgradcheck, partials=False)


@pytest.mark.parametrize(("name", "dtype", "training"), cases())
def test_memory_format(name, dtype, training):
    # RNN inputs are never 4-D/5-D: only the contiguous and preserve formats apply.
    for module_input in with_bias(module_inputs(name, dtype, True, training)):
        with freeze_rng_state():
            m = build(name, module_input, dtype, training)
            args, kwargs = forward_args(module_input)
            desired = m(*args, **kwargs)
            diff_outputs = [t for t in torch.utils._pytree.tree_flatten(desired)[0]
                            if t.requires_grad]
            params = tuple(m.parameters())
            diff_inputs = [t for t in torch.utils._pytree.tree_flatten((args, params))[0]
                           if isinstance(t, torch.Tensor) and t.requires_grad]
            grad_outputs = [torch.rand_like(t) for t in diff_outputs]
            reference = None
            if training and diff_outputs:
                reference = torch.autograd.grad(diff_outputs, diff_inputs, grad_outputs)
            for module_format in (torch.preserve_format, torch.contiguous_format):
                m.to(memory_format=module_format)
                outputs = m(*args, **kwargs)
                assert_equal(outputs, desired)
                _traverse(outputs, lambda t: assert_contiguous(t))
                if reference is not None:
                    outs = [t for t in torch.utils._pytree.tree_flatten(outputs)[0]
                            if t.requires_grad]
                    grads = torch.autograd.grad(outs, diff_inputs, grad_outputs)
                    assert_equal(grads, reference)
                    _traverse(grads, lambda t: assert_contiguous(t))


def assert_contiguous(t):
    assert t.is_contiguous()


@pytest.mark.parametrize(("name", "dtype", "training"), cases(train_only=True))
def test_if_train_and_eval_modes_differ(name, dtype, training):
    # torch's ModuleInfo says train_and_eval_differ=True for RNN/GRU/LSTM (dropout): reading
    # `training` in forward is allowed, any other AttributeError is a failure.
    assert MODULE_INFOS[name].train_and_eval_differ
    for module_input in module_inputs(name, dtype, False, training):
        m = build(name, module_input, dtype, training)
        delattr(m, "training")
        args, kwargs = forward_args(module_input)
        try:
            m(*args, **kwargs)
        except AttributeError as error:
            if "'training'" not in str(error):
                raise


@pytest.mark.parametrize(("name", "dtype", "training"), cases())
def test_device_ctx_init(name, dtype, training):
    from torch._subclasses.meta_utils import assert_metadata_eq

    inputs = module_inputs(name, dtype, False, training)
    with torch.device("meta"):
        meta_inputs = module_inputs(name, dtype, False, training, device=None)
    for module_input, meta_input in zip(inputs, meta_inputs, strict=True):
        m_cpu = build(name, module_input)
        with torch.device("meta"):
            m_meta = build(name, meta_input)
        pairs = itertools.chain(zip(m_meta.parameters(), m_cpu.parameters(), strict=True),
                                zip(m_meta.buffers(), m_cpu.buffers(), strict=True))
        for p_meta, p_cpu in pairs:
            assert p_meta.is_meta
            assert_metadata_eq(lambda a, b, **_: _assert_same(a, b), p_meta, p_cpu)


def _assert_same(a, b):
    assert a == b, (a, b)


@pytest.mark.parametrize(("name", "dtype", "training"), cases())
def test_errors(name, dtype, training):
    info = MODULE_INFOS[name]
    errors = info.module_error_inputs_func(info, device="cpu", dtype=dtype,
                                           requires_grad=False, training=training)
    cls = DROP_IN[info.module_cls]
    for error_input in errors:
        module_input = error_input.module_error_input
        args = module_input.constructor_input.args
        kwargs = module_input.constructor_input.kwargs
        if error_input.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                cls(*args, **kwargs)
        else:
            m = cls(*args, **kwargs)
            fw_args, fw_kwargs = forward_args(module_input)
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                m(*fw_args, **fw_kwargs)


# ----------------------------------------------------------------------------- test_nn: TestNN

MODES = {"RNN": rnnkit.RNN, "GRU": rnnkit.GRU, "LSTM": rnnkit.LSTM}


def _update_shape(shape, dim, size):
    shape = list(shape)
    shape[dim] = size
    return tuple(shape)


def test_rnn_args_check():
    input_size, hidden_size, num_layers, batch_size, seq_len = 3, 5, 2, 4, 6
    bad_size = 7  # prime: no size divides it
    correct_input = (seq_len, batch_size, input_size)
    correct_hidden = (num_layers, batch_size, hidden_size)

    def inputs(input_shape, hidden_shape, mode):
        x, hidden = torch.randn(input_shape), torch.randn(hidden_shape)
        if mode != "LSTM":
            return [(x, hidden)]
        if hidden_shape == correct_hidden:
            return [(x, (hidden, hidden))]
        good = torch.randn(correct_hidden)
        return [(x, (hidden, good)), (x, (good, hidden))]

    for mode, cls in MODES.items():
        for input_shape, hidden_shape in [
            (_update_shape(correct_input, 1, bad_size), correct_hidden),  # input batch
            (correct_input, _update_shape(correct_hidden, 1, bad_size)),  # hidden batch
            (_update_shape(correct_input, 2, bad_size), correct_hidden),  # input size
            (correct_input, _update_shape(correct_hidden, 2, bad_size)),  # hidden size
            (correct_input, _update_shape(correct_hidden, 0, bad_size)),  # hidden[0]
        ]:
            for x, hidden in inputs(input_shape, hidden_shape, mode):
                model = cls(input_size, hidden_size, num_layers)
                with pytest.raises(RuntimeError):
                    model(x, hidden)


def test_projections_lstm_args_check():
    input_size, hidden_size, proj_size, num_layers, batch_size, seq_len = 3, 5, 2, 2, 4, 6
    bad_size = 7
    correct_input = (seq_len, batch_size, input_size)
    correct_h = (num_layers, batch_size, proj_size)
    correct_c = (num_layers, batch_size, hidden_size)
    for input_shape, h_shape, c_shape in [
        (_update_shape(correct_input, 1, bad_size), correct_h, correct_c),
        (correct_input, _update_shape(correct_h, 1, bad_size), _update_shape(correct_c, 1, 7)),
        (_update_shape(correct_input, 2, bad_size), correct_h, correct_c),
        (correct_input, _update_shape(correct_h, 2, bad_size), _update_shape(correct_c, 2, 7)),
        (correct_input, _update_shape(correct_h, 0, bad_size), _update_shape(correct_c, 0, 7)),
        (correct_input, _update_shape(correct_h, 0, hidden_size), correct_c),
        (correct_input, _update_shape(correct_h, 0, bad_size), correct_c),
        (correct_input, correct_h, _update_shape(correct_c, 0, bad_size)),
    ]:
        model = rnnkit.LSTM(input_size, hidden_size, num_layers, proj_size=proj_size)
        hidden = (torch.randn(h_shape), torch.randn(c_shape))
        with pytest.raises(RuntimeError):
            model(torch.randn(input_shape), hidden)


def test_rnn_initial_hidden_state():
    for mode, cls in MODES.items():
        rnn = cls(30, 20, 2)
        x = torch.randn(10, 32, 30)
        hidden = torch.zeros(2, 32, 20)
        if mode == "LSTM":
            hidden = (hidden, hidden)
        output1, hidden1 = rnn(x, hidden)
        output2, hidden2 = rnn(x)
        assert_equal(output1, output2)
        assert_equal(hidden1, hidden2)


def test_projections_lstm_initial_hidden_state():
    for bidirectional in (False, True):
        rnn = rnnkit.LSTM(30, 20, 2, bidirectional=bidirectional, proj_size=10)
        directions = 2 if bidirectional else 1
        x = torch.randn(10, 32, 30)
        hidden = (torch.zeros(2 * directions, 32, 10), torch.zeros(2 * directions, 32, 20))
        output1, hidden1 = rnn(x, hidden)
        output2, hidden2 = rnn(x)
        assert_equal(output1, output2)
        assert_equal(hidden1, hidden2)


def test_projections_errors_on_gru_and_rnn():
    for cls in (rnnkit.RNN, rnnkit.GRU):
        with pytest.raises(ValueError,
                           match="proj_size argument is only supported for LSTM, not RNN or GRU"):
            cls(30, 20, 2, proj_size=10)


def _run_rnn_cpu_vs_rnnkit(dropout, dtype=torch.double):
    """torch's ``_test_RNN_cpu_vs_cudnn`` with rnnkit in the place of cuDNN: the same weights,
    inputs and output gradients through ``torch.nn`` on the CPU and through rnnkit."""

    def forward_backward(rnn, input_val, grad_output, weights_val, hx_val, grad_hy,
                         cx_val=None, grad_cy=None):
        is_lstm = isinstance(rnn, nn.LSTM)
        for x_layer, y_layer in zip(rnn.all_weights, weights_val, strict=True):
            for x, y in zip(x_layer, y_layer, strict=True):
                x.data.copy_(y.data)
        if isinstance(input_val, rnn_utils.PackedSequence):
            x = rnn_utils.PackedSequence(input_val.data.data.requires_grad_(True),
                                         input_val.batch_sizes)
            input_var = x.data
        else:
            x = input_val.clone().requires_grad_(True)
            input_var = x
        if is_lstm:
            c_base = hx_val if cx_val is None else cx_val
            hx = (hx_val.clone().requires_grad_(True), c_base.add(1).requires_grad_(True))
        else:
            hx = hx_val.clone().requires_grad_(True)
        output, hy = rnn(x, hx)
        if isinstance(output, rnn_utils.PackedSequence):
            output = output.data
        if is_lstm:
            grad_c = grad_hy + 1 if grad_cy is None else grad_cy + 1
            torch.autograd.backward([output, hy[0], hy[1]], [grad_output, grad_hy, grad_c])
        else:
            torch.autograd.backward([output, hy], [grad_output, grad_hy])
        result = {
            "output": output.detach(),
            "hy": (hy[0] if is_lstm else hy).detach(),
            "weights": rnn.all_weights,
            "grad_input": input_var.grad.detach().clone(),
            "grad_hx": (hx[0] if is_lstm else hx).grad.detach(),
            "cy": hy[1].detach() if is_lstm else None,
            "grad_cx": hx[1].grad.detach() if is_lstm else None,
        }
        input_var.grad = None
        return result

    input_size, hidden_size, proj_size, num_layers, seq_length, batch = 10, 6, 3, 2, 7, 6

    def make_noncontig(tensor):
        ndim = tensor.dim()
        return torch.stack([tensor.clone().zero_(), tensor], ndim).select(ndim, 1)

    def compare(torch_outputs, rnnkit_outputs):
        assert list(torch_outputs) == list(rnnkit_outputs)
        for key in torch_outputs:
            if key != "weights":
                assert_equal(rnnkit_outputs[key], torch_outputs[key], atol=5e-5, rtol=0)
        for theirs, ours in zip(torch_outputs["weights"], rnnkit_outputs["weights"],
                                strict=True):
            for a, b in zip(theirs, ours, strict=True):
                assert_equal(b.grad, a.grad, atol=5e-5, rtol=0)

    # torch runs the full product of six flags (64 x 4 module kinds); every pair of flag
    # values appears in this 8-row subset (an orthogonal array), and rnnkit's own
    # test_rnn.py covers the rest.
    flag_rows = [
        (True, True, True, True, True, True),
        (True, True, False, False, False, False),
        (True, False, True, False, True, False),
        (True, False, False, True, False, True),
        (False, True, True, False, False, True),
        (False, True, False, True, True, False),
        (False, False, True, True, False, False),
        (False, False, False, False, True, True),
    ]

    def inputs(bidirectional, batch_first, contig, variable_len, lens_as_tensor, out_size):
        directions = 2 if bidirectional else 1
        shape = (batch, seq_length) if batch_first else (seq_length, batch)
        input_val = torch.randn(*shape, input_size, dtype=dtype)
        grad_output = torch.randn(*shape, out_size * directions, dtype=dtype)
        if not contig:
            grad_output = make_noncontig(grad_output)
            input_val = make_noncontig(input_val)
        if variable_len:
            lengths = [7, 5, 5, 2, 1, 1]
            if lens_as_tensor:
                lengths = torch.tensor(lengths, dtype=torch.long)
            input_val = rnn_utils.pack_padded_sequence(input_val, lengths,
                                                       batch_first=batch_first)
            grad_output = rnn_utils.pack_padded_sequence(grad_output, lengths,
                                                         batch_first=batch_first).data
        return input_val, grad_output

    for torch_cls, rnnkit_cls in DROP_IN.items():
        for bias, bidirectional, batch_first, contig, variable_len, lens_as_tensor in flag_rows:
            directions = 2 if bidirectional else 1
            input_val, grad_output = inputs(bidirectional, batch_first, contig, variable_len,
                                            lens_as_tensor, hidden_size)
            hx_val = torch.randn(num_layers * directions, batch, hidden_size, dtype=dtype)
            grad_hy = torch.randn(num_layers * directions, batch, hidden_size, dtype=dtype)
            if not contig:
                grad_hy, hx_val = make_noncontig(grad_hy), make_noncontig(hx_val)
            kwargs = dict(bias=bias, dropout=dropout, bidirectional=bidirectional,
                          batch_first=batch_first)
            theirs = torch_cls(input_size, hidden_size, num_layers, **kwargs).to(dtype)
            expected = forward_backward(theirs, input_val, grad_output, theirs.all_weights,
                                        hx_val, grad_hy)
            ours = rnnkit_cls(input_size, hidden_size, num_layers, **kwargs).to(dtype)
            got = forward_backward(ours, input_val, grad_output, theirs.all_weights,
                                   hx_val, grad_hy)
            compare(expected, got)

    for nonlinearity in ("tanh", "relu"):
        hx_val = torch.randn(num_layers, batch, hidden_size, dtype=dtype)
        input_val = torch.randn(seq_length, batch, input_size, dtype=dtype)
        grad_output = torch.randn(seq_length, batch, hidden_size, dtype=dtype)
        grad_hy = torch.randn(num_layers, batch, hidden_size, dtype=dtype)
        theirs = nn.RNN(input_size, hidden_size, num_layers,
                        nonlinearity=nonlinearity).to(dtype)
        expected = forward_backward(theirs, input_val, grad_output, theirs.all_weights,
                                    hx_val, grad_hy)
        ours = rnnkit.RNN(input_size, hidden_size, num_layers,
                          nonlinearity=nonlinearity).to(dtype)
        compare(expected, forward_backward(ours, input_val, grad_output, theirs.all_weights,
                                           hx_val, grad_hy))

    # LSTM with projections
    for bias, bidirectional, batch_first, contig, variable_len, lens_as_tensor in flag_rows:
        directions = 2 if bidirectional else 1
        input_val, grad_output = inputs(bidirectional, batch_first, contig, variable_len,
                                        lens_as_tensor, proj_size)
        hx_val = torch.randn(num_layers * directions, batch, proj_size, dtype=dtype)
        cx_val = torch.randn(num_layers * directions, batch, hidden_size, dtype=dtype)
        grad_hy = torch.randn(num_layers * directions, batch, proj_size, dtype=dtype)
        grad_cy = torch.randn(num_layers * directions, batch, hidden_size, dtype=dtype)
        if not contig:
            grad_hy, grad_cy = make_noncontig(grad_hy), make_noncontig(grad_cy)
            hx_val, cx_val = make_noncontig(hx_val), make_noncontig(cx_val)
        kwargs = dict(bias=bias, dropout=dropout, bidirectional=bidirectional,
                      batch_first=batch_first, proj_size=proj_size)
        theirs = nn.LSTM(input_size, hidden_size, num_layers, **kwargs).to(dtype)
        expected = forward_backward(theirs, input_val, grad_output, theirs.all_weights,
                                    hx_val, grad_hy, cx_val, grad_cy)
        ours = rnnkit.LSTM(input_size, hidden_size, num_layers, **kwargs).to(dtype)
        compare(expected, forward_backward(ours, input_val, grad_output, theirs.all_weights,
                                           hx_val, grad_hy, cx_val, grad_cy))


def test_RNN_cpu_vs_cudnn_no_dropout():
    _run_rnn_cpu_vs_rnnkit(0)


def test_RNN_cpu_vs_cudnn_with_dropout():
    # Because of dropout randomness, can only compare dropout=0 and dropout=1.
    _run_rnn_cpu_vs_rnnkit(1)


def test_RNN_dropout():
    # cuDNN puts dropout between layers; so do torch's CPU path and rnnkit.
    hidden = 1000
    for p in (0, 0.276, 0.731, 1):
        for train in (True, False):
            rnn = rnnkit.RNN(10, hidden, 2, bias=False, dropout=p, nonlinearity="relu")
            rnn.to(torch.double)
            rnn.train(train)
            for name in ("weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"):
                getattr(rnn, name).data.fill_(1)
            x = torch.ones(1, 1, 10, dtype=torch.double)
            hx = torch.zeros(2, 1, hidden, dtype=torch.double)
            output, hy = rnn(x, hx)
            assert output.min() == output.max()
            output_val = output[0][0][0]
            if p == 0 or not train:
                assert output_val == 10000
            elif p == 1:
                assert output_val == 0
            else:
                assert 8000 < output_val < 12000
                denorm_mod = (output_val * (1 - p)) % 10
                assert min(denorm_mod, 10 - denorm_mod) < 1e-2
            assert hy[0].min() == hy[0].max()
            assert hy[1].min() == hy[1].max()
            assert hy[0][0][0] == 10
            assert hy[1][0][0] == output_val


def test_error_RNN_seq_len_zero():
    for cls in MODES.values():
        for bidirectional in (True, False):
            rnn = cls(5, 6, bidirectional=bidirectional).double()
            with pytest.raises(RuntimeError,
                               match="Expected sequence length to be larger than 0 in RNN"):
                rnn(torch.ones(0, 10, 5, dtype=torch.double))


def test_RNN_input_size_zero():
    for cls in MODES.values():
        rnn = cls(input_size=3, hidden_size=4)
        outs = rnn(torch.zeros((5, 0, 3)))
        assert outs[0].shape == torch.Size([5, 0, 4])
        outs[0].sum().backward()  # backward does not cause a hard error


def test_RNN_dropout_state():
    for p in (0, 0.1234):
        for train in (True, False):
            rnn = rnnkit.RNN(100, 100, 2, bias=False, dropout=p, nonlinearity="relu")
            rnn.train(train)
            x = torch.rand(1, 1, 100)
            hx = torch.rand(2, 1, 100)
            output1, hy1 = rnn(x, hx)
            output2, hy2 = rnn(x, hx)
            buf = io.BytesIO()
            torch.save(rnn, buf)
            buf.seek(0)
            rnn2 = torch.load(buf, weights_only=False)
            rnn2.flatten_parameters()
            output3, hy3 = rnn2(x, hx)
            if p == 0 or not train:
                assert_equal(output1, output2)
                assert_equal(output1, output3)
                assert_equal(hy1, hy2)
                assert_equal(hy1, hy3)
            else:
                assert_not_equal(output1, output2)
                assert_not_equal(output1, output3)
                assert_not_equal(hy1, hy2)
                assert_not_equal(hy1, hy3)


def test_RNN_change_dropout():
    for train in (True, False):
        rnn = rnnkit.RNN(100, 100, 2, dropout=0, nonlinearity="relu").double()
        x = torch.rand(3, 2, 100, dtype=torch.double)
        rnn.train(train)
        prev_output = None
        for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
            rnn.dropout = p
            output1, hy1 = rnn(x)
            output2, hy2 = rnn(x)
            if p == 0 or p == 1 or not train:
                assert_equal(output1, output2)
                assert_equal(hy1, hy2)
            else:
                assert_not_equal(output1, output2)
                assert_not_equal(hy1, hy2)
            if prev_output is not None:
                if not train:
                    assert_equal(output1, prev_output)
                    assert_equal(output2, prev_output)
                else:
                    assert_not_equal(output1, prev_output)
                    assert_not_equal(output2, prev_output)
            prev_output = output1.detach()


def test_rnn_weight_norm():
    def check_weight_norm(module, name, num_params):
        module = torch.nn.utils.weight_norm(module, name=name)
        assert sum(isinstance(p, nn.Parameter) for p in module._flat_weights) == num_params - 1
        module = torch.nn.utils.remove_weight_norm(module, name=name)
        assert sum(isinstance(p, nn.Parameter) for p in module._flat_weights) == num_params
        assert module._parameters[name] is not None
        assert name + "_v" not in module._parameters
        assert name + "_g" not in module._parameters
        named = dict(module.named_parameters())
        assert named[name] is not None
        assert name + "_v" not in named and name + "_g" not in named

    check_weight_norm(rnnkit.LSTM(32, 32), "weight_ih_l0", 4)
    check_weight_norm(rnnkit.LSTM(32, 32, proj_size=16), "weight_hr_l0", 5)


def test_RNN_nonlinearity():
    assert rnnkit.RNN(1, 10).nonlinearity == "tanh"
    assert rnnkit.RNN(1, 10, nonlinearity="relu").nonlinearity == "relu"
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        rnnkit.RNN(1, 10, nonlinearity="garbage")


def test_RNN_nonlinearity_passed_as_arg():
    assert rnnkit.RNN(2, 3, 1, "relu").nonlinearity == "relu"


def test_cudnn_forward_exception():
    rnns = [
        (rnnkit.LSTM(10, 20, batch_first=True), (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
        (rnnkit.LSTM(10, 20, batch_first=True, proj_size=10),
         (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
        (rnnkit.GRU(10, 20, batch_first=True), torch.zeros(1, 2, 19)),
        (rnnkit.RNN(10, 20, batch_first=True), torch.zeros(1, 2, 19)),
    ]
    x_wrong, x_right = torch.randn(2, 3, 3), torch.randn(2, 3, 10)
    for rnn, hidden in rnns:
        with pytest.raises(RuntimeError, match="Expected hidden.*size.*got"):
            rnn(x_right, hidden)
        with pytest.raises(RuntimeError,
                           match=r"input.size\(-1\) must be equal to input_size"):
            rnn(x_wrong)


def test_cudnn_weight_format():
    # The CPU half of torch's cuDNN test: a weight that no longer views the same memory
    # (``weight.set_``) gives the same outputs and gradients and keeps sharing its storage.
    rnns = [
        rnnkit.LSTM(10, 20, batch_first=True),
        rnnkit.LSTM(10, 20, batch_first=True, proj_size=10),
        rnnkit.GRU(10, 20, batch_first=True),
        rnnkit.RNN(10, 20, batch_first=True),
    ]
    for rnn in rnns:
        x = torch.randn(5, 4, 10, requires_grad=True)
        hx = torch.randn(1, 5, 20, requires_grad=True)
        all_vars = [x, hx, *rnn.parameters()]
        if isinstance(rnn, nn.LSTM):
            if rnn.proj_size > 0:
                hx = torch.randn(1, 5, 10, requires_grad=True)
                all_vars[1] = hx
            cx = torch.randn(1, 5, 20, requires_grad=True)
            all_vars[2:2] = [cx]
            hx = (hx, cx)
        output = rnn(x, hx)
        output[0].sum().backward()
        grads = [v.grad.clone() for v in all_vars]
        for v in all_vars:
            v.grad.zero_()
        weight = all_vars[4]
        weight_data = weight.data.clone()
        with torch.no_grad():
            weight.set_(weight_data)
        for _ in range(2):
            output_noncontig = rnn(x, hx)
            output_noncontig[0].sum().backward()
            grads_noncontig = [v.grad.clone() for v in all_vars]
            for v in all_vars:
                v.grad.zero_()
            assert_equal(output_noncontig, output)
            assert_equal(grads_noncontig, grads)
        weight_data[:] = 4
        assert_equal(weight_data, all_vars[4].data)


def test_cudnn_weight_tying():
    # Weight sharing: the reverse direction's bias *is* the forward one's. torch's test
    # compares cuDNN with the CPU after an SGD step; here torch.nn (CPU) with rnnkit.
    def tied(cls, **kwargs):
        rnn = cls(10, 20, batch_first=True, bidirectional=True, **kwargs).double()
        rnn.bias_ih_l0_reverse = rnn.bias_ih_l0
        return rnn

    for torch_cls, rnnkit_cls, kwargs in [
        (nn.LSTM, rnnkit.LSTM, {}),
        (nn.LSTM, rnnkit.LSTM, {"proj_size": 10}),
        (nn.GRU, rnnkit.GRU, {}),
        (nn.RNN, rnnkit.RNN, {}),
    ]:
        torch.manual_seed(0)
        theirs = tied(torch_cls, **kwargs)
        ours = tied(rnnkit_cls, **kwargs)
        ours.load_state_dict(theirs.state_dict())
        assert ours.bias_ih_l0_reverse is ours.bias_ih_l0
        assert len(list(ours.parameters())) == len(list(theirs.parameters()))
        x = torch.randn(5, 4, 10, dtype=torch.double)
        h_size = kwargs.get("proj_size", 20)
        hx = torch.randn(2, 5, h_size, dtype=torch.double)
        if isinstance(ours, nn.LSTM):
            hx = (hx, torch.randn(2, 5, 20, dtype=torch.double))
        results = []
        for rnn in (theirs, ours):
            opt = torch.optim.SGD(rnn.parameters(), lr=0.1)
            opt.zero_grad()
            rnn(x, hx)[0].sum().backward()
            opt.step()
            results.append(rnn(x, hx))
        assert_equal(results[1], results[0])


def test_partial_flat_weights():
    # torch deletes a weight, moves the module (to CUDA there, to float64 here) and puts the
    # weight back: the module must survive the move and give the same output.
    m = rnnkit.LSTM(10, 6, 2)
    inp = torch.randn(3, 2, 10)
    expected = m(inp)
    weight_orig = m.weight_hh_l0
    del m.weight_hh_l0
    assert not hasattr(m, "weight_hh_l0")
    m.double()
    m.weight_hh_l0 = nn.Parameter(weight_orig.double())
    assert_equal(m(inp.double())[0].float(), expected[0])


def test_RNN_cudnn_weight_norm():
    # torch moves the weight-normed module to CUDA; the CPU half checks the output is kept.
    def check_weight_norm(m, name):
        x = torch.randn(7, 6, 10)
        expected = m(x)
        m = torch.nn.utils.weight_norm(m, name=name)
        assert_equal(m(x), expected)
        m = torch.nn.utils.remove_weight_norm(m, name=name)
        assert_equal(m(x), expected)

    check_weight_norm(rnnkit.LSTM(10, 6, 2), "weight_hh_l0")
    check_weight_norm(rnnkit.LSTM(10, 6, 2, proj_size=3), "weight_hr_l0")


# ----------------------------------------------------------------- test_nn: TestNNDeviceType


def test_rnn_retain_variables():
    for dtype in (torch.float32, torch.float64):
        for rnn in (rnnkit.LSTM(10, 20, num_layers=2), rnnkit.GRU(10, 20, num_layers=2),
                    rnnkit.RNN(10, 20, num_layers=2)):
            rnn.to(dtype)
            x = torch.randn(5, 6, 10, dtype=dtype, requires_grad=True)
            output = rnn(x)
            output[0].sum().backward(retain_graph=True)
            grads = [x.grad.clone()] + [p.grad.clone() for p in rnn.parameters()]
            for _ in range(4):
                rnn.zero_grad()
                x.grad.zero_()
                output[0].sum().backward(retain_graph=True)
                assert_equal([x.grad] + [p.grad for p in rnn.parameters()], grads)


def test_variable_sequence():
    dtype = torch.float

    def pad(var, length):
        if var.size(0) == length:
            return var
        return torch.cat([var, var.new_zeros(length - var.size(0), *var.size()[1:])])

    def index_tuple(hidden, i):
        return None if hidden is None else tuple(h[:, i:i + 1, :].contiguous() for h in hidden)

    def check_lengths(lengths, enforce_sorted, use_default_hiddens, proj_size):
        input_size, hidden_size, num_layers, directions = 3, 4, 2, 2
        max_length = max(lengths)
        x_leaf = torch.randn(max_length, len(lengths), input_size, dtype=dtype,
                             requires_grad=True)
        lstm = rnnkit.LSTM(input_size, hidden_size, bidirectional=True, num_layers=num_layers,
                           proj_size=proj_size).to(dtype)
        lstm2 = copy.deepcopy(lstm).to(dtype)
        x = x_leaf
        hidden0 = None
        if not use_default_hiddens:
            real_hidden = proj_size or hidden_size
            hidden0 = (torch.randn(directions * num_layers, len(lengths), real_hidden),
                       torch.randn(directions * num_layers, len(lengths), hidden_size))
        seq_outs, seq_hiddens = [], []
        for i, length in enumerate(lengths):
            out, hid = lstm2(x[:length, i:i + 1], index_tuple(hidden0, i))
            seq_outs.append(pad(out, max_length))
            seq_hiddens.append(hid)
        seq_out = torch.cat(seq_outs, 1)
        seq_hidden = tuple(torch.cat(hids, 1) for hids in zip(*seq_hiddens, strict=True))

        packed = rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        packed_out, packed_hidden = lstm(packed, hidden0)
        unpacked, unpacked_len = rnn_utils.pad_packed_sequence(packed_out)

        prec = 1e-5  # torch's dtype2prec_DONTUSE[torch.float]
        assert_equal(packed_hidden, seq_hidden, atol=prec, rtol=0)
        assert_equal(unpacked, seq_out, atol=prec, rtol=0)
        assert unpacked_len.tolist() == list(lengths)

        seq_out.sum().backward()
        grad_x = x_leaf.grad.clone()
        x_leaf.grad.zero_()
        unpacked.sum().backward()
        assert_equal(x_leaf.grad, grad_x, atol=prec, rtol=0)
        for p1, p2 in zip(lstm.parameters(), lstm2.parameters(), strict=True):
            assert_equal(p1.grad, p2.grad, atol=prec, rtol=0)

    for enforce_sorted, lengths in [
        (True, [5]),
        (False, [5]),
        (True, [10, 10, 6, 2, 2, 1, 1]),
        (False, [10, 10, 6, 2, 2, 1, 1]),
        (False, [2, 1, 3, 2, 10, 5, 3]),
    ]:
        for use_default_hiddens in (True, False):
            for proj_size in (0, 2):
                check_lengths(lengths, enforce_sorted, use_default_hiddens, proj_size)


def _test_rnn_mod(mod, inp):
    def flatten_out(mod, inp):
        out = mod(inp)
        return tuple(t if isinstance(t, torch.Tensor) else tt for t in out for tt in t)

    gradcheckfunc = partial(flatten_out, mod)
    assert gradcheck(gradcheckfunc, inp, check_batched_grad=False)
    assert gradgradcheck(gradcheckfunc, inp, check_batched_grad=False)


def test_LSTM_grad_and_gradgrad():
    hsize = 4
    inp = torch.rand(1, 3, hsize, dtype=torch.double, requires_grad=True)
    for bias in (True, False):
        _test_rnn_mod(rnnkit.LSTM(hsize, hsize, bias=bias).double(), inp)


def test_GRU_grad_and_gradgrad():
    hsize = 4
    inp = torch.rand(1, 3, hsize, dtype=torch.double, requires_grad=True)
    for bias in (True, False):
        _test_rnn_mod(rnnkit.GRU(hsize, hsize, bias=bias).double(), inp)


def test_LSTM_differentiable_backward_using_oneDNN():
    # torch compares its oneDNN and native kernels; rnnkit's result must match torch's.
    batch, seq_len, input_size = 10, 12, 3
    torch.manual_seed(0)
    theirs = nn.LSTM(input_size, 3, 20, batch_first=True)
    ours = rnnkit.LSTM(input_size, 3, 20, batch_first=True)
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(batch, seq_len, input_size)
    results = []
    for net in (theirs, ours):
        xi = x.clone().requires_grad_(True)
        out, _ = net(xi)
        der_out = torch.autograd.grad(out, xi, grad_outputs=torch.ones_like(out),
                                      retain_graph=True, create_graph=True)[0]
        der_out.sum().backward(retain_graph=True)
        results.append((der_out.detach(), xi.grad, [p.grad for p in net.parameters()]))
    (d1, g1, p1), (d2, g2, p2) = results
    assert torch.allclose(d1, d2)
    assert torch.allclose(g1, g2)
    for a, b in zip(p1, p2, strict=True):
        assert_equal(b, a, atol=1e-5, rtol=1e-4)
