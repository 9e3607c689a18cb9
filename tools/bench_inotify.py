"""When each user's authorized_keys lands on disk, without polling: inotify, by ctypes.

Polling hundreds of paths every millisecond would take CPU from the agents on a
2-core machine and still miss the exact moment; inotify tells us when a
``~/.ssh/authorized_keys`` is closed after writing or renamed into place.
Directories that do not exist yet (the user's home before useradd, ``.ssh``
before the agent makes it) are watched from their parent and scanned once the
watch is in place, so a file made in between is not missed.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL(None, use_errno=True)


class Inotify:
    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd: int = fd
        self.paths: dict[int, Path] = {}

    def watch(self, path: Path, mask: int) -> int | None:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            return None  # not there (yet), or not a directory
        self.paths[wd] = path
        return int(wd)

    def read(self, timeout: float) -> list[tuple[Path, int, str]]:
        """Events as (directory, mask, name); waits at most ``timeout`` seconds for the first."""
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0.0))
        if not ready:
            return []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        events, offset = [], 0
        while offset < len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
            offset += _EVENT.size + length
            if wd in self.paths or mask & IN_Q_OVERFLOW:
                where = self.paths.get(wd, Path("/"))
                events.append((where, mask, raw.rstrip(b"\0").decode(errors="replace")))
        return events

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KeysWatcher:
    """Records, for each user, when ``HOME/USER/.ssh/authorized_keys`` was first written.

    ``on_write(user, path)`` may reject a write (e.g. the file does not show the
    expected key yet) by returning False; the default accepts any non-empty file.
    """

    FILE = "authorized_keys"

    def __init__(
        self,
        home: Path,
        users: Iterable[str],
        on_write: Callable[[str, Path], bool] | None = None,
    ) -> None:
        self.home = home
        self.users = set(users)
        self.on_write = on_write or (lambda _user, path: _nonempty(path))
        self.seen: dict[str, float] = {}
        self.ino = Inotify()
        self._kind: dict[Path, tuple[str, str]] = {}  # watched dir -> (kind, user)
        if self.ino.watch(home, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR) is None:
            raise FileNotFoundError(home)
        self._kind[home] = ("home", "")
        for name in sorted(os.listdir(home)):
            self._user_dir(name)

    def _user_dir(self, user: str) -> None:
        if user not in self.users or user in self.seen:
            return
        path = self.home / user
        if self.ino.watch(path, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR) is None:
            return
        self._kind[path] = ("user", user)
        if (path / ".ssh").is_dir():
            self._ssh_dir(user)

    def _ssh_dir(self, user: str) -> None:
        path = self.home / user / ".ssh"
        if path in self._kind or self.ino.watch(path, IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR) is None:
            return
        self._kind[path] = ("ssh", user)
        self._file(user)

    def _file(self, user: str) -> None:
        if user in self.seen:
            return
        path = self.home / user / ".ssh" / self.FILE
        if path.exists() and self.on_write(user, path):
            self.seen[user] = time.monotonic()

    def wait(self, timeout: float, alive: Callable[[], bool] | None = None) -> bool:
        """Until every user's file is written (True) or ``timeout`` passes (False).

        When the writer has exited (``alive`` false), the events still queued are read,
        then the disk is looked at once more: what is there now is all there will be.
        """
        deadline = time.monotonic() + timeout
        while len(self.seen) < len(self.users):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            gone = alive is not None and not alive()
            events = self.ino.read(0 if gone else min(left, 0.5))
            for directory, mask, name in events:
                if mask & IN_Q_OVERFLOW:
                    self.rescan()
                    continue
                kind, user = self._kind.get(directory, ("", ""))
                if kind == "home" and mask & IN_ISDIR:
                    self._user_dir(name)
                elif kind == "user" and name == ".ssh" and mask & IN_ISDIR:
                    self._ssh_dir(user)
                elif kind == "ssh" and name == self.FILE:
                    self._file(user)
            if gone and not events:
                self.rescan()
                return len(self.seen) == len(self.users)
        return True

    def rescan(self) -> None:
        """Look at every user not seen yet (after an overflow of the event queue, or at the end)."""
        for user in sorted(self.users - set(self.seen)):
            self._user_dir(user)
            if (self.home / user / ".ssh").is_dir():
                self._ssh_dir(user)
            self._file(user)

    def close(self) -> None:
        self.ino.close()


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


class FileChange:
    """Waits for one file to be written with content that ``ok`` accepts (the reaction trials)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ino = Inotify()
        if self.ino.watch(path.parent, IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR) is None:
            raise FileNotFoundError(path.parent)

    def wait(self, ok: Callable[[str], bool], timeout: float) -> float | None:
        """time.perf_counter() when an accepted write was seen, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for _directory, _mask, name in self.ino.read(left):
                if name != self.path.name:
                    continue
                seen = time.perf_counter()
                try:
                    text = self.path.read_text()
                except OSError:
                    continue
                if ok(text):
                    return seen

    def drain(self) -> None:
        while self.ino.read(0):
            pass

    def close(self) -> None:
        self.ino.close()
