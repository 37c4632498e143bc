"""Planted sets for PII redaction: true PII in varied prose, and look-alikes that are not PII
(section numbers, versions, OIDs, dates, prices, ISBNs, coordinates, numbered headings).

Each case is one short text with the string planted in it; a case counts as redacted when the
string is gone from the output. Generated from a seed, so the sets are the same on every run.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from dataclasses import dataclass

import phonenumbers


@dataclass(frozen=True)
class Case:
    kind: str  # email | ip | phone for true PII; the look-alike's kind otherwise
    planted: str
    text: str


FIRST = ["ana", "bo", "chen", "dmitri", "eva", "farah", "goran", "hana", "ines", "jon", "kofi", "lena", "marta", "nils", "omar", "priya"]
LAST = ["silva", "okafor", "nguyen", "schmidt", "rossi", "kowalski", "tanaka", "haddad", "moreau", "lindqvist", "garcia", "novak"]
DOMAINS = ["example.org", "mail.example.com", "uni-heidelberg.de", "posteo.net", "company.co.uk", "lists.python.org", "protonmail.ch"]

PII_PROSE = [
    "For questions about the release, write to {} and we will answer within a week.",
    "The report was filed by {}, who also attached the logs.",
    "Contact: {}",
    "If the build breaks again, page the on-call engineer at {} before midnight.",
    "Our office line {} is staffed on weekdays.",
    "The attack came from {}, according to the firewall log.",
    "Set the resolver to {} in /etc/resolv.conf and restart the daemon.",
    "She told the board ({}) that the audit was complete.",
    "> Reply to {} with your ticket number.",
    "Requests from {} were rate limited after the third retry.",
]

LOOKALIKE_PROSE = {
    "section": ["See Section {} below for the exact wording.", "As required by section {}, the key is rotated.", "Details are in § {}.",
                "Chapter {} covers the error model.", "The rules in clause {} apply to every tenant.", "Compare paragraph {} of the draft."],
    "version": ["Upgrade to version {} before the deadline.", "Tested on release {} of the firmware.", "The fix shipped in build {}.",
                "Firmware v. {} is the last to support it.", "We pinned ver {} in the lock file.", "Revision {} reverted the change."],
    "figure": ["Figure {} shows the latency distribution.", "The numbers in Table {} come from the second run.",
               "Equation {} gives the bound.", "See Listing {} for the full program."],
    "oid": ["The extension's OID {} identifies the policy.", "Register the arc {} with IANA.", "The MIB object {} holds the counter."],
    "heading": ["{} Scope of the change", "{} Security considerations", "{}. Handling of retries", "- {} Terms and definitions"],
    "date": ["The meeting moved to {}.", "Last updated {}.", "Valid until {} at noon."],
    "price": ["The upgrade costs {} per seat.", "Shipping adds {} to the order.", "Tickets were {} at the door."],
    "isbn": ["The book (ISBN {}) is out of print.", "Cite it as ISBN {}.", "Its identifier is {} in the catalogue."],
    "coordinates": ["The station sits at {}.", "Coordinates: {}.", "We met at {} on the ridge."],
}


def _global_ipv4(rng: random.Random) -> str:
    while True:
        ip = ipaddress.IPv4Address(rng.getrandbits(32))
        if ip.is_global and not str(ip).startswith(("0.", "255.")):
            return str(ip)


def _global_ipv6(rng: random.Random) -> str:
    while True:
        ip = ipaddress.IPv6Address((0x2001 << 112 | 0x4860 << 96) + rng.getrandbits(64) if rng.random() < 0.5 else
                                   (0x2A00 << 112) + rng.getrandbits(100))
        if ip.is_global:
            return ip.compressed


def _phones(rng: random.Random, n: int) -> list[str]:
    """Valid numbers of several regions (libphonenumber's examples, their last digits varied),
    written as people write them: national form for the US, international elsewhere."""
    regions = ["US", "GB", "DE", "FR", "JP", "AU", "IN", "BR", "ES", "IT", "NL", "CA"]
    kinds = [phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE]
    out: list[str] = []
    while len(out) < n:
        region = rng.choice(regions)
        example = phonenumbers.example_number_for_type(region, rng.choice(kinds))
        if example is None:
            continue
        digits = str(example.national_number)
        varied = digits[:-2] + f"{rng.randrange(100):02d}"
        number = phonenumbers.parse(f"+{example.country_code}{varied}")
        if not phonenumbers.is_valid_number(number):
            continue
        if region in ("US", "CA"):
            style = rng.choice([phonenumbers.PhoneNumberFormat.NATIONAL, phonenumbers.PhoneNumberFormat.INTERNATIONAL])
            text = phonenumbers.format_number(number, style)
            if rng.random() < 0.3:
                text = text.replace("(", "").replace(") ", "-")
        else:
            text = phonenumbers.format_number(number, rng.choice([phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                                                                   phonenumbers.PhoneNumberFormat.E164]))
        out.append(text)
    return out


def true_pii(seed: int = 7, per_kind: int = 80) -> list[Case]:
    rng = random.Random(seed)
    values = {
        "email": [f"{rng.choice(FIRST)}{rng.choice(['.', '_', ''])}{rng.choice(LAST)}{rng.choice(['', str(rng.randrange(99))])}@{rng.choice(DOMAINS)}"
                  for _ in range(per_kind)],
        "ip": [_global_ipv4(rng) for _ in range(per_kind * 3 // 4)] + [_global_ipv6(rng) for _ in range(per_kind // 4)],
        "phone": _phones(rng, per_kind),
    }
    return [Case(kind, v, rng.choice(PII_PROSE).format(v)) for kind, vs in values.items() for v in vs]


def _dotted(rng: random.Random, parts: int = 4) -> str:
    """A dotted number that is a global IPv4 address by syntax (so context has to decide)."""
    while True:
        nums = [rng.randrange(1, 30) for _ in range(parts)]
        s = ".".join(map(str, nums))
        if parts != 4 or ipaddress.IPv4Address(s).is_global:
            return s


def lookalikes(seed: int = 11, per_kind: int = 30) -> list[Case]:
    rng = random.Random(seed)
    makers = {
        "section": lambda: _dotted(rng),
        "version": lambda: _dotted(rng),
        "figure": lambda: _dotted(rng),
        "oid": lambda: rng.choice(["1.3.6.1.4.1." + str(rng.randrange(1, 60000)), "2.16.840.1." + str(rng.randrange(100000)),
                                   "1.2.840.113549.1.1." + str(rng.randrange(1, 14)), "2.5.4." + str(rng.randrange(3, 60))]),
        "heading": lambda: _dotted(rng),
        "date": lambda: rng.choice([f"{rng.randrange(1, 29):02d}.{rng.randrange(1, 13):02d}.{rng.randrange(1990, 2030)}",
                                    f"{rng.randrange(1990, 2030)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
                                    f"{rng.randrange(1, 13)}/{rng.randrange(1, 29)}/{rng.randrange(1990, 2030)}"]),
        "price": lambda: rng.choice([f"${rng.randrange(1, 5000):,}.{rng.randrange(100):02d}", f"€{rng.randrange(1, 900)},{rng.randrange(100):02d}",
                                     f"USD 1,{rng.randrange(100, 999)},{rng.randrange(100, 999)}.00"]),
        "isbn": lambda: rng.choice(["978-0-306-40615-7", "978-3-16-148410-0", "0-306-40615-2", "978-1-4028-9462-6", "979-10-90636-07-1",
                                    "9780306406157", "978 0 262 03384 8"]),
        "coordinates": lambda: rng.choice([f"{rng.uniform(-80, 80):.4f}, {rng.uniform(-170, 170):.4f}",
                                           f"{rng.randrange(0, 89)}.{rng.randrange(1000, 9999)}° N, {rng.randrange(0, 179)}.{rng.randrange(1000, 9999)}° W",
                                           f"{rng.randrange(0, 89)}°{rng.randrange(0, 59)}′{rng.randrange(0, 59)}″N"]),
    }
    return [Case(kind, v, rng.choice(LOOKALIKE_PROSE[kind]).format(v)) for kind, make in makers.items()
            for v in (make() for _ in range(per_kind))]


def score(redact) -> dict:
    """Recall on the true PII, precision over all redactions made, per kind and overall.
    `redact(text) -> str`."""
    found: Counter = Counter()
    missed: list[Case] = []
    wrong: list[Case] = []
    true = true_pii()
    for case in true:
        if case.planted not in redact(case.text):
            found[case.kind] += 1
        else:
            missed.append(case)
    fakes = lookalikes()
    for case in fakes:
        if case.planted not in redact(case.text):
            wrong.append(case)
    tp = sum(found.values())
    totals = Counter(c.kind for c in true)
    return {
        "true_pii": len(true),
        "lookalikes": len(fakes),
        "recall": tp / len(true),
        "precision": tp / (tp + len(wrong)) if tp + len(wrong) else 1.0,
        "recall_by_kind": {k: found[k] / totals[k] for k in sorted(totals)},
        "lookalikes_redacted_by_kind": dict(Counter(c.kind for c in wrong)),
        "missed": [c.text for c in missed],
        "wrong": [c.text for c in wrong],
    }
