"""Extraction on real pages (Debian's python3.11-doc) and bad input that must be quarantined."""

from __future__ import annotations

import gzip

import pytest

from tasks.extract import ExtractConfig, decode_html, extract_warc, Quarantined
from tests.helpers import bad_pages, python_doc_pages, write_warc



def test_real_python_docs_pages(tmp_path):
    pages = [p for p in python_doc_pages() if p[0].endswith(("library/json.html", "library/itertools.html", "library/pathlib.html"))]
    assert len(pages) == 3
    warc = write_warc(tmp_path / "docs.warc.gz", pages)
    docs, quarantine, responses = extract_warc(str(warc), ExtractConfig())
    assert responses == 3 and not quarantine
    by_url = {d["url"].rsplit("/", 1)[-1]: d for d in docs}
    assert "JavaScript Object Notation" in by_url["json.html"]["text"]
    assert "json.dumps" in by_url["json.html"]["text"]
    assert "chain" in by_url["itertools.html"]["text"] and "permutations" in by_url["itertools.html"]["text"]
    assert "PurePath" in by_url["pathlib.html"]["text"]
    assert "json" in by_url["json.html"]["title"].lower()
    # navigation and boilerplate stay out of the main text
    assert "Previous topic" not in by_url["json.html"]["text"]
    assert all(d["id"] and d["warc_record_id"].startswith("<urn:uuid:") and d["digest"] for d in docs)


def test_resiliparse_backend_behind_the_same_interface(tmp_path):
    pages = [p for p in python_doc_pages() if p[0].endswith("library/json.html")]
    warc = write_warc(tmp_path / "docs.warc.gz", pages)
    docs, quarantine, _ = extract_warc(str(warc), ExtractConfig(backend="resiliparse"))
    assert not quarantine and "json.dumps" in docs[0]["text"]


def test_bad_pages_are_quarantined_with_reasons(tmp_path):
    warc = write_warc(tmp_path / "bad.warc.gz", bad_pages())
    docs, quarantine, responses = extract_warc(str(warc), ExtractConfig(max_html_bytes=10_000_000))
    reasons = {q["url"]: q["reason"] for q in quarantine}
    assert reasons["http://bad.test/not-utf8"].startswith("bad_encoding")
    assert reasons["http://bad.test/empty"].startswith("empty")
    assert reasons["http://bad.test/huge"].startswith("too_large")
    assert reasons["http://bad.test/binary"].startswith("binary")
    urls = {d["url"] for d in docs}
    assert "http://bad.test/latin1-declared" in urls  # a declared charset is honoured
    assert "Café crème" in next(d["text"] for d in docs if d["url"].endswith("latin1-declared"))
    assert len(urls) == 3 and responses == 7


def test_truncated_warc_keeps_what_came_before(tmp_path):
    full = write_warc(tmp_path / "full.warc.gz", python_doc_pages(6))
    data = full.read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    docs, quarantine, _ = extract_warc(str(cut), ExtractConfig())
    assert 1 <= len(docs) < 6
    assert quarantine[-1]["reason"].startswith("damaged_warc")
    garbage = tmp_path / "garbage.warc.gz"
    garbage.write_bytes(gzip.compress(b"this is not a WARC file at all\r\n\r\n"))
    docs, quarantine, _ = extract_warc(str(garbage), ExtractConfig())
    assert docs == [] and quarantine[0]["reason"].startswith("damaged_warc")


def test_decode_html_rules():
    assert decode_html("é".encode(), "text/html") == "é"
    assert decode_html('<meta charset="latin-1">é'.encode("latin-1"), "") .endswith("é")
    with pytest.raises(Quarantined, match="unknown charset"):
        decode_html(b"abc", "text/html; charset=klingon")


def test_the_page_timeout_cannot_be_swallowed_by_a_backends_catch_all(monkeypatch):
    import time

    from tasks import extract

    def swallowing(html, url, cfg):  # as trafilatura's own `except Exception` blocks would
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                time.sleep(0.01)
            except Exception:  # noqa: BLE001
                pass
        return "", "finished after all"

    monkeypatch.setitem(extract.BACKENDS, "trafilatura", swallowing)
    started = time.monotonic()
    with pytest.raises(Quarantined, match="timeout"):
        extract.extract_text("<html></html>", "http://example.com/", ExtractConfig(timeout_s=0.2))
    assert time.monotonic() - started < 5


