"""Scores against scikit-learn and against direct computation on hand-sized examples."""

from __future__ import annotations

import lzma
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from formats.tokenizer import BOS
from model.llama import Llama, ModelConfig
from tasks.evaluate import scoring_windows, stream_nll
from tasks.scores import bits_per_byte, classification_scores, unigram_bpb, xz_baselines


def test_classification_scores_agree_with_sklearn():
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 4, 300))
    y_pred[y_pred == 3] = 2  # class 3 never predicted: precision 0 by convention, as in sklearn
    labels = ["a", "b", "c", "d"]
    ours = classification_scores(y_true.tolist(), y_pred.tolist(), labels)
    assert math.isclose(ours["accuracy"], accuracy_score(y_true, y_pred))
    assert ours["confusion"] == confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    for average in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        assert np.allclose([ours[average]["precision"], ours[average]["recall"], ours[average]["f1"]], [p, r, f])
    # a class absent from both truth and prediction does not drag the macro average down
    absent = classification_scores(y_true.tolist(), y_pred.tolist(), labels + ["e"])
    assert absent["macro"] == ours["macro"] and absent["per_class"]["e"]["support"] == 0
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    for i, name in enumerate(labels):
        c = ours["per_class"][name]
        assert np.allclose([c["precision"], c["recall"], c["f1"]], [p[i], r[i], f[i]]) and c["support"] == s[i]


def test_stream_nll_and_bits_per_byte_match_a_direct_computation():
    torch.manual_seed(0)
    model = Llama(ModelConfig(preset="test-tiny", vocab_size=40, max_seq_len=8)).eval()
    tokens = np.array([5, 9, 3, 17, 22, 3, 8, 8, 30, 11, 3, 4, 19, 7, 3, 25, 6, 3, 12], dtype=np.uint16)  # 19: 2 windows + a short one
    nll, n = stream_nll(model, tokens, batch_size=2, stride=8)
    assert n == len(tokens)  # every token scored, the first after <s>
    # direct: each window of 8 predicts its next 8 tokens from scratch
    stream = [BOS] + tokens.tolist()
    expected = 0.0
    for start in range(0, len(stream) - 1, 8):
        x = torch.tensor([stream[start : start + 8]])
        y = stream[start + 1 : start + 9]
        x = x[:, : len(y)]
        with torch.no_grad():
            logp = torch.log_softmax(model(x)[0][0].double(), -1)
        expected -= sum(float(logp[i, t]) for i, t in enumerate(y))
    assert math.isclose(nll, expected, rel_tol=1e-5)
    assert math.isclose(math.exp(nll / n), math.exp(expected / len(tokens)), rel_tol=1e-5)
    assert math.isclose(bits_per_byte(nll, 57), expected / math.log(2) / 57, rel_tol=1e-5)


def test_sliding_windows_score_each_token_once_with_at_least_half_the_context():
    assert scoring_windows(19, 8, 4) == [(0, 8, 8), (4, 8, 4), (8, 8, 4), (12, 7, 3)]
    assert scoring_windows(19, 8, 8) == [(0, 8, 8), (8, 8, 8), (16, 3, 3)]
    assert scoring_windows(5, 8, 4) == [(0, 5, 5)]
    with pytest.raises(ValueError, match="stride"):
        scoring_windows(19, 8, 9)
    torch.manual_seed(0)
    model = Llama(ModelConfig(preset="test-tiny", vocab_size=40, max_seq_len=8)).eval()
    tokens = np.array([5, 9, 3, 17, 22, 3, 8, 8, 30, 11, 3, 4, 19, 7, 3, 25, 6, 3, 12], dtype=np.uint16)
    nll, n = stream_nll(model, tokens, batch_size=3)  # stride 0: half the context, 4
    assert n == len(tokens)
    # direct: target j (stream[j + 1]) from the tokens since the latest window start at a multiple
    # of 4 that still holds j in its 8 inputs: j - start >= 4 once j >= 8
    stream = [BOS] + tokens.tolist()
    expected = 0.0
    for j in range(len(tokens)):
        start = 0 if j < 8 else -(-(j - 7) // 4) * 4
        assert j - start >= (0 if j < 8 else 4)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([stream[start : j + 1]]))[0][0, -1].double(), -1)
        expected -= float(logp[stream[j + 1]])
    assert math.isclose(nll, expected, rel_tol=1e-5)
    consecutive, _ = stream_nll(model, tokens, batch_size=3, stride=8)
    assert not math.isclose(nll, consecutive, rel_tol=1e-4)  # the context differs, so does the score


