"""Extraction quality on the Python docs: word-level precision, recall and F1 of each extractor
against the page's main content, which the pages mark (`div[role=main]`).

    .venv/bin/python bench/extraction.py [--pages N]

The reference is the main element's text as a browser lays it out (a break after each block
and <br>, whitespace collapsed; the "¶" permalinks, which show only on hover, left out). Scores
are over word multisets (bullets and the permalink sign left out): precision = shared words / extracted words, recall = shared words /
reference words, per page, then averaged over pages (and pooled over all words). Extractors:
trafilatura as the extract stage runs it (fast, one line per block: the default), with its
fallback extractors (`extract.fast: false`), trafilatura's own text output (`text_lines:
source`), and resiliparse (`extract.backend: resiliparse`). Writes bench/results-extraction.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tasks.extract import ExtractConfig, extract_text  # noqa: E402
from tests.helpers import PYDOCS  # noqa: E402

EXTRACTORS = {
    "trafilatura fast, blocks (default)": ExtractConfig(),
    "trafilatura with fallbacks, blocks": ExtractConfig(fast=False),
    "trafilatura fast, its own text": ExtractConfig(text_lines="source"),
    "resiliparse": ExtractConfig(backend="resiliparse"),
}
BLOCK_TAGS = ("br", "p", "li", "dt", "dd", "td", "th", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "div", "section", "table",
              "blockquote", "caption", "figcaption")


def toc_share(html: str) -> float:
    """The share of the main element's words inside a table of contents (Sphinx's toctree):
    chapter and index pages are mostly that, navigation that extractors drop by design."""
    import lxml.html

    main = lxml.html.document_fromstring(html).find(".//div[@role='main']")
    total = len(main.text_content().split()) if main is not None else 0
    toc = sum(len(t.text_content().split()) for t in main.iterfind(".//div[@class='toctree-wrapper compound']")) if total else 0
    return toc / total if total else 0.0


def main_content_words(html: str) -> list[str] | None:
    import lxml.html

    doc = lxml.html.document_fromstring(html)
    main = doc.find(".//div[@role='main']")
    if main is None:
        return None
    for el in list(main.iter("script", "style")):
        el.drop_tree()
    for a in list(main.iter("a")):
        if "headerlink" in (a.get("class") or ""):
            a.drop_tree()
    for el in main.iter(*BLOCK_TAGS):
        el.tail = "\n" + (el.tail or "")
    return main.text_content().split()


def words(tokens: list[str]) -> list[str]:
    """Words as scored: the permalink sign trafilatura keeps on headings stripped, and tokens
    with no letter or digit (list bullets, table rules) left out."""
    out = []
    for t in tokens:
        t = t.replace("¶", "")
        if any(c.isalnum() for c in t):
            out.append(t)
    return out


def scores(reference: list[str], extracted: list[str]) -> tuple[int, int, int]:
    reference, extracted = words(reference), words(extracted)
    shared = sum((Counter(reference) & Counter(extracted)).values())
    return shared, len(extracted), len(reference)


def summarize(measured: list[tuple[int, int, int]]) -> dict:
    """Mean per-page precision, recall and F1, and the same pooled over all words."""
    per_page = []
    for shared, n_ext, n_ref in measured:
        p = shared / n_ext if n_ext else 0.0
        r = shared / n_ref
        per_page.append((p, r, 2 * p * r / (p + r) if p + r else 0.0))
    mean = [sum(x[i] for x in per_page) / len(per_page) for i in range(3)]
    shared, n_ext, n_ref = (sum(m[i] for m in measured) for i in range(3))
    pp, pr = shared / n_ext, shared / n_ref
    return {"pages": len(measured), "precision": mean[0], "recall": mean[1], "f1": mean[2], "pooled_precision": pp,
            "pooled_recall": pr, "pooled_f1": 2 * pp * pr / (pp + pr), "pages_under_0.9_recall": sum(1 for x in per_page if x[1] < 0.9)}


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=None)
    args = ap.parse_args()
    files = sorted(p for p in PYDOCS.rglob("*.html") if "_static" not in p.parts)
    pages = []
    for f in files:
        html = f.read_text(encoding="utf-8", errors="replace")
        ref = main_content_words(html)
        if ref and len(ref) >= 20:  # index and search pages have next to no main text
            pages.append((f, html, ref, toc_share(html) < 0.5))
    pages = pages[: args.pages] if args.pages else pages
    print(f"{len(pages)} pages of python3.11-doc with a main element of 20 words or more")
    result = {"pages": len(pages), "extractors": {}}
    result["content_pages"] = sum(1 for *_, content in pages if content)
    print(f"{result['content_pages']} of them content pages (less than half of the main text in a table of contents)")
    for name, cfg in EXTRACTORS.items():
        started = time.perf_counter()
        measured = []
        for f, html, ref, content in pages:
            _, text = extract_text(html, f"https://docs.python.org/3.11/{f.relative_to(PYDOCS)}", cfg)
            measured.append((scores(ref, text.split()), content))
        seconds = time.perf_counter() - started
        row = {"all_pages": summarize([m for m, _ in measured]), "content_pages": summarize([m for m, c in measured if c]),
               "seconds": round(seconds, 1)}
        result["extractors"][name] = row
        for which in ("all_pages", "content_pages"):
            r = row[which]
            print(f"{name}, {which.replace('_', ' ')}: P {r['precision']:.3f} R {r['recall']:.3f} F1 {r['f1']:.3f} "
                  f"(pooled P {r['pooled_precision']:.3f} R {r['pooled_recall']:.3f}); {r['pages_under_0.9_recall']} pages under 0.9 recall")
        print(f"  {seconds:.1f} s")
    (HERE / "results-extraction.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
