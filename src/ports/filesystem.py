"""Files the agent reads and writes, all relative to one configurable root."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs


@attrs.frozen
class FileInfo:
    mode: int  # permission bits only
    uid: int
    gid: int
    is_symlink: bool
    is_dir: bool


class UnsafePath(Exception):
    """A path the agent refuses to follow (a symlink where the user controls it)."""


class FileSystem(Protocol):
    """Paths are absolute as seen by the guest (`/etc/passwd`); the adapter maps them under its root."""

    def host_path(self, path: str) -> str:
        """Where `path` really is on this machine (root + path)."""
        ...

    def read_text(self, path: str) -> str | None:
        """The file's text, or None when it does not exist."""
        ...

    def stat(self, path: str) -> FileInfo | None:
        """lstat: information about the path itself, not a link's target; None if absent."""
        ...

    def write_atomic(
        self,
        path: str,
        data: str,
        *,
        mode: int,
        uid: int = 0,
        gid: int = 0,
        check: Callable[[str], None] | None = None,
    ) -> None:
        """Write through a temp file, fsync, then rename into place.

        `check` gets the temp file's host path before the rename and may raise
        to keep the old file (e.g. visudo -cf on a sudoers drop-in).
        """
        ...

    def write_user_file(
        self, home: str, relative: str, data: str, *, mode: int, dir_mode: int, uid: int, gid: int
    ) -> None:
        """Write `home/relative` (e.g. `.ssh/authorized_keys`) owned by a user.

        Refuses (UnsafePath) to follow a symlink in any component below
        `home`, checked on the open file descriptors, not by a racy lstat.
        """
        ...

    def sweep_user_file(self, home: str, relative: str) -> int:
        """Remove what interrupted writes of `home/relative` left (their temp files; the next
        write sweeps them too, but a converged file may never be written again). Returns how
        many went; a symlink or a missing folder on the way is left alone (returns 0)."""
        ...

    def create_home(self, home: str, skel: str, *, mode: int, uid: int, gid: int) -> None:
        """Make a missing home directory and copy the skeleton into it, owned by the user.

        Does nothing to a home that exists (never merges into someone's files);
        symlinks in the skeleton are copied as links, never followed.
        """
        ...

    def makedirs(self, path: str, mode: int) -> None: ...

    def remove(self, path: str) -> None:
        """Remove a file; no error if it is already gone."""
        ...

    def listdir(self, path: str) -> list[str]:
        """Names in a directory; empty if it does not exist."""
        ...
