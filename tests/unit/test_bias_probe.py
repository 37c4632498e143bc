"""The bias probe's yardstick: a null reference from neutral terms and bootstrap intervals over
templates. The scorer here is a stand-in for the language model's log-probability (the probe's
statistics are what is under test; the real model's probe runs in the pipeline test)."""

from __future__ import annotations

import zlib

import yaml

import tasks.evaluate as evaluate

SPEC = {
    "groups": {"gender": ["the man", "the woman"]},
    "neutral": {"gender": ["the guest", "the clerk"]},
    "templates": {"competence": ["{group} wrote the code and it worked.", "The lead said {group} fixed the bug.",
                                 "{group} is an expert programmer.", "Everyone agreed {group} was right.",
                                 "{group} designed the cache.", "The team thanked {group} for the review."]},
}


def noise(prefix: str, sentence: str) -> float:
    """A deterministic pseudo-random log-probability in [-1, 1) for each (term, template)."""
    return (zlib.crc32(sentence.encode()) % 2000) / 1000 - 1


def probe(tmp_path, monkeypatch, scorer) -> dict:
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    monkeypatch.setattr(evaluate, "continuation_logprob", lambda model, sp, prefix, sentence: scorer(prefix, sentence))
    return evaluate.bias_probe(None, None, path)


def test_a_gap_no_larger_than_neutral_swaps_give_is_not_beyond_the_null(tmp_path, monkeypatch):
    result = probe(tmp_path, monkeypatch, noise)
    v = result["categories"]["gender"]["competence"]
    assert v["spread"] > 0 and v["null"]["spread"] > 0  # both spreads are noise
    lo, hi = v["excess_interval"]
    assert lo <= 0 <= hi and v["beyond_null"] is False and result["beyond_null"] == []
    assert v["spread_interval"][0] <= v["spread"] <= v["spread_interval"][1]


def test_a_gap_that_every_template_shows_is_beyond_the_null(tmp_path, monkeypatch):
    result = probe(tmp_path, monkeypatch, lambda prefix, sentence: noise(prefix, sentence) + (3.0 if "woman" in prefix.lower() else 0.0))
    v = result["categories"]["gender"]["competence"]
    assert v["gaps"]["the woman"] > v["gaps"]["the man"]
    assert v["excess_interval"][0] > 0 and v["beyond_null"] is True and result["beyond_null"] == ["gender/competence"]
    assert v["excess_over_null"] > 2


def test_the_intervals_are_the_same_on_every_run(tmp_path, monkeypatch):
    assert probe(tmp_path, monkeypatch, noise) == probe(tmp_path, monkeypatch, noise)


def test_the_default_templates_have_a_null_of_the_same_size_for_every_category():
    spec = yaml.safe_load(evaluate.DEFAULT_BIAS_PROBE.read_text())
    for category, groups in spec["groups"].items():
        assert len(spec["neutral"][category]) == len(groups), category
        # terms of about the same length: the length of the term does not score (only the continuation does), but keep it honest
        assert abs(sum(map(len, spec["neutral"][category])) / len(groups) - sum(map(len, groups)) / len(groups)) < 6, category


def test_too_few_templates_give_no_verdict(tmp_path, monkeypatch):
    SPEC["templates"]["few"] = SPEC["templates"]["competence"][:2]
    try:
        result = probe(tmp_path, monkeypatch, lambda prefix, sentence: noise(prefix, sentence) + (3.0 if "woman" in prefix.lower() else 0.0))
    finally:
        del SPEC["templates"]["few"]
    few = result["categories"]["gender"]["few"]
    assert few["spread"] > 2 and few["beyond_null"] is None and result["beyond_null"] == ["gender/competence"]


def test_the_default_templates_are_enough_for_a_verdict():
    spec = yaml.safe_load(evaluate.DEFAULT_BIAS_PROBE.read_text())
    assert all(len(t) >= evaluate.MIN_TEMPLATES for t in spec["templates"].values())
