"""The passwd/group view read from files under the agent's root."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from guestagent.domain.local_users import PasswdEntry
from guestagent.domain.passwd import parse_group, parse_passwd, parse_uid_min
from guestagent.ports.filesystem import FileSystem

T = TypeVar("T")


class PasswdFiles:
    """Reads /etc/passwd and /etc/group directly rather than through NSS.

    The agent manages local accounts only; going through NSS would show it
    LDAP or OS Login users it must never touch, and NSS cannot be pointed at
    a sandbox root.
    """

    def __init__(self, fs: FileSystem) -> None:
        self._fs = fs
        # Each file's last text and what it parsed into. The daemon reads all three on
        # every accounts pass and they seldom change between two: parsing them was the
        # largest part of the pass that puts one changed key on disk.
        self._parsed: dict[str, tuple[str | None, object]] = {}

    def _read(self, path: str, parse: Callable[[str | None], T]) -> T:
        text = self._fs.read_text(path)
        last = self._parsed.get(path)
        if last is not None and last[0] == text:
            return cast(T, last[1])
        value = parse(text)
        self._parsed[path] = (text, value)
        return value

    def users(self) -> dict[str, PasswdEntry]:
        # A copy: the caller may change its dict, never the one kept here.
        return dict(self._read("/etc/passwd", lambda text: parse_passwd(text or "")))

    def groups(self) -> dict[str, frozenset[str]]:
        return dict(self._read("/etc/group", lambda text: parse_group(text or "")))

    def uid_min(self) -> int:
        return self._read("/etc/login.defs", parse_uid_min)
