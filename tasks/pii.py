"""PII redaction: e-mail addresses, IP addresses and phone numbers become placeholders.

IP addresses are redacted only when globally routable by default (as in FineWeb): the
private and documentation ranges that fill technical pages identify nobody. Phone numbers
are regex candidates confirmed by libphonenumber, so version strings and dates survive.
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
PHONE = re.compile(r"(?<!\w)(?<!\d\.)(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?!\w|\.\d)")


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


def _ip_to_redact(candidate: str, cfg: PIIConfig) -> bool:
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return cfg.redact_non_global_ips or ip.is_global


def _phone(candidate: str, cfg: PIIConfig) -> bool:
    digits = sum(c.isdigit() for c in candidate)
    if digits < 7 or digits > 15:
        return False
    try:
        number = phonenumbers.parse(candidate, cfg.phone_region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def redact(text: str, cfg: PIIConfig) -> tuple[str, Counter]:
    counts: Counter = Counter()
    if not cfg.enabled:
        return text, counts

    def sub(pattern: re.Pattern, kind: str, placeholder: str, check=None):
        nonlocal text

        def repl(m: re.Match) -> str:
            if check is not None and not check(m.group(0)):
                return m.group(0)
            counts[kind] += 1
            return placeholder

        text = pattern.sub(repl, text)

    if cfg.email and "@" in text:
        sub(EMAIL, "email", cfg.email_placeholder)
    if cfg.ip:
        sub(IPV4, "ip", cfg.ip_placeholder, lambda s: _ip_to_redact(s, cfg))
        if "::" in text or text.count(":") >= 2:
            sub(IPV6, "ip", cfg.ip_placeholder, lambda s: ":" in s and _ip_to_redact(s, cfg))
    if cfg.phone:
        sub(PHONE, "phone", cfg.phone_placeholder, lambda s: _phone(s, cfg))
    return text, counts
