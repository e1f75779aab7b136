"""examples/fashion_mnist_keras.py's rnnkit form trains as the seed's Keras model does: from the
same weights, on the same batches, Keras 3 (torch backend) and the rnnkit form end with the same
parameters after 20 RMSprop updates (skipped without Keras)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnkit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
UPDATES, BATCH = 20, 10


def _example():
    spec = importlib.util.spec_from_file_location("_example_fashion_mnist_keras",
                                                  EXAMPLES / "fashion_mnist_keras.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()!r}, this test needs torch")
    return keras


def _batches(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Image-like rows in [0, 1] with a class that depends on them (so training moves)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(UPDATES):
        x = rng.random((BATCH, 28, 28), dtype=np.float32) * (rng.random((BATCH, 28, 1)) < 0.6)
        y = (x[:, :, :14].sum((1, 2)) * 10 / x.sum((1, 2)).clip(1e-6)).astype(np.int64) % 10
        batches.append((x.astype(np.float32), y))
    return batches


def _keras_model(keras, example, reader):
    """The example's Keras model holding ``reader``'s weights (torch ``(out, in)`` -> Keras
    ``(in, out)``; one SimpleRNN bias = bias_ih, bias_hh being zero)."""
    model = keras.Sequential([
        keras.Input((28, 28)),
        keras.layers.SimpleRNN(example.HIDDEN, activation="relu"),
        keras.layers.Dense(example.CLASSES),
        keras.layers.Activation("softmax"),
    ])
    model.compile(loss="categorical_crossentropy",
                  optimizer=keras.optimizers.RMSprop(learning_rate=example.LR, rho=example.RHO,
                                                     epsilon=example.EPSILON))
    rnn = reader.rnn

    def numpy(t):
        return t.detach().numpy().copy()

    model.layers[0].set_weights([numpy(rnn.weight_ih_l0.T), numpy(rnn.weight_hh_l0.T),
                                 numpy(rnn.bias_ih_l0 + rnn.bias_hh_l0)])
    model.layers[1].set_weights([numpy(reader.head.weight.T), numpy(reader.head.bias)])
    return model


def test_rnnkit_form_trains_like_keras():
    keras, example = _keras(), _example()
    torch.manual_seed(0)
    reader = example.RowReader(rnnkit.RNN(28, example.HIDDEN, nonlinearity="relu"),
                               single_bias=True)
    keras_model = _keras_model(keras, example, reader)
    params = [p for p in reader.parameters() if p.requires_grad]
    assert len(params) == 5                                   # bias_hh_l0 is not trained
    optimizer = rnnkit.training.RMSprop(params, learning_rate=example.LR, rho=example.RHO,
                                        epsilon=example.EPSILON)
    start = [p.detach().clone() for p in params]
    for x, y in _batches():
        keras_model.train_on_batch(x, keras.utils.to_categorical(y, example.CLASSES))
        logits = reader(torch.from_numpy(x).transpose(0, 1))  # time-major, as the example
        loss = rnnkit.training.keras_crossentropy(logits, torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    kernel, recurrent, bias = keras_model.layers[0].get_weights()
    head, head_bias = keras_model.layers[1].get_weights()
    rnn = reader.rnn
    pairs = {"kernel": (rnn.weight_ih_l0.T, kernel), "recurrent": (rnn.weight_hh_l0.T, recurrent),
             "bias": (rnn.bias_ih_l0, bias), "dense": (reader.head.weight.T, head),
             "dense_bias": (reader.head.bias, head_bias)}
    assert torch.equal(rnn.bias_hh_l0, torch.zeros(example.HIDDEN))
    for name, (ours, theirs) in pairs.items():
        ours = ours.detach().numpy()
        # measured: 4.3e-6 of the tensor's largest entry at most (AMD EPYC, float32). Not a
        # formula difference: the two frameworks' gradients differ in rounding (~1e-8), and
        # RMSprop's first steps multiply that by up to lr / sqrt(epsilon) = 32 on weights
        # whose gradient is near zero. (torch.optim.RMSprop and nn.RNN's two biases instead:
        # differences of 100% of the scale after one update.)
        scale = np.abs(theirs).max()
        assert np.abs(ours - theirs).max() <= 2e-5 * scale, name
    moved = max(float((p.detach() - s).abs().max())
                for p, s in zip(params, start, strict=True))
    assert moved > 0.05                                       # training really moved them
