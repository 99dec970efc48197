"""PII: e-mail addresses and public IP addresses replaced by placeholders, as FineWeb does.

FineWeb (Penedo et al. 2024, section 3.4; datatrove's ``PIIFormatter``) replaces e-mail
addresses with ``email@example.com`` / ``firstname.lastname@example.org`` (domains kept for
examples, RFC 2606) and public IPv4 addresses with six addresses that answered no ping when its
list was made, taking the placeholders in turn. Only addresses that identify a machine on the
internet are replaced: ``ipaddress`` says which are global, so private (10/8, 192.168/16, ...),
loopback, link-local, documentation and other reserved ranges stay, as do version strings that
are not addresses (``1.2.3.4.5``).

Departures from datatrove, each for a reason:

- the turn restarts with every document (datatrove's counter runs on across documents, so which
  placeholder a document gets would depend on how documents were split among workers);
- the e-mail pattern ignores case (datatrove's lower-case-only class misses ``John.Smith@Example.com``);
- an address must stand alone (``1234.5.6.78`` is not read as ``234.5.6.78``);
- global IPv6 addresses (2000::/3, the unicast space in use) are replaced too, by documentation
  addresses (2001:db8::/32, RFC 3849).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from llmfab.api.dataset import PiiFilter

EMAIL_PLACEHOLDERS = ("email@example.com", "firstname.lastname@example.org")
IPV4_PLACEHOLDERS = ("22.214.171.124", "126.96.36.199", "188.8.131.52", "184.108.40.206", "220.127.116.11",
                     "18.104.22.168")
IPV6_PLACEHOLDERS = ("2001:db8::1", "2001:db8::2")

EMAIL = re.compile(
    r"\b[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+"
    r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?|\[(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|"
    r"[01]?[0-9][0-9]?|[a-z0-9-]*[a-z0-9]:)])",
    re.IGNORECASE,
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"
IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)")
# a candidate only: ipaddress decides whether it is an address at all
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?![\w:])", re.IGNORECASE)
GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")


def _public_v4(text: str) -> bool:
    try:
        return ipaddress.IPv4Address(text).is_global
    except ValueError:
        return False


def _public_v6(text: str) -> bool:
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return address in GLOBAL_UNICAST and address.is_global


class PiiFormatter:
    """Replace PII in a kept document; ``format`` returns the text and what it replaced."""

    name = "pii"

    def __init__(self, spec: PiiFilter) -> None:
        # (what it counts, pattern, validity check, placeholders, a character every match has)
        self.rules: list[tuple[str, re.Pattern[str], Callable[[str], bool] | None, tuple[str, ...], str]] = []
        if spec.emails:
            self.rules.append(("email", EMAIL, None, EMAIL_PLACEHOLDERS, "@"))
        if spec.ip_addresses:
            self.rules.append(("ip", IPV4, _public_v4, IPV4_PLACEHOLDERS, "."))
            self.rules.append(("ip", IPV6, _public_v6, IPV6_PLACEHOLDERS, ":"))

    def format(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}
        for kind, pattern, valid, placeholders, marker in self.rules:
            if marker not in text:  # most documents have no "@": skip the scan
                continue
            text, n = _replace(text, pattern, valid, placeholders)
            if n:
                counts[kind] = counts.get(kind, 0) + n
        if counts:
            counts["documents"] = 1
        return text, counts


def _replace(text: str, pattern: re.Pattern[str], valid: Callable[[str], bool] | None,
             placeholders: tuple[str, ...]) -> tuple[str, int]:
    """``text`` with each valid match replaced by the next placeholder, and how many were."""
    turn = 0

    def placeholder(match: re.Match[str]) -> str:
        nonlocal turn
        if valid is not None and not valid(match.group(0)):
            return match.group(0)
        turn += 1
        return placeholders[(turn - 1) % len(placeholders)]

    return pattern.sub(placeholder, text), turn
