"""Helpers shared by the tests: hand-written pieces of the oracles, the checks
that several test files make in the same way, and the path runners' recorder."""

from __future__ import annotations

import doctest
import importlib
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.autograd import gradcheck


def randomise(module: nn.Module, scale: float = 0.5) -> nn.Module:
    """Draw every parameter (layer norms and peepholes included) away from its init."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * scale)
    return module


def sigmoid(v: Tensor) -> Tensor:
    """The logistic function written out, independently of ``torch.sigmoid``."""
    return 1.0 / (1.0 + torch.exp(-v))


def layer_norm_by_hand(v: Tensor, norm: nn.LayerNorm) -> Tensor:
    """``norm(v)`` written out: biased variance over the last dimension, then the affine part."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def gradcheck_cell(cell: nn.Module, x: Tensor, state: Tensor | tuple[Tensor, ...]) -> None:
    """gradcheck over the input, the state and every parameter of ``cell`` (float64)."""
    names = [name for name, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in cell.named_parameters()]
    is_tuple = isinstance(state, tuple)
    states = list(state) if is_tuple else [state]
    states = [s.detach().clone().requires_grad_() for s in states]
    n_state = len(states)

    def fn(x, *rest):
        st = tuple(rest[:n_state]) if is_tuple else rest[0]
        ps = dict(zip(names, rest[n_state:], strict=True))
        out, new = torch.func.functional_call(cell, ps, (x, st))
        return (out, *(new if isinstance(new, tuple) else (new,)))

    x = x.detach().clone().requires_grad_()
    assert gradcheck(fn, (x, *states, *params), eps=1e-6, atol=1e-6)


def assert_same_parameters(cell: nn.Module, ref: nn.Module) -> None:
    """``cell`` holds exactly ``ref``'s parameters: names, shapes, order and values."""
    assert [(n, p.shape) for n, p in cell.named_parameters()] == [
        (n, p.shape) for n, p in ref.named_parameters()
    ]
    for a, b in zip(cell.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


def assert_step_matches_torch_cell(cell: nn.Module, ref: nn.Module, x: Tensor, h: Tensor) -> None:
    """One step of a single-state ``cell`` against the torch cell ``ref`` holding the same
    weights: output, new state, and the gradients w.r.t. ``x``, ``h`` (which must require
    grad) and every parameter of a random weighting of the new state."""
    out, h1 = cell(x, h)
    h2 = ref(x, h)
    torch.testing.assert_close(out, h2, atol=1e-5, rtol=0)
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=0)
    w = torch.randn_like(h2)
    mine = torch.autograd.grad((h1 * w).sum(), [x, h, *cell.parameters()])
    theirs = torch.autograd.grad((h2 * w).sum(), [x, h, *ref.parameters()])
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(markdown: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def doc_python_blocks(name: str) -> list[str]:
    """The python blocks of ``docs/<name>``, the examples the docs promise will run."""
    return python_blocks((DOCS / name).read_text(encoding="utf-8"))


def doc_sections(name: str, *titles: str) -> str:
    """The ``## `` sections of ``docs/<name>`` whose titles start with one of ``titles`` (a
    doc several modules share gives each module's runner its own sections)."""
    parts = (DOCS / name).read_text(encoding="utf-8").split("\n## ")
    return "\n".join("## " + part for part in parts[1:] if part.startswith(titles))


def run_doc_block(block: str, where: str, namespace: dict | None = None) -> dict:
    """Run one python block of a doc as a reader would paste it (warnings silenced: a doc
    example is judged by what it prints and raises), in ``namespace`` (a fresh one if None)."""
    namespace = {} if namespace is None else namespace
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(block, where, "exec"), namespace)  # noqa: S102
    return namespace


def assert_doctests_pass(module_name: str) -> None:
    """The module's docstring examples run and print what they say (at least one example)."""
    module = importlib.import_module(module_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


class TorchLSTMCell(nn.Module):
    """torch.nn.LSTMCell in the rnnkit step contract, with no rnnkit base class: an
    independent oracle cell, and the shape of a user's own cell."""

    def __init__(self, input_size: int = 3, hidden_size: int = 4) -> None:
        super().__init__()
        self.inner = nn.LSTMCell(input_size, hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.state_size = (hidden_size, hidden_size)
        self.output_size = hidden_size

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple]:
        h, c = self.inner(x, state)
        return h, (h, c)


def record_path_runners(monkeypatch, prepared: str = "compiled", scan: bool = False) -> list[str]:
    """Instrument the engine's path runners and return the list each of their calls appends
    its path to, in order (independent of the plan's own bookkeeping): ``"fused"``
    (``fused.forward``), ``"compiled"`` (``compiled.run_recurrence``), ``prepared`` for a
    drop-in's remembered compiled call (``compiled.run_prepared``), ``"loop"``
    (``loop.run_recurrence``) and, with ``scan``, ``"scan"`` (``parallel.run_recurrence``).
    ``monkeypatch`` undoes it at the end of the test."""
    from rnnkit.engine import compiled, fused, loop, parallel

    calls: list[str] = []

    def record(module, attribute, path):
        original = getattr(module, attribute)

        def wrapper(*args, **kwargs):
            calls.append(path)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, attribute, wrapper)

    record(fused, "forward", "fused")
    record(compiled, "run_recurrence", "compiled")
    record(compiled, "run_prepared", prepared)
    record(loop, "run_recurrence", "loop")
    if scan:
        record(parallel, "run_recurrence", "scan")
    return calls
