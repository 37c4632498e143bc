"""fp32 matmuls on CPU through oneDNN instead of MKL, where that is faster.

PyTorch sends plain fp32 `mm` on CPU to MKL's sgemm. On this machine's AMD EPYC, MKL's own
log (MKL_VERBOSE=1) names only its generic "Intel(R) Architecture processors" path, while
oneDNN, also inside PyTorch, picks kernels by instruction set (ONEDNN_VERBOSE=1:
`brg_matmul:avx512_core`). A 2048^3 fp32 matmul runs at ~215 GFLOP/s through oneDNN against
~160 through MKL, at the same IEEE fp32 precision (bench/RESULTS.md).

oneDNN's inner-product kernel wins for `x @ w.T` with many rows (forward, and the input
gradient, `g @ w`), not for the weight gradient (`g.T @ x`, a long reduction over rows),
which stays with MKL. Anything that is not fp32 on an x86 CPU outside autocast (bf16
already runs on oneDNN; CUDA has cuBLAS; ARM was not measured) takes the ordinary path, and
LLMILL_ONEDNN_LINEAR=0 turns the switch off.
"""

from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F

_HAS_ONEDNN = (
    platform.machine().lower() in ("x86_64", "amd64")
    and os.environ.get("LLMILL_ONEDNN_LINEAR", "1") != "0"
    and torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)


def onednn_applies(*tensors: torch.Tensor) -> bool:
    return _HAS_ONEDNN and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and not torch.is_autocast_enabled("cpu")


def _inner_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [None], "")


# An opaque op for torch.compile: inductor's own lowering of _linear_pointwise expects
# frozen (constant) weights, which training weights are not.
@torch.library.custom_op("llmill::onednn_mm_t", mutates_args=())
def _onednn_mm_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _inner_product(a, b)


@_onednn_mm_t.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.new_empty(a.shape[0], b.shape[0])


def mm_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T for 2-D a (rows, k) and b (n, k); b may be a transposed view."""
    if not onednn_applies(a, b):
        return a @ b.T
    if torch.compiler.is_compiling():
        return _onednn_mm_t(a, b)
    return _inner_product(a, b)  # eager: skip the custom op's Python dispatch (~0.1 ms a call)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return mm_t(x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        gx = mm_t(g2, weight.T).view(x.shape) if ctx.needs_input_grad[0] else None
        gw = g2.T @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        return gx, gw


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with the fp32 CPU matmuls of forward and input gradient on oneDNN."""
    if bias is not None or not onednn_applies(x, weight):
        return F.linear(x, weight, bias)
    return _Linear.apply(x, weight)


class Linear(torch.nn.Linear):
    """nn.Linear (same parameters and state dict) whose matmuls go through `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
