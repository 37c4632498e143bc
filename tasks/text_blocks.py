"""Text from trafilatura's element tree, one line per block.

trafilatura's own text output keeps the newlines of the HTML source inside a block: a
paragraph or list item that the source wraps at 80 columns (a browser collapses that
whitespace) comes out as several short lines, and the clean stage's line rules (C4's words
per line, FineWeb's line rules) then judge and drop fragments of sentences. Rendered from the
tree instead, every block element (paragraph, heading, list item, table cell, quote) is one
line with its whitespace collapsed as a browser would, an explicit line break (`<br>`, an
`lb` in the tree) stays a line break, and a preformatted block keeps its lines exactly.
"""

from __future__ import annotations

import re
from html import unescape

# trafilatura's tree: block containers and blocks; everything else (hi, ref, del, inline code) is inline
BLOCKS = {"p", "head", "item", "cell", "quote", "list", "table", "row", "div", "body", "main", "doc", "note", "section"}
CONTAINERS = {"body", "div", "main", "doc", "section", "note"}  # a `code` right inside one of these is a block
SKIPPED = {"graphic", "comments"}
_BREAK = "\x00"  # an explicit line break inside a block, until the block is collapsed
_SPACE = re.compile(r"\s+")
_INDENTED = re.compile(r"\n {2,}\S")


def is_block(el) -> bool:
    if el.tag == "code":  # preformatted when it stands on its own, inline inside running text
        parent = el.getparent()
        return parent is None or parent.tag in CONTAINERS
    return el.tag in BLOCKS


def is_preformatted(el) -> bool:
    """A code block, or a quote laid out by spaces (a `<pre>` that trafilatura made a quote, such
    as Sphinx's grammar productions: a line indented to align with the one above)."""
    if el.tag == "code":
        return is_block(el)
    return el.tag == "quote" and bool(_INDENTED.search("".join(el.itertext())))


def render(body) -> str:
    """The text of trafilatura's extracted tree (`Document.body`): one line per block."""
    lines: list[str] = []
    _walk(body, lines)
    return "\n".join(lines)


def _flush(buffer: list[str], lines: list[str], prefix: str) -> str:
    """Collapse the inline text gathered so far into lines; returns the prefix still unused."""
    for part in "".join(buffer).split(_BREAK):
        text = _SPACE.sub(" ", unescape(part)).strip()  # entities left escaped in the tree, as trafilatura's text unescapes them
        if text:
            lines.append(prefix + text)
            prefix = ""
    buffer.clear()
    return prefix


def _inline(el, buffer: list[str]) -> None:
    """An inline element's text into the block's buffer (its tail is the caller's)."""
    if el.tag == "lb":
        buffer.append(_BREAK)
        return
    if el.tag in SKIPPED:
        return
    buffer.append(el.text or "")
    for child in el:
        _inline(child, buffer)
        buffer.append(child.tail or "")


def _walk(el, lines: list[str], prefix: str = "") -> None:
    if el.tag in SKIPPED:
        return
    if is_preformatted(el):
        text = unescape("".join(el.itertext())).strip("\n")
        for line in (line.rstrip() for line in text.split("\n")):
            if line.strip():
                lines.append(prefix + line)
                prefix = ""
        return
    prefix = prefix or ("- " if el.tag == "item" else "")
    buffer: list[str] = [el.text or ""]
    for child in el:
        if is_block(child) or is_preformatted(child):
            prefix = _flush(buffer, lines, prefix)
            _walk(child, lines, prefix)  # an item that starts with a paragraph: the bullet goes on it
            prefix = ""
        else:
            _inline(child, buffer)
        buffer.append(child.tail or "")
    _flush(buffer, lines, prefix)
