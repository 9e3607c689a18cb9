"""The real filesystem, seen through a root directory ("/" on a guest, a sandbox in tests)."""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import secrets
import shutil
import stat as stat_mod
from collections.abc import Callable

from guestagent.ports.filesystem import FileInfo, UnsafePath


def _fix_owner(fd: int, uid: int, gid: int) -> None:
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)


def _temp_pattern(name: str) -> re.Pattern[str]:
    return re.compile(re.escape(f".{name}.") + r"[0-9a-f]{8}\.tmp")


def _sweep_temps(dir_fd: int, name: str) -> int:
    """Remove temp files an earlier write of `name` left when it was killed before its
    rename. Only names of our exact pattern go; whatever else is in the folder stays."""
    pattern = _temp_pattern(name)
    swept = 0
    for entry in os.listdir(dir_fd):
        if pattern.fullmatch(entry):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=dir_fd)
                swept += 1
    return swept


class LocalFileSystem:
    def __init__(self, root: str = "/") -> None:
        self.root = os.path.abspath(root)

    def host_path(self, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"guest paths are absolute: {path!r}")
        # normpath drops any '..' at the top, so a guest path can never leave the root.
        clean = posixpath.normpath("/" + path.lstrip("/"))
        if self.root == "/":
            return clean
        return self.root + clean if clean != "/" else self.root

    def read_text(self, path: str) -> str | None:
        try:
            # newline="": a CRLF file read and written back stays byte for byte what it was.
            with open(self.host_path(path), encoding="utf-8", errors="surrogateescape", newline="") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def stat(self, path: str) -> FileInfo | None:
        try:
            st = os.lstat(self.host_path(path))
        except FileNotFoundError:
            return None
        return FileInfo(
            mode=stat_mod.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            is_symlink=stat_mod.S_ISLNK(st.st_mode),
            is_dir=stat_mod.S_ISDIR(st.st_mode),
        )

    def create_home(self, home: str, skel: str, *, mode: int, uid: int, gid: int) -> None:
        target = self.host_path(home)
        parent = os.path.dirname(target)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        # Built beside the target and renamed in, so a crash here leaves no half-made home
        # that would pass for a real one; a leftover is swept the next time.
        building = os.path.join(parent, f".{os.path.basename(target)}.guestagent-home")
        if os.path.lexists(building):
            shutil.rmtree(building)
        source = self.host_path(skel)
        if os.path.isdir(source) and not os.path.islink(source):
            shutil.copytree(source, building, symlinks=True)
        else:
            os.mkdir(building)
        for folder, dirs, files in os.walk(building):
            for name in (*dirs, *files):
                os.lchown(os.path.join(folder, name), uid, gid)
        os.chown(building, uid, gid)
        os.chmod(building, mode)
        if os.path.lexists(target):  # made meanwhile by someone else: theirs stays
            shutil.rmtree(building)
            return
        os.rename(building, target)

    def makedirs(self, path: str, mode: int) -> None:
        os.makedirs(self.host_path(path), mode=mode, exist_ok=True)

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.host_path(path))

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self.host_path(path)))
        except (FileNotFoundError, NotADirectoryError):
            return []

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
        target = self.host_path(path)
        parent, name = os.path.split(target)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._write_in_dir(
                dir_fd, name, data.encode("utf-8", "surrogateescape"), mode, uid, gid, check, parent
            )
        finally:
            os.close(dir_fd)

    def write_user_file(
        self, home: str, relative: str, data: str, *, mode: int, dir_mode: int, uid: int, gid: int
    ) -> None:
        *dirs, name = relative.split("/")
        fd = os.open(self.host_path(home), os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in dirs:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_mode, dir_fd=fd)
                try:
                    # O_NOFOLLOW on the open itself: no window between a check and the use.
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafePath(f"~/{part} is a symlink or not a directory") from exc
                    raise
                os.close(fd)
                fd = child
                _fix_owner(fd, uid, gid)
                if stat_mod.S_IMODE(os.fstat(fd).st_mode) != dir_mode:
                    os.fchmod(fd, dir_mode)
            try:
                if stat_mod.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                    raise UnsafePath(f"~/{relative} is a symlink")
            except FileNotFoundError:
                pass
            self._write_in_dir(fd, name, data.encode("utf-8", "surrogateescape"), mode, uid, gid, None, None)
        finally:
            os.close(fd)

    def sweep_user_file(self, home: str, relative: str) -> int:
        *dirs, name = relative.split("/")
        try:
            fd = os.open(self.host_path(home), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return 0
        try:
            for part in dirs:
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError:  # missing, a symlink or not a folder: nothing of ours there
                    return 0
                os.close(fd)
                fd = child
            return _sweep_temps(fd, name)
        finally:
            os.close(fd)

    def _write_in_dir(
        self,
        dir_fd: int,
        name: str,
        payload: bytes,
        mode: int,
        uid: int,
        gid: int,
        check: Callable[[str], None] | None,
        dir_host_path: str | None,
    ) -> None:
        # The data is flushed before the rename, so a crash leaves the old file or the whole new
        # one, never a torn one. The directory is not flushed: losing the rename itself in a
        # crash only means the old (valid) file stays, and the next pass writes it again.
        temp = f".{name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        try:
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                _fix_owner(fd, uid, gid)
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            if check is not None and dir_host_path is not None:
                check(os.path.join(dir_host_path, temp))
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
        _sweep_temps(dir_fd, name)
