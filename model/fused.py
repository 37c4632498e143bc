"""Hand-fused autograd functions for the eager hot spots of model/llama.py.

In eager PyTorch each elementwise op is its own pass over memory, and autograd saves and
replays every intermediate. These four functions do the same math in fewer passes, with
backward written out, so an uncompiled step spends its time in matmuls:

- `linear_cross_entropy`: the LM head and the loss in row chunks. The full (tokens x vocab)
  fp32 logits are never stored: each chunk's gradient, softmax minus one-hot, is formed in
  place and multiplied straight into the head's and the hidden states' gradients, in forward
  (under bf16 autocast, a block of up to 64 MiB of bf16 logits at a time).
- `rope`: rotate-half RoPE in two passes, saving only the cos/sin tables.
- `rms_norm`: one reduction for the scale; backward from the saved normalized input.
- `swiglu`: silu(gate) * up without storing silu(gate).

Each matches the plain expression to float rounding (tests/unit/test_model.py).
"""

from __future__ import annotations

import torch

from model.gemm import mm_t, onednn_applies


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


_LOW_PRECISION_BLOCK_BYTES = 64 << 20


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index: int, chunk: int):
        dtype = _compute_dtype(h)  # matmuls in the autocast dtype, softmax in fp32
        with torch.autocast(h.device.type, enabled=False):
            hs, w = h.to(dtype), weight.to(dtype)
            valid = targets != ignore_index
            scale = 1.0 / valid.sum().clamp(min=1).float()
            grad_h = torch.empty(h.shape, dtype=dtype, device=h.device) if ctx.needs_input_grad[0] else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if ctx.needs_input_grad[1] else None
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            rows, vocab = h.shape[0], w.shape[0]
            low = dtype != torch.float32
            # fp32: blocks of one chunk in reused buffers (fresh large tensors cost page faults on
            # CPU). Lower precision: the softmax still runs a chunk at a time in fp32, but each
            # chunk's gradient overwrites its logits, so the three matmuls run once per block
            # of up to _LOW_PRECISION_BLOCK_BYTES of logits instead of once per chunk.
            cap = max(chunk, _LOW_PRECISION_BLOCK_BYTES // (vocab * w.element_size()))
            block = chunk if not low else rows if rows <= cap else cap // chunk * chunk
            onednn = onednn_applies(hs, w)  # fp32 on CPU: oneDNN's matmul, faster than MKL's here (model/gemm.py)
            logits = None if onednn else torch.empty((min(block, rows), vocab), dtype=dtype, device=h.device)  # oneDNN returns its own
            logp = torch.empty((min(chunk, rows), vocab), dtype=torch.float32, device=h.device)
            for b in range(0, rows, block):
                bn = min(block, rows - b)
                hb = hs[b : b + bn]
                block_logits = mm_t(hb, w) if onednn else torch.mm(hb, w.T, out=logits[:bn])
                for s in range(0, bn, chunk):
                    n = min(chunk, bn - s)
                    v = valid[b + s : b + s + n]
                    t = targets[b + s : b + s + n].masked_fill(~v, 0)
                    torch.log_softmax(block_logits[s : s + n], -1, dtype=torch.float32, out=logp[:n])
                    total -= (logp[:n].gather(1, t[:, None]).squeeze(1) * v).sum()
                    if grad_h is None and grad_w is None:
                        continue
                    g = logp[:n].exp_()  # softmax, then minus one-hot: d(token NLL)/d(logits)
                    g.scatter_add_(1, t[:, None], torch.full((n, 1), -1.0, device=g.device))
                    if low:
                        block_logits[s : s + n].copy_(g)
                if grad_h is None and grad_w is None:
                    continue
                g = block_logits if low else logp[:bn]  # fp32: the block is one chunk
                keep = valid[b : b + bn, None].to(dtype)  # ignored rows: zeroed on the narrow side of each matmul
                if grad_h is not None:
                    torch.mul(mm_t(g, w.T) if onednn else g @ w, keep, out=grad_h[b : b + bn])
                if grad_w is not None:
                    hk = hb * keep
                    grad_w.add_(g.T @ hk) if low else grad_w.addmm_(g.T, hk)
        ctx.save_for_backward(grad_h, grad_w, scale)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, scale = ctx.saved_tensors
        k = grad_out * scale
        return (
            None if grad_h is None else (grad_h.float() * k).to(ctx.dtypes[0]),
            None if grad_w is None else (grad_w * k).to(ctx.dtypes[1]),
            None,
            None,
            None,
        )


def _apply_linear_cross_entropy(h, weight, targets, ignore_index: int, chunk: int) -> torch.Tensor:
    return _LinearCrossEntropy.apply(h, weight, targets, ignore_index, chunk)


# Outside torch.compile's graphs: already fused by hand, and traced, its unrolled chunk loop
# more than doubled compile time. torch._disable_dynamo is torch.compiler.disable imported on
# the first call instead of at import: a process that never compiles (evaluation, export,
# lm-eval) skips torch._dynamo's ~1 s import.
_outside_the_graph = torch._disable_dynamo(_apply_linear_cross_entropy)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, chunk: int = 256) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T` against `targets` over the rows not equal to
    ignore_index; h is (rows, d). Equals F.cross_entropy(F.linear(h, weight).float(), targets)."""
    if torch.compiler.is_compiling():
        return _outside_the_graph(h, weight, targets, ignore_index, chunk)
    return _apply_linear_cross_entropy(h, weight, targets, ignore_index, chunk)


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        half = x.shape[-1] // 2
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        out = x * cos
        out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
        out[..., half:].addcmul_(x[..., :half], sin[..., half:])
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx, g):
        cos, sin = ctx.saved_tensors
        half = g.shape[-1] // 2  # the transpose of the rotation: the same form with -sin
        gx = g * cos
        gx[..., :half].addcmul_(g[..., half:], sin[..., half:])
        gx[..., half:].addcmul_(g[..., :half], sin[..., :half], value=-1)
        return gx, None, None


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1) (transformers' convention)."""
    return _Rope.apply(x, cos, sin)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        x32 = x.float()
        rstd = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        xhat = x32 * rstd
        ctx.save_for_backward(xhat, weight, rstd)
        ctx.x_dtype = x.dtype
        return xhat.to(x.dtype) * weight

    @staticmethod
    def backward(ctx, g):
        xhat, weight, rstd = ctx.saved_tensors
        gw = (g.float() * xhat).sum(tuple(range(g.ndim - 1))).to(weight.dtype) if ctx.needs_input_grad[1] else None
        gxhat = (g * weight).float()
        dot = (gxhat * xhat).mean(-1, keepdim=True)
        gx = torch.addcmul(gxhat, xhat, dot, value=-1).mul_(rstd).to(ctx.x_dtype)
        return gx, gw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """(x / rms(x)) in fp32, cast back to x's dtype, times weight (transformers' LlamaRMSNorm)."""
    return _RMSNorm.apply(x, weight, eps)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return torch.nn.functional.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        d_up = torch.nn.functional.silu(gate).mul_(dy)
        d_gate = torch.mul(dy, up)
        torch.ops.aten.silu_backward.grad_input(d_gate, gate, grad_input=d_gate)
        return d_gate, d_up


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up with one fresh tensor forward and two backward (autograd's: two and three),
    and without storing silu(gate)."""
    return _SwiGLU.apply(gate, up)
