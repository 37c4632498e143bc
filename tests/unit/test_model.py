import contextlib
import os

import pytest
import torch
import torch.nn.functional as F

from model.config import TrainConfig
from model.fused import linear_cross_entropy, rms_norm, rope, swiglu
from model.gemm import Linear, linear, onednn_applies
from model.llama import Llama, ModelConfig, load_word_vectors, param_groups
from model.train import lr_at


def tiny(**kw) -> ModelConfig:
    return ModelConfig(preset="test-tiny", vocab_size=97, **kw)


def test_shapes_presets_and_tied_embeddings():
    m = Llama(tiny())
    x = torch.randint(0, 97, (2, 16))
    logits, none = m(x)
    assert logits.shape == (2, 16, 97) and none is None
    no_logits, loss = m(x, torch.randint(0, 97, (2, 16)))
    assert no_logits is None and loss.ndim == 0  # the loss is fused with the head
    assert m.lm_head.weight is m.embed.weight
    assert not Llama(tiny(tie_embeddings=False)).lm_head.weight is Llama(tiny()).embed.weight
    small = ModelConfig(preset="gpt2-small", vocab_size=50304)
    assert 120e6 < Llama(small).num_params() < 130e6


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = Llama(tiny())
    b = Llama(tiny())
    b.load_state_dict(a.state_dict())
    b.gradient_checkpointing = True
    x = torch.randint(0, 97, (2, 32))
    for m in (a, b):
        m(x, x)[1].backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_grouped_query_attention_and_causality():
    m = Llama(tiny(n_head=4, n_kv_head=2)).eval()
    x = torch.randint(0, 97, (1, 12))
    full = m(x)[0]
    prefix = m(x[:, :6])[0]
    assert torch.allclose(full[:, :6], prefix, atol=1e-5)  # no position sees the future


def test_no_weight_decay_on_norms_or_embeddings():
    m = Llama(tiny())
    decay, no_decay = param_groups(m, 0.1)
    assert all(p.ndim == 2 for p in decay["params"])
    assert any(p is m.embed.weight for p in no_decay["params"])
    assert all(p.ndim == 1 or p is m.embed.weight for p in no_decay["params"])


def test_word_vectors_initialize_matching_pieces(tmp_path):
    vectors = tmp_path / "glove.txt"
    vectors.write_text("3 4\nhello 1 2 3 4\nworld 4 3 2 1\nabsent 0 0 0 1\n")
    m = Llama(tiny())
    before = m.embed.weight.detach().clone()
    pieces = ["<pad>", "\u2581hello", "World", "zzz"] + [f"p{i}" for i in range(93)]
    assert load_word_vectors(m, pieces, str(vectors)) == 2
    changed = (m.embed.weight != before).any(dim=1)
    assert changed[1] and changed[2] and not changed[0] and not changed[3]


def test_schedules():
    tc = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, tc) == 0.1 and lr_at(9, tc) == 1.0
    assert abs(lr_at(100, tc) - 0.1) < 1e-9 and lr_at(50, tc) < 1.0
    wsd = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2)
    assert lr_at(50, wsd) == 1.0 and lr_at(79, wsd) == 1.0 and lr_at(90, wsd) == 0.5


def test_generate_with_sampling_controls():
    torch.manual_seed(0)
    m = Llama(tiny()).eval()
    out = m.generate(torch.tensor([[2, 5]]), 6, temperature=0.8, top_k=10, top_p=0.9)
    assert out.shape == (1, 8)
    greedy = m.generate(torch.tensor([[2, 5]]), 6, temperature=0)
    assert torch.equal(greedy, m.generate(torch.tensor([[2, 5]]), 6, temperature=0))


