"""Kernel tunables under /sys and /proc, written in place."""

from __future__ import annotations

from typing import Protocol


class KernelFiles(Protocol):
    """Paths are guest paths (`/sys/block/sda/queue/scheduler`), mapped under the root.

    Kept apart from FileSystem because sysfs and procfs take only a direct
    write to the existing attribute: the temp-file-and-rename that protects
    ordinary files is impossible there.
    """

    def write_value(self, path: str, value: str) -> None:
        """Write `value` to the existing attribute `path`; raises OSError."""
        ...