def test_xz_and_unigram_baselines_by_hand():
    train, val = "alpha beta gamma\n" * 200, "alpha beta delta\n" * 20
    b = xz_baselines(train, val)
    assert b["val_bytes"] == len(val.encode())
    assert math.isclose(b["xz_bpb"], 8 * len(lzma.compress(val.encode(), preset=9)) / len(val))
    both = len(lzma.compress((train + val).encode(), preset=9)) - len(lzma.compress(train.encode(), preset=9))
    assert math.isclose(b["xz_conditional_bpb"], 8 * both / len(val))
    assert b["xz_conditional_bpb"] < b["xz_bpb"]  # the training text helps
    # unigram: two tokens, counts 3 and 1, add-one -> p = 4/6, 2/6
    bpb = unigram_bpb(np.array([0, 0, 0, 1]), np.array([0, 1]), 2, 4)
    assert math.isclose(bpb, -(math.log2(4 / 6) + math.log2(2 / 6)) / 4)


def test_sft_loss_ignores_prompt_targets():
    from formats.example_files import IGNORE
    from tasks.examples import sft_labels

    torch.manual_seed(0)
    model = Llama(ModelConfig(preset="test-tiny", vocab_size=50, max_seq_len=16)).eval()
    ids = [BOS, 11, 12, 13, 14, 20, 21, 22, 3]  # prompt: <s> 11..14, response: 20 21 22 </s>
    prompt_len = 5
    x = torch.tensor([ids[:-1]])

    def loss(labels):
        with torch.no_grad():
            return float(model(x, torch.tensor([labels[1:]]), ignore_index=IGNORE)[1])

    masked = sft_labels(ids, prompt_len)
    assert masked[:prompt_len] == [IGNORE] * prompt_len and masked[prompt_len:] == ids[prompt_len:]
    other_prompt = [BOS, 40, 41, 42, 43] + ids[prompt_len:]  # prompt targets changed, inputs the same
    assert loss(sft_labels(other_prompt, prompt_len)) == loss(masked)
    # the same change without masking moves the loss: the test can fail
    assert loss(other_prompt) != loss(ids)
    # and the masked loss is the mean over response positions only
    with torch.no_grad():
        logp = torch.log_softmax(model(x)[0][0].float(), -1)
    direct = -sum(float(logp[i - 1, ids[i]]) for i in range(prompt_len, len(ids))) / (len(ids) - prompt_len)
    assert math.isclose(loss(masked), direct, rel_tol=1e-5)


def test_classifier_pools_only_real_tokens():
    from model.heads import Classifier

    torch.manual_seed(0)
    model = Classifier(ModelConfig(preset="test-tiny", vocab_size=50, max_seq_len=16), 3).eval()
    x = torch.tensor([[2, 7, 8, 9, 0, 0, 0, 0]])
    padded_differently = torch.tensor([[2, 7, 8, 9, 33, 34, 35, 36]])
    lengths = torch.tensor([4])
    with torch.no_grad():
        assert torch.allclose(model(x, lengths), model(padded_differently, lengths), atol=1e-6)
        assert not torch.allclose(model(x, lengths), model(x, torch.tensor([5])))
    assert F.cross_entropy(model(x, lengths), torch.tensor([1])).requires_grad
