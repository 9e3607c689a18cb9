"""The authorized_keys file format the agent shares with the user.

Each managed key sits on the line after a marker comment; every other line
belongs to the user and is kept byte for byte, in place. This is the format
Google's agents use, so a guest moved between agents keeps working.
"""

from __future__ import annotations

from collections.abc import Sequence

MARKER = "# Added by Google"
# Where the platform is not Google's, the agent signs its lines with its own name.
AGENT_MARKER = "# Added by guestagent"


def split_managed(text: str, marker: str = MARKER) -> tuple[list[str], list[str]]:
    """(user's own lines, managed key lines). Lines keep their line endings."""
    own: list[str] = []
    managed: list[str] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        if lines[i].rstrip("\r\n") == marker:
            if i + 1 < len(lines):
                managed.append(lines[i + 1].rstrip("\r\n"))
            i += 2
            continue
        own.append(lines[i])
        i += 1
    return own, managed


def render(own_lines: Sequence[str], managed_keys: Sequence[str], marker: str = MARKER) -> str:
    """The file text: the user's lines untouched, then each managed key under its marker."""
    out = "".join(own_lines)
    if out and not out.endswith("\n") and managed_keys:
        out += "\n"
    for key in managed_keys:
        out += f"{marker}\n{key}\n"
    return out


def with_managed(current: str | None, managed_keys: Sequence[str], marker: str = MARKER) -> str:
    """Replace the managed part of `current` (None: no file yet) with `managed_keys`."""
    own, _ = split_managed(current or "", marker)
    return render(own, managed_keys, marker)
