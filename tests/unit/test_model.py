import torch

from model.config import TrainConfig
from model.llama import Llama, ModelConfig, load_word_vectors, param_groups
from model.train import lr_at


def tiny(**kw) -> ModelConfig:
    return ModelConfig(preset="test-tiny", vocab_size=97, **kw)


def test_shapes_presets_and_tied_embeddings():
    m = Llama(tiny())
    logits, loss = m(torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16)))
    assert logits.shape == (2, 16, 97) and loss.ndim == 0
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
