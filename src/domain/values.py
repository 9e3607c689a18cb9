"""Small parsers for the loosely typed strings platforms put in metadata."""

from __future__ import annotations

import ipaddress
from datetime import datetime

# The spellings Go's strconv.ParseBool accepts, which is what GCE users have
# been writing into attributes for years; we add yes/no/on/off for INI files.
_TRUE = frozenset({"1", "t", "true", "y", "yes", "on"})
_FALSE = frozenset({"0", "f", "false", "n", "no", "off"})


def parse_bool(value: str | None) -> bool | None:
    """True/False for a recognised spelling (any case), None otherwise."""
    if value is None:
        return None
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return None


def parse_expiry(text: str) -> datetime:
    """Parse a google-ssh `expireOn`: RFC 3339 or Go's `2006-01-02T15:04:05-0700`.

    A time without an offset is refused: guessing a zone could keep a key
    alive for hours after its owner meant it to end.
    """
    value = text.strip()
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        try:
            when = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z")
        except ValueError as exc:
            raise ValueError("unparsable expiry time") from exc
    if when.tzinfo is None:
        raise ValueError("expiry time has no UTC offset")
    return when


def canonical_ip(value: str) -> str:
    """Normalise one IP address (v4 or v6); ValueError if it is not one."""
    return str(ipaddress.ip_address(value.strip()))


def canonical_network(value: str) -> str:
    """Normalise an address or CIDR to CIDR form, host bits allowed for aliases."""
    return str(ipaddress.ip_network(value.strip(), strict=False))


def canonical_mac(value: str) -> str:
    """Lower-case colon form of a MAC; accepts Azure's bare 12-hex-digit form."""
    raw = value.strip().lower().replace("-", ":")
    if ":" not in raw and len(raw) == 12:
        raw = ":".join(raw[i : i + 2] for i in range(0, 12, 2))
    parts = raw.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise ValueError("not a MAC address")
    return raw
