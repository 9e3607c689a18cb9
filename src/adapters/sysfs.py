"""Kernel attribute writes, through the same root mapping as the filesystem adapter."""

from __future__ import annotations

import os

from guestagent.adapters.local_filesystem import LocalFileSystem


class SysfsWriter:
    def __init__(self, root: str = "/") -> None:
        self._paths = LocalFileSystem(root)

    def write_value(self, path: str, value: str) -> None:
        # O_TRUNC as `echo v > attr` does (sysfs ignores it; a fake tree needs it).
        # No O_CREAT: a missing attribute means the device went away, and creating a
        # plain file in its place (possible under a sandbox root) would hide that.
        fd = os.open(self._paths.host_path(path), os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
