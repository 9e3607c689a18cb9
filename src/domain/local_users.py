"""The guest's own accounts as the agent sees them (pure values)."""

from __future__ import annotations

import attrs


@attrs.frozen
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


@attrs.frozen
class KeysFileState:
    """What is on disk for one user's ~/.ssh/authorized_keys.

    `text` is None when the file does not exist. Symlink flags make the
    planner refuse the user instead of writing through a link.
    """

    text: str | None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    ssh_dir_mode: int | None = None
    ssh_dir_uid: int | None = None
    ssh_dir_is_symlink: bool = False
    file_is_symlink: bool = False
    # False when passwd names a home that is not there (useradd killed after it wrote
    # passwd and before it made the home): the planner makes it, or no key could land.
    home_exists: bool = True
