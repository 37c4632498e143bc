"""PII redaction: e-mail addresses, IP addresses and phone numbers become placeholders.

IP addresses are redacted only when globally routable by default (as in FineWeb): the
private and documentation ranges that fill technical pages identify nobody. Phone numbers
are found by libphonenumber's matcher, so version strings and dates survive.

A dotted quad is a valid IPv4 address by syntax alone, and documentation is full of them that
are not: `Section 4.2.1.3`, `version 10.2.0.1`, OIDs, numbered headings. So context decides
(`not_an_address`): a dotted number right after a word that numbers things (section, chapter,
version, release, figure, table, OID, ...), one that opens a line as a heading's number
(`4.2.1.3 Scope`), or one that is part of a longer dotted sequence (`1.3.6.1.4.1`) is left
alone. Measured on planted sets (tests/pii_planted.py, `bench/pii.py`).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

import phonenumbers
from pydantic import BaseModel, ConfigDict

EMAIL = re.compile(r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
SEVEN_DIGITS = re.compile(r"\d(?:[\s().\-/]{0,3}\d){6}")  # no phone number has fewer: skip the matcher


class PIIConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    email: bool = True
    ip: bool = True
    phone: bool = True
    redact_non_global_ips: bool = False
    phone_region: str = "US"  # for numbers written without a country code
    email_placeholder: str = "<EMAIL>"
    ip_placeholder: str = "<IP_ADDRESS>"
    phone_placeholder: str = "<PHONE>"


# words after which a dotted number numbers something ("see Section 4.2.1.3", "v. 1.2.0.4")
NUMBERING_WORD = re.compile(
    r"(?:\b(?:sections?|sect?|chapters?|chap|ch|versions?|ver|v|releases?|rel|builds?|revisions?|rev|editions?|"
    r"figures?|figs?|tables?|tab|clauses?|articles?|arts?|paragraphs?|paras?|parts?|appendix|annex|steps?|items?|"
    r"rules?|requirements?|req|listings?|equations?|eqs?|exercises?|problems?|theorems?|lemmas?|definitions?|def|"
    r"oids?|arcs?|mib\s+objects?|isbn|rfc|standard|specification|spec|page|pages|pp?|no|nos|number)\.?|§§?|#)"
    r"(?:\s*[:(]\s*|\s+|&nbsp;)*$",
    re.I,
)
DOTTED_BEFORE = re.compile(r"\d\.$")
OID_LIKE = re.compile(r"\d+(?:\.\d+)*\.\d\.\d+(?:\.\d+)*")  # dots only, a one-digit group inside: 1.3.6.1.4.1.311, not 01.23.45.67.89
DOTTED_AFTER = re.compile(r"\.\d")
HEADING_NUMBER = re.compile(r"(?:^|\n)[ \t>*#-]*$")  # only a bullet or a heading mark before it on its line
HEADING_TEXT = re.compile(r"\.?[ \t]+[A-Z]")  # ... and a capitalized title after it


def in_dotted_sequence(text: str, start: int, end: int) -> bool:
    """text[start:end] continues a dotted number before it or after it (1.3.6.1.4.1.21396)."""
    return bool(DOTTED_BEFORE.search(text, 0, start)) or bool(DOTTED_AFTER.match(text, end))


def not_an_address(text: str, start: int, end: int) -> bool:
    """A dotted quad at text[start:end] that context shows to be a number of another kind."""
    if in_dotted_sequence(text, start, end):
        return True
    before = text[max(0, start - 40):start]
    if NUMBERING_WORD.search(before):
        return True
    return bool(HEADING_NUMBER.search(before)) and bool(HEADING_TEXT.match(text, end))


def _ip_to_redact(candidate: str, cfg: PIIConfig) -> bool:
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return cfg.redact_non_global_ips or ip.is_global


def _redact_phones(text: str, cfg: PIIConfig, counts: Counter) -> str:
    """libphonenumber's own matcher, at its VALID leniency: it finds numbers in the forms people
    write them (`+33 1 23 45 67 74`, `+31612345697`, `(212) 736-5000`) and leaves dates,
    versions, prices and ISBNs alone; numbers without a country code are read in `phone_region`."""
    spans = [(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(text, cfg.phone_region, leniency=phonenumbers.Leniency.VALID)
             if not in_dotted_sequence(text, m.start, m.end) and not OID_LIKE.fullmatch(m.raw_string)]
    for start, end in reversed(spans):
        text = text[:start] + cfg.phone_placeholder + text[end:]
    counts["phone"] += len(spans)
    return text


def redact(text: str, cfg: PIIConfig) -> tuple[str, Counter]:
    counts: Counter = Counter()
    if not cfg.enabled:
        return text, counts

    def sub(pattern: re.Pattern, kind: str, placeholder: str, check=None):
        nonlocal text
        original = text

        def repl(m: re.Match) -> str:
            if check is not None and not check(m):
                return m.group(0)
            counts[kind] += 1
            return placeholder

        text = pattern.sub(repl, original)

    if cfg.email and "@" in text:
        sub(EMAIL, "email", cfg.email_placeholder)
    if cfg.ip:
        def address(m: re.Match) -> bool:
            if not _ip_to_redact(m.group(0), cfg):
                return False
            if not_an_address(m.string, m.start(), m.end()):
                counts["ip_kept_by_context"] += 1  # a syntax-only redactor would have taken it
                return False
            return True

        sub(IPV4, "ip", cfg.ip_placeholder, address)
        if "::" in text or text.count(":") >= 2:
            sub(IPV6, "ip", cfg.ip_placeholder, lambda m: ":" in m.group(0) and _ip_to_redact(m.group(0), cfg))
    if cfg.phone and SEVEN_DIGITS.search(text):
        text = _redact_phones(text, cfg, counts)
    return text, counts