def plain_rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def plain_rms_norm(x, weight, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def grads_of(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(torch.ones_like(out) if out.ndim == 0 else torch.linspace(-1, 1, out.numel()).view_as(out).to(out.dtype))
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_ops_equal_the_plain_expressions(precision):
    """Values and gradients of model/fused.py against the unfused formulas: in fp32 to
    rounding, under bf16 autocast to bf16's resolution."""
    torch.manual_seed(0)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    atol = 1e-5 if precision == "fp32" else 2e-2
    x = torch.randn(3, 20, 2, 16).transpose(1, 2)  # (batch, head, time, dim) view, as in Attention
    cos, sin = torch.randn(20, 16), torch.randn(20, 16)
    h, w = torch.randn(50, 24), torch.randn(37, 24) * 0.3
    targets = torch.randint(0, 37, (50,))
    targets[[0, 7, 8, 49]] = -100  # ignored rows
    cases = {
        "rope": (lambda a: rope(a, cos, sin), lambda a: plain_rope(a, cos, sin), (x,)),
        "rms_norm": (lambda a, b: rms_norm(a, b, 1e-5), lambda a, b: plain_rms_norm(a, b, 1e-5), (x, torch.randn(16))),
        "linear": (linear, F.linear, (torch.randn(3, 20, 24), torch.randn(40, 24))),
        "swiglu": (swiglu, lambda a, b: F.silu(a) * b, (torch.randn(4, 9, 12) * 3, torch.randn(4, 9, 12))),
        # chunk 16 does not divide 50 rows: the last chunk is short
        "linear_cross_entropy": (
            lambda a, b: linear_cross_entropy(a, b, targets, chunk=16),
            lambda a, b: F.cross_entropy(F.linear(a, b).float(), targets),
            (h, w),
        ),
    }
    for name, (fused, plain, inputs) in cases.items():
        with ctx:
            got, got_grads = grads_of(fused, *inputs)
            want, want_grads = grads_of(plain, *inputs)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.allclose(got.float(), want.float(), atol=atol), name
        for g, r in zip(got_grads, want_grads):
            assert g.dtype == r.dtype and torch.allclose(g, r, atol=atol, rtol=atol), name


def test_fused_loss_in_bf16_blocks_equals_one_block(monkeypatch):
    """Under bf16 autocast the head's matmuls run per block of logits (64 MiB); a budget of
    20 rows of 37 logits splits 50 rows into blocks of 16, 16, 16 and 2."""
    import model.fused

    torch.manual_seed(0)
    h, w = torch.randn(50, 24), torch.randn(37, 24) * 0.3
    targets = torch.randint(0, 37, (50,))
    targets[[0, 17, 49]] = -100
    fused = lambda a, b: linear_cross_entropy(a, b, targets, chunk=16)  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        whole = grads_of(fused, h, w)
        monkeypatch.setattr(model.fused, "_LOW_PRECISION_BLOCK_BYTES", 20 * 37 * 2)
        blocks = grads_of(fused, h, w)
        plain = grads_of(lambda a, b: F.cross_entropy(F.linear(a, b).float(), targets), h, w)
    for got in (whole, blocks):
        assert torch.allclose(got[0], plain[0], atol=2e-2)
        for g, r in zip(got[1], plain[1]):
            assert torch.allclose(g, r, atol=2e-2, rtol=2e-2)
    assert torch.allclose(whole[0], blocks[0], atol=1e-6)
    for g, r in zip(whole[1], blocks[1]):
        assert torch.allclose(g, r, atol=1e-3, rtol=1e-2)


def test_fused_loss_without_gradients_and_with_all_rows_ignored():
    h, w = torch.randn(10, 8), torch.randn(11, 8)
    t = torch.randint(0, 11, (10,))
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(h, w, t), F.cross_entropy(h @ w.T, t))
    none = torch.full((10,), -100)
    h.requires_grad_()
    loss = linear_cross_entropy(h, w, none)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(h.grad.abs().max()) == 0.0


def test_a_process_that_never_compiles_never_imports_dynamo():
    """Evaluation, export and generation load the model without paying torch._dynamo's ~1 s
    import: the fused loss is kept out of compiled graphs without importing it (model/fused.py)."""
    import subprocess
    import sys
    from pathlib import Path

    probe = ("import sys, torch\n"
             "from model.llama import Llama, ModelConfig\n"
             "m = Llama(ModelConfig(preset='test-tiny', vocab_size=64))\n"
             "idx = torch.randint(0, 64, (2, 16))\n"
             "m(idx, idx)[1].backward()\n"
             "m.generate(idx[:, :4], 3)\n"
             "print('torch._dynamo' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_model_loss_and_gradients_equal_the_unfused_head():
    """Tied embeddings receive the head's gradient through the fused loss as they would
    through F.linear + F.cross_entropy."""
    torch.manual_seed(0)
    m = Llama(tiny())
    x = torch.randint(0, 97, (2, 24))
    y = torch.roll(x, -1, 1)
    y[0, :5] = -100
    m(x, y, ignore_index=-100)[1].backward()
    fused = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    F.cross_entropy(m(x)[0].view(-1, 97), y.view(-1)).backward()
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, fused[n], atol=1e-6), n


def test_fp32_linear_runs_on_onednn_and_compiles_without_graph_breaks():
    """model/gemm.py: in fp32 on CPU the forward and input-gradient matmuls are oneDNN's
    (MKL's sgemm is slower on this AMD CPU); under torch.compile the same op runs opaque
    in the graph, with no graph break, and gives eager's numbers."""
    from torch.profiler import profile

    torch.manual_seed(0)
    x, w = torch.randn(2, 64, 32, requires_grad=True), torch.randn(48, 32, requires_grad=True)
    if os.environ.get("LLMILL_ONEDNN_LINEAR") == "0":  # switched off: the plain path, no oneDNN call
        assert not onednn_applies(x, w)
        with profile() as prof:
            linear(x, w).sum().backward()
        assert "mkldnn::_linear_pointwise" not in {e.key for e in prof.key_averages()}
        return
    assert onednn_applies(x, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn_applies(x, w)  # bf16 autocast keeps aten's path (oneDNN already)
    with profile() as prof:
        linear(x, w).sum().backward()
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("mkldnn::_linear_pointwise") == 2, calls  # forward and input gradient
    eager = (x.grad.clone(), w.grad.clone())

    torch._dynamo.reset()  # no guards or recompilation counts left by whatever compiled before
    layer = Linear(32, 48, bias=False)
    layer.weight.data.copy_(w.detach())
    compiled = torch.compile(layer, fullgraph=True)
    x2 = x.detach().clone().requires_grad_()
    # Both graphs compile outside the profile: AOTAutograd compiles the backward lazily, on
    # the first backward, and Inductor's lowering then calls the op on fake tensors, which a
    # profile counts too (4 calls, not 2, whenever the FX graph cache is cold).
    compiled(x2).sum().backward()
    x2.grad, layer.weight.grad = None, None
    with profile() as prof:
        out = compiled(x2)
        out.sum().backward()
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("llmill::onednn_mm_t") == 2, calls
    assert torch.allclose(out, F.linear(x, w), atol=1e-5)
    assert torch.allclose(x2.grad, eager[0], atol=1e-5) and torch.allclose(layer.weight.grad, eager[1], atol=1e-4)


def test_bf16_on_a_cpu_without_native_bf16_trains_in_fp32(monkeypatch):
    """oneDNN emulates bf16 matmuls without AVX-512/AMX (16x slower than fp32 on an AVX2 EPYC):
    the trainer computes in fp32 there and says so; GPUs and capable CPUs keep bf16."""
    from model.train import effective_precision

    monkeypatch.delenv("LLMILL_CPU_BF16", raising=False)
    precision, note = effective_precision("bf16", cpu=True, native_bf16=False)
    assert precision == "no" and "fp32" in note
    assert effective_precision("bf16", cpu=True, native_bf16=True) == ("bf16", "")
    assert effective_precision("bf16", cpu=False, native_bf16=False) == ("bf16", "")
    assert effective_precision("no", cpu=True, native_bf16=False) == ("no", "")
    monkeypatch.setenv("LLMILL_CPU_BF16", "1")
    assert effective_precision("bf16", cpu=True, native_bf16=False) == ("bf16", "")
