"""sshd_config edits that keep sshd starting: global keywords set before the first `Match`. Pure.

sshd takes the FIRST value it reads for most keywords, and everything after a
`Match` line belongs to that Match block, where many keywords are refused or
mean something else. WALinuxAgent once appended `PasswordAuthentication` at
the end of the file, inside a user's Match block: sshd refused to start and
the VM could not be reached (WALinuxAgent #52, #544). So here:

- the global section is everything before the first `Match` line;
- a keyword already set there, before any `Include` line, has that line's
  value changed in place (its indentation kept);
- otherwise one line is inserted before the first `Include` (whose files
  would otherwise win, being read first) or, without one, at the end of the
  global section: before the first `Match` and the comments that lead into it;
- later repeats of the keyword are left alone (sshd ignores them), and every
  other line, comment and the final newline are kept byte for byte.

Keywords compare case-insensitively and may be written `Keyword value` or
`Keyword=value`, as sshd accepts both. The service checks the result with
`sshd -t -f TEMP` before it replaces the file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

SSHD_CONFIG_NAME = "sshd_config"
ADDED_COMMENT = (
    "# Set by guestagent at provisioning (a copy of the original: /var/lib/guestagent/sshd_config.orig)"
)

_WORD = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+|$)(.*)$")


def _lines(text: str) -> tuple[list[str], bool]:
    if text == "":
        return [], True
    if text.endswith("\n"):
        return text[:-1].split("\n"), True
    return text.split("\n"), False


def _join(lines: Sequence[str], final_newline: bool) -> str:
    if not lines:
        return ""
    return "\n".join(lines) + ("\n" if final_newline else "")


def _keyword(line: str) -> tuple[str, str] | None:
    """(keyword lower-cased, rest) of a directive line; None for comments and blanks."""
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    match = _WORD.match(line)
    if match is None:
        return None
    return match.group(1).lower(), match.group(2).strip()


def _value(rest: str) -> str:
    # A trailing comment is not part of the value.
    return rest.split("#", 1)[0].strip()


def global_end(lines: Sequence[str]) -> int:
    """Index of the first `Match` line (len(lines) when there is none)."""
    for index, line in enumerate(lines):
        parsed = _keyword(line)
        if parsed is not None and parsed[0] == "match":
            return index
    return len(lines)


def effective_global(text: str, keyword: str) -> str | None:
    """The value sshd takes from this file's global section for `keyword` (first wins), not
    counting what Include'd files say; None when the global section does not set it before
    an Include."""
    lines, _ = _lines(text)
    for line in lines[: global_end(lines)]:
        parsed = _keyword(line)
        if parsed is None:
            continue
        if parsed[0] == "include":
            return None
        if parsed[0] == keyword.lower():
            return _value(parsed[1])
    return None


def _insert_at(lines: Sequence[str], end: int) -> int:
    for index, line in enumerate(lines[:end]):
        parsed = _keyword(line)
        if parsed is not None and parsed[0] == "include":
            return index
    # Before the Match line and the comment/blank lines that lead into it.
    at = end
    if end < len(lines):
        while at > 0 and _keyword(lines[at - 1]) is None:
            at -= 1
        # Nothing but comments before the Match: go after the file's header instead of line 0.
        if at == 0:
            at = end
    return at


def set_global(text: str, settings: Sequence[tuple[str, str]]) -> str:
    """`text` with each (Keyword, value) the first effective value of the global section."""
    lines, final_newline = _lines(text)
    added: list[str] = []
    for keyword, value in settings:
        end = global_end(lines)
        include_at = next(
            (i for i, line in enumerate(lines[:end]) if (_keyword(line) or ("",))[0] == "include"), end
        )
        done = False
        for index in range(include_at):
            parsed = _keyword(lines[index])
            if parsed is None or parsed[0] != keyword.lower():
                continue
            if _value(parsed[1]).lower() != value.lower():
                indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
                lines[index] = f"{indent}{keyword} {value}"
            done = True
            break
        if not done:
            added.append(f"{keyword} {value}")
    if added:
        end = global_end(lines)
        at = _insert_at(lines, end)
        block = [ADDED_COMMENT, *added]
        if at == len(lines) and lines and not final_newline:
            final_newline = True
        lines[at:at] = block
    return _join(lines, final_newline)


def provisioning_settings(disable_password_auth: bool, client_alive_interval: int) -> list[tuple[str, str]]:
    """What WALinuxAgent sets at provisioning: password logins per DisableSshPasswordAuthentication
    (keyboard-interactive too when they are off: through PAM it is another way to type a
    password), and ClientAliveInterval (OS.SshClientAliveInterval; 0 leaves it alone)."""
    settings = [("PasswordAuthentication", "no" if disable_password_auth else "yes")]
    if disable_password_auth:
        settings.append(("KbdInteractiveAuthentication", "no"))
    if client_alive_interval > 0:
        settings.append(("ClientAliveInterval", str(client_alive_interval)))
    return settings
