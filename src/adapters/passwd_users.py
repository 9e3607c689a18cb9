"""The passwd/group view read from files under the agent's root."""

from __future__ import annotations

from guestagent.domain.local_users import PasswdEntry
from guestagent.domain.passwd import parse_group, parse_passwd, parse_uid_min
from guestagent.ports.filesystem import FileSystem


class PasswdFiles:
    """Reads /etc/passwd and /etc/group directly rather than through NSS.

    The agent manages local accounts only; going through NSS would show it
    LDAP or OS Login users it must never touch, and NSS cannot be pointed at
    a sandbox root.
    """

    def __init__(self, fs: FileSystem) -> None:
        self._fs = fs

    def users(self) -> dict[str, PasswdEntry]:
        return parse_passwd(self._fs.read_text("/etc/passwd") or "")

    def groups(self) -> dict[str, frozenset[str]]:
        return parse_group(self._fs.read_text("/etc/group") or "")

    def uid_min(self) -> int:
        return parse_uid_min(self._fs.read_text("/etc/login.defs"))
