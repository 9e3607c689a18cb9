"""Parsers for /etc/passwd, /etc/group and login.defs text (pure)."""

from __future__ import annotations

from guestagent.domain.local_users import PasswdEntry

DEFAULT_UID_MIN = 1000


def parse_passwd(text: str) -> dict[str, PasswdEntry]:
    users: dict[str, PasswdEntry] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or not fields[0] or line.startswith(("#", "+", "-")):
            continue
        try:
            uid, gid = int(fields[2]), int(fields[3])
        except ValueError:
            continue
        users.setdefault(fields[0], PasswdEntry(fields[0], uid, gid, fields[5], fields[6]))
    return users


def parse_group(text: str) -> dict[str, frozenset[str]]:
    groups: dict[str, frozenset[str]] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or not fields[0] or line.startswith(("#", "+", "-")):
            continue
        groups.setdefault(fields[0], frozenset(m for m in fields[3].split(",") if m))
    return groups


def parse_uid_min(login_defs: str | None) -> int:
    for line in (login_defs or "").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "UID_MIN":
            try:
                return int(words[1])
            except ValueError:
                break
    return DEFAULT_UID_MIN
