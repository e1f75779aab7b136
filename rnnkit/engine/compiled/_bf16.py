"""``precision="bf16"`` on the compiled kernels: which GEMMs take bfloat16 operands, and how.

A bf16 call of a family on the step-loop template runs its GEMMs with bfloat16 operands and
float32 results; nothing else changes precision:

* the hoisted input projection ``x W_ih^T`` (one GEMM over all T*B rows): ``x`` and ``W_ih``
  rounded to bfloat16 (:class:`Bf16Linear`), the product accumulated and returned in float32,
  the biases (and ``LN_ih``) added in float32;
* the per-step recurrent products (``h W_hh^T``; the LSTM projection ``m W_hr^T``; the
  reset-before GRU's ``(r * h) W_hn^T``): the weights rounded to bfloat16 once per call,
  the GEMM's left operand (the float32 state) once per step (``csrc/bf16.h``);
* float32: the gate math, layer norms, the carried state (never rounded between steps), the
  outputs and final state, everything saved for backward, and every gradient. BPTT runs
  float32 GEMMs against the forward's rounded operands (``dh = drec W_bf16``,
  ``dW = drec^T h_bf16``): the gradient of the bf16 forward with the rounding taken as the
  identity (straight-through).

On a CPU with AMX-BF16 the per-step products run on rnnkit's AMX kernel (``csrc/amx.h``: the
weight laid out in tile order once per call, where MKL re-lays it at every step) and the input
projection on MKL's ``cblas_gemm_bf16bf16f32``; with AVX512-bf16 alone, all on MKL; elsewhere
(AVX2 only, such as AMD EPYC Zen 3) they are emulated: the operands are rounded to bf16
values held in float32 and multiplied by the float32 BLAS. A product of two bf16 values is
exact in float32, so the emulation is the same GEMM up to the order of the float32 sums, and
it is about as fast as float32, never faster (rnnkit says so once per process).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: What every bf16 call of the compiled kernels rounds, in the words explain() prints.
WHAT = ("bf16 GEMMs: the input projection and the per-step recurrent products take bfloat16 "
        "operands (weights rounded once per call, the state once per step) with float32 "
        "accumulation; gate math, carried state, outputs and gradients in float32")


def rounded(t: Tensor) -> Tensor:
    """``t``'s values rounded to bfloat16 (nearest even), kept in ``t``'s dtype."""
    return t.to(torch.bfloat16).to(t.dtype)


class Bf16Linear(torch.autograd.Function):
    """``x W^T`` with both operands rounded to bfloat16 and a float32 result; ``x`` (M, K),
    ``W`` (N, K), float32. Backward: float32 GEMMs against the rounded operands,
    ``dx = g W_bf16`` and ``dW = g^T x_bf16``."""

    @staticmethod
    def forward(ctx, ext, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return ext.bf16_linear(x.contiguous(), weight.contiguous())  # (M, N)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        dx = grad @ rounded(weight) if ctx.needs_input_grad[1] else None  # (M, K)
        dw = grad.t() @ rounded(x) if ctx.needs_input_grad[2] else None  # (N, K)
        return None, dx, dw


_prepared = False


def prepare() -> None:
    """Once per process before the first bf16 GEMM: ask Linux for the AMX tile state (what
    oneDNN does for torch; MKL uses AMX only with it). A no-op on CPUs without AMX."""
    global _prepared
    if _prepared:
        return
    _prepared = True
    init_amx = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    if init_amx is not None:
        try:
            init_amx()
        except RuntimeError:  # no AMX, or a kernel that refuses: MKL then uses AVX512-bf16
            pass


def linear(ext) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """``F.linear``'s signature on the bf16 GEMM of ``ext`` (the adapters' projection)."""

    def bf16_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        out = Bf16Linear.apply(ext, x, weight)  # (M, N), a fresh tensor of ours
        # in place: at (T*B, 4H) = (4096, 4096) a second result is 64 MB of fresh pages
        return out if bias is None else out.add_(bias)

    return bf16_linear


def gemm(ext) -> str:
    """``"amx"``, ``"mkl"`` or ``"emulated"``: how this process runs bf16 GEMMs."""
    return str(ext.bf16_gemm())


def describe(ext) -> str:
    """What explain() says a bf16 call on the compiled kernels does on this CPU."""
    mode = gemm(ext)
    if mode == "amx":
        how = ("per-step products on rnnkit's AMX kernel (weights laid out once per call), "
               "the input projection on MKL's cblas_gemm_bf16bf16f32")
    elif mode == "mkl":
        how = "MKL's cblas_gemm_bf16bf16f32 (AVX512-bf16/AMX)"
    elif ext.cpu_has_native_bf16():
        how = "emulated (set to: bf16-rounded operands through the float32 BLAS)"
    else:
        how = ("emulated on this CPU (no AVX512-bf16/AMX): bf16-rounded operands through the "
               "float32 BLAS, no faster than float32")
    return f"{WHAT}; {how}"
