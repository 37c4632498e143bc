from collections import Counter

from tasks.clean import CleanConfig, clean_document, normalize_text
from tasks.pii import PIIConfig, redact
from tasks.quality import C4Config, GopherQualityConfig, c4_filter, gopher_quality, gopher_repetition, GopherRepetitionConfig, words_of

PROSE = (
    "The quick brown fox jumps over the lazy dog near the bank of the river. "
    "It was the best of times and it was the worst of times, as the story goes. "
    "A careful reader will note that these sentences have a subject and a verb. "
    "Meanwhile, the committee met on Tuesday to discuss next year's budget in detail. "
    "Several members argued that funding for public libraries should be increased. "
    "Others preferred to spend the money on repairing roads and bridges with care. "
    "In the end, a compromise was reached after many hours of patient negotiation. "
)


def test_pii_redaction_counts_each_kind():
    text = (
        "Write to jane.doe@example.org or call +1 650-253-0000 or (202) 456-1414. "
        "The server at 8.8.8.8 and 2001:4860:4860::8888 answered; 192.168.1.10 is private. "
        "Python 3.11.7 was released on 2023-12-04."
    )
    out, counts = redact(text, PIIConfig())
    assert counts == Counter({"email": 1, "phone": 2, "ip": 2})
    assert "<EMAIL>" in out and "jane.doe" not in out
    assert "8.8.8.8" not in out and "2001:4860" not in out
    assert "192.168.1.10" in out  # not globally routable: identifies nobody
    assert "3.11.7" in out and "2023-12-04" in out  # versions and dates are not phone numbers
    out, counts = redact(text, PIIConfig(redact_non_global_ips=True))
    assert "192.168.1.10" not in out and counts["ip"] == 3


def test_dotted_numbers_that_context_shows_are_no_address_stay():
    cfg = PIIConfig()
    kept = ["see Section 4.2.1.3 below", "upgrade to version 4.2.1.3", "in § 4.2.1.3 of the standard", "Figure 12.3.1.4 shows it",
            "4.2.1.3 Scope of the change", "OID 1.3.6.1.4.1.311 names it", "the arc 1.3.6.1.4.1.21396 is ours"]
    for text in kept:
        out, counts = redact(text, cfg)
        assert out == text and counts["ip"] == 0 and counts["ip_kept_by_context"] == 1, (text, counts)  # counted as avoided
    for text in ("connect to 4.2.1.3 now", "8.8.8.8 is a resolver", "the host 93.184.216.34."):  # addresses in running text
        assert redact(text, cfg)[1] == Counter({"ip": 1}), text


def test_planted_pii_is_found_and_planted_lookalikes_are_left_alone():
    from tests.pii_planted import score

    result = score(lambda text: redact(text, PIIConfig())[0])
    assert result["true_pii"] >= 200 and result["lookalikes"] >= 200
    assert result["recall"] >= 0.95, result["missed"][:10]
    assert result["precision"] >= 0.98, result["wrong"][:10]
    assert min(result["recall_by_kind"].values()) >= 0.9, result["recall_by_kind"]


def test_normalization():
    assert normalize_text("Cafe\u0301  \t bar\u200b\r\n\n\n\nnext\x07 line ") == "Café bar\n\nnext line"


def test_quality_rules_name_what_failed():
    assert gopher_quality("too short", words_of("too short"), GopherQualityConfig()) == "min_doc_words"
    assert gopher_quality(PROSE, words_of(PROSE), GopherQualityConfig()) is None
    symbols = "# " * 60 + PROSE
    assert gopher_quality(symbols, words_of(symbols), GopherQualityConfig()) == "max_symbol_word_ratio"
    repeated = "\n".join(["the same line again and again"] * 10 + [PROSE])
    assert gopher_repetition(repeated, words_of(repeated), GopherRepetitionConfig()) == "dup_line_frac"
    assert c4_filter("lorem ipsum dolor " + PROSE, C4Config())[0] == "lorem_ipsum"
    assert c4_filter("x = {1: 2}. " + PROSE, C4Config())[0] == "curly_bracket"
    reason, kept = c4_filter(PROSE.replace(". ", ".\n") + "\nEnable JavaScript to view this page.\nok", C4Config(min_num_sentences=2))
    assert reason is None and "JavaScript" not in kept and "\nok" not in kept


def test_clean_document_keeps_prose_and_drops_other_languages():
    rule, info = clean_document(PROSE.replace("members", "members (mail me at a.b@example.com)"), CleanConfig())
    assert rule is None and info["language"] == "en" and info["pii"]["email"] == 1
    german = "Der schnelle braune Fuchs springt über den faulen Hund am Ufer des Flusses. " * 10
    rule, info = clean_document(german, CleanConfig())
    assert rule == "language" and info["language"] == "de"


def test_dropped_documents_are_kept_for_audit_with_their_pii_redacted(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.clean import clean_shard

    short = "Mail jane.doe@example.com now."  # dropped by min_chars
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a"], "url": ["http://site.test/a"], "text": [short]}), src)
    cfg = CleanConfig(min_chars=200)
    clean_shard((str(src), cfg, str(tmp_path / "kept.parquet"), str(tmp_path / "dropped.parquet")))
    (row,) = pq.read_table(tmp_path / "dropped.parquet").to_pylist()
    assert row["rule"] == "min_chars"
    assert "jane.doe@example.com" not in row["text"] and "Mail" in row["text"]  # before: the address as crawled