def test_content_encoded_records_are_decoded_under_the_size_limit(tmp_path):
    import brotli
    import tracemalloc

    (url, page, ctype), = python_doc_pages(1)
    bomb = brotli.compress(b"\0" * (64 << 20), quality=1)
    warc = write_warc(tmp_path / "encoded.warc.gz", [
        ("http://enc.test/bomb", bomb, "text/html", {"Content-Encoding": "br"}),
        ("http://enc.test/gzip", gzip.compress(page), ctype, {"Content-Encoding": "gzip"}),
        ("http://enc.test/stored-decoded", page, ctype, {"Content-Encoding": "gzip"}),  # header kept, body already decoded
        ("http://enc.test/compress", page, ctype, {"Content-Encoding": "compress"}),
        (url, page, ctype),
    ])
    tracemalloc.start()
    try:
        docs, quarantine, _ = extract_warc(str(warc), ExtractConfig(max_html_bytes=1_000_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    reasons = {q["url"]: q["reason"] for q in quarantine}
    assert reasons["http://enc.test/bomb"].startswith("too_large: over 1000000 bytes decoded")
    assert reasons["http://enc.test/compress"].startswith("unsupported_encoding")
    texts = {d["url"]: d["text"] for d in docs}
    assert texts["http://enc.test/gzip"] == texts["http://enc.test/stored-decoded"] == texts[url]
    assert peak < 40 * 1024 * 1024, peak  # the bomb decodes to 64 MiB


# A page as documentation generators write them: source wrapped at 80 columns inside paragraphs
# and list items, inline markup across the wraps, a <pre> block, a table and a <br>.
HARD_WRAPPED = """<!DOCTYPE html><html><head><title>Release notes</title></head><body>
<nav><a href="/">Home</a> <a href="/about">About us</a></nav>
<main>
<h1>Django 1.11.5 release notes</h1>
<p>Django 1.11.5 fixes a security issue and several bugs in 1.11.4. When the
queryset is evaluated twice (for example by iterating over it), the reported status will
 be affected.)</p>
<h2>Bugfixes</h2>
<ul class="simple">
<li>Fixed a race condition in <code class="docutils literal"><span class="pre">QuerySet.update_or_create()</span></code> that could result
in data loss (<a href="https://code.djangoproject.com/ticket/29499">#29499</a>).</li>
<li><code>QueryDict.urlencode()</code> now encodes the values correctly, which
had regressed in an earlier release of the framework after a change to quoting.</li>
<li>Fixed a crash of the admin when the model has a <em>custom
primary key</em> that is a UUID field and the changelist shows many rows.</li>
<li>Fixed the status code of a retried request (if a <code>Proxy</code> answers first, the reported status will
 be affected.)</li>
</ul>
<p>To upgrade, run the following commands in the project's virtual environment:<br>first
the installer, then the migrations.</p>
<pre>python -m pip install --upgrade django
python manage.py migrate
    --fake-initial
</pre>
<table><tr><th>Version</th><th>Released on</th></tr>
<tr><td>Django 1.11.5 with the
security fix</td><td>September 5, 2017</td></tr></table>
<p>Thanks to everyone who reported these problems, and to the <strong>volunteers
who triaged</strong> and fixed them over the summer.</p>
</main>
<footer>Copyright Django Software Foundation and contributors</footer>
</body></html>"""


def visible_words(html: str) -> list[str]:
    """The words a browser shows in the page's main element (whitespace collapsed)."""
    import lxml.html

    main = lxml.html.document_fromstring(html).find(".//main")
    for el in main.iter("br", "p", "li", "td", "th", "tr", "h1", "h2", "pre", "div"):  # a break after each, as rendered
        el.tail = "\n" + (el.tail or "")
    return main.text_content().split()


def test_hard_wrapped_blocks_become_one_line_each_and_no_visible_word_is_lost():
    from collections import Counter

    from tasks.extract import extract_text

    _, text = extract_text(HARD_WRAPPED, "https://docs.example.org/releases/1.11.5/", ExtractConfig())
    lines = text.split("\n")
    assert not Counter(visible_words(HARD_WRAPPED)) - Counter(text.split())  # every visible word, as often as shown
    assert ("Django 1.11.5 fixes a security issue and several bugs in 1.11.4. When the queryset is evaluated twice (for example by "
            "iterating over it), the reported status will be affected.)") in lines
    assert "- Fixed a race condition in QuerySet.update_or_create() that could result in data loss (#29499)." in lines
    assert "- QueryDict.urlencode() now encodes the values correctly, which had regressed in an earlier release of the framework " \
           "after a change to quoting." in lines  # its own line: not glued to the item before
    assert "- Fixed a crash of the admin when the model has a custom primary key that is a UUID field and the changelist shows many rows." in lines
    # an explicit line break stays one; a <pre> block keeps its lines and indentation
    assert "To upgrade, run the following commands in the project's virtual environment:" in lines and "first the installer, then the migrations." in lines
    pre = lines.index("python -m pip install --upgrade django")
    assert lines[pre + 1 : pre + 3] == ["python manage.py migrate", "    --fake-initial"]
    assert "Django 1.11.5 with the security fix" in lines and "September 5, 2017" in lines  # a table cell per line
    assert "Thanks to everyone who reported these problems, and to the volunteers who triaged and fixed them over the summer." in lines

    assert "- Fixed the status code of a retried request (if a Proxy answers first, the reported status will be affected.)" in lines
    # before: trafilatura's text keeps the source's wraps inside list items, and after a <br>
    _, source = extract_text(HARD_WRAPPED, "https://docs.example.org/releases/1.11.5/", ExtractConfig(text_lines="source"))
    assert {"be affected.)", "in data loss (#29499).", "first"} <= {line.strip() for line in source.split("\n")}


def test_the_clean_stage_keeps_the_end_of_a_hard_wrapped_sentence():
    from collections import Counter

    from tasks.clean import CleanConfig, clean_document
    from tasks.extract import extract_text

    # C4's line rule on (lines under 3 words go); the rules about code-heavy pages off: this page is short
    cfg = CleanConfig.model_validate({"language": {"enabled": False}, "gopher_quality": {"enabled": False},
                                      "gopher_repetition": {"enabled": False}, "fineweb": {"enabled": False}})
    for lines in ("blocks", "source"):
        _, text = extract_text(HARD_WRAPPED, "https://docs.example.org/releases/1.11.5/", ExtractConfig(text_lines=lines))
        rule, info = clean_document(text, cfg)
        assert rule is None, (lines, rule)
        lost = Counter(visible_words(HARD_WRAPPED)) - Counter(info["text"].split())  # C4: lines under 3 words are removed
        wrapped_ends = {"be", "affected.)", "first"}  # where the source wraps a sentence after its first words
        if lines == "blocks":  # only whole short blocks go (a heading, table headers, a code line), no part of a sentence
            assert set(lost) == {"Bugfixes", "Version", "Released", "on", "--fake-initial"}, lost
        else:
            assert wrapped_ends <= set(lost), lost


def test_the_shard_counts_its_lines_and_those_trafilatura_s_own_text_had(tmp_path):
    from tasks.extract import extract_shard

    pages = [("https://docs.example.org/releases/1.11.5/", HARD_WRAPPED.encode(), "text/html; charset=utf-8")]
    pages += [p for p in python_doc_pages() if p[0].endswith(("library/json.html", "library/functions.html"))]
    warc = write_warc(tmp_path / "docs.warc.gz", pages)
    size = warc.stat().st_size
    result = extract_shard(([(str(warc), 0, size)], ExtractConfig(), str(tmp_path / "d.parquet"), str(tmp_path / "q.parquet")))
    source = extract_shard(([(str(warc), 0, size)], ExtractConfig(text_lines="source"), str(tmp_path / "d2.parquet"), str(tmp_path / "q2.parquet")))
    assert result["documents"] == 3 and result["lines_in_trafilatura_text"] == source["lines"]  # the same pages' own text
    assert result["lines"] < result["lines_in_trafilatura_text"]  # wraps joined: fewer, whole lines
    assert source["lines_in_trafilatura_text"] == 0  # nothing rendered by block
