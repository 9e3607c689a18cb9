"""The passwd/group view of the guest."""

from __future__ import annotations

from typing import Protocol

from guestagent.domain.local_users import PasswdEntry

__all__ = ["PasswdEntry", "UsersView"]


class UsersView(Protocol):
    def users(self) -> dict[str, PasswdEntry]: ...

    def groups(self) -> dict[str, frozenset[str]]:
        """Group name to member names (supplementary members as listed in /etc/group)."""
        ...

    def uid_min(self) -> int:
        """UID_MIN from login.defs (1000 when unset)."""
        ...
