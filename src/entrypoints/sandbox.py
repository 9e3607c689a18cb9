"""`guestagent sandbox DIR`: a copy of this machine's account files to run the agent against.

With `--root DIR` the agent reads and writes only below DIR and confines
shadow-utils with --prefix DIR, so it can provision real users, groups and
keys without touching the machine it runs on.
"""

from __future__ import annotations

import os
import shutil

ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow", "login.defs")


def make_sandbox(root: str, etc: str = "/etc") -> str:
    """Create (or refresh the account files of) a sandbox root; returns its absolute path."""
    root = os.path.abspath(root)
    if root == "/":
        raise ValueError("the sandbox must not be /")
    for folder in ("etc/sudoers.d", "etc/default", "etc/ssh", "home", "var/lib", "var/mail", "run", "tmp"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)  # noqa: S103 - a /tmp, sticky like the real one
    for name in ACCOUNT_FILES:
        source = os.path.join(etc, name)
        if os.path.exists(source):
            shutil.copy2(source, os.path.join(root, "etc", name))
    skel = os.path.join(root, "etc", "skel")
    if not os.path.exists(skel) and os.path.isdir(os.path.join(etc, "skel")):
        shutil.copytree(os.path.join(etc, "skel"), skel, symlinks=True)
    return root
