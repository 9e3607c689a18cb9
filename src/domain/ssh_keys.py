"""`USER:KEY` lines as GCE (and our other sources) carry them, into SshKey values."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from guestagent.domain.jsondoc import JsonRefused, loads
from guestagent.domain.metadata import Rejection, SshKey
from guestagent.domain.validation import Invalid, check_username, parse_key_line
from guestagent.domain.values import parse_expiry

GOOGLE_SSH = "google-ssh"


def _expiry(comment: str) -> tuple[bool, str | None]:
    """(is google-ssh, expireOn text or None) from a key's comment."""
    if not comment.startswith(GOOGLE_SSH):
        return False, None
    payload = comment[len(GOOGLE_SSH) :].strip()
    try:
        data = loads(payload)
    except JsonRefused as exc:
        raise Invalid(f"google-ssh comment refused: {exc}") from exc
    if not isinstance(data, dict):
        raise Invalid("google-ssh comment is not a JSON object")
    expire = data.get("expireOn")
    if expire is None:
        return True, None
    if not isinstance(expire, str):
        raise Invalid("google-ssh expireOn is not a string")
    return True, expire


# Validation is a pure function of (user, line), and the daemon meets the same lines in
# every snapshot: one key changed among 50 users re-validated all 50 (most of a parse).
# Remembered per exact line, bounded in entries and in line length so that hostile
# metadata cannot make it hold much (at most MEMO_ENTRIES x MEMO_LINE_MAX characters).
MEMO_ENTRIES = 1024
MEMO_LINE_MAX = 1024


def key_for_user(user: str | None, key_text: str) -> SshKey:
    """Validate one user's key line (None: the default user's); raises Invalid with a loggable reason."""
    if len(key_text) > MEMO_LINE_MAX:
        return _validate(user, key_text)
    outcome = _remembered(user, key_text)
    if isinstance(outcome, str):
        raise Invalid(outcome)
    return outcome


@functools.lru_cache(maxsize=MEMO_ENTRIES)
def _remembered(user: str | None, key_text: str) -> SshKey | str:
    """key_for_user's answer: the key, or the reason it was refused."""
    try:
        return _validate(user, key_text)
    except Invalid as exc:
        return str(exc)


def _validate(user: str | None, key_text: str) -> SshKey:
    if user is not None:
        check_username(user, system_users=())
    parsed = parse_key_line(key_text)
    _, expire = _expiry(parsed.comment)
    expires_at = None
    if expire is not None:
        try:
            expires_at = parse_expiry(expire)
        except ValueError as exc:
            raise Invalid(f"key expiry: {exc}") from exc
    return SshKey(user=user, line=parsed.text, key_type=parsed.key_type, expires_at=expires_at)


def parse_user_key_lines(text: str, where: str) -> tuple[list[SshKey], list[Rejection]]:
    """Parse newline-separated `USER:KEY` lines, keeping good ones and reasons for the rest."""
    keys: list[SshKey] = []
    rejections: list[Rejection] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, key_text = line.partition(":")
        place = f"{where} line {number}"
        if not sep:
            rejections.append(Rejection(place, "no 'user:' prefix"))
            continue
        try:
            # ASCII blanks only: str.strip() would also eat NBSP, U+2028 and the like,
            # turning "bob\u00a0" into the existing user bob.
            keys.append(key_for_user(user.strip(" \t"), key_text))
        except Invalid as exc:
            rejections.append(Rejection(place, str(exc)))
    return keys, rejections


def parse_default_user_keys(lines: Iterable[str], where: str) -> tuple[list[SshKey], list[Rejection]]:
    """Key lines a platform gives without a user name: they go to the default user."""
    keys: list[SshKey] = []
    rejections: list[Rejection] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            keys.append(key_for_user(None, raw.rstrip("\r\n")))
        except Invalid as exc:
            rejections.append(Rejection(f"{where} key {number}", str(exc)))
    return keys, rejections


def parse_key_text(user: str | None, text: str, where: str) -> tuple[list[SshKey], list[Rejection]]:
    """One key entry whose text may hold several lines: each is a key line (what sshd would
    read, had the text been written out as given), checked and refused on its own. A
    refusal is named `where`, or `where line N` when the text holds more than one key line."""
    numbered = [(number, line.strip()) for number, line in enumerate(text.split("\n"), start=1)]
    lines = [(number, line) for number, line in numbered if line and not line.startswith("#")]
    keys: list[SshKey] = []
    rejections: list[Rejection] = []
    for number, line in lines:
        try:
            keys.append(key_for_user(user, line))
        except Invalid as exc:
            rejections.append(Rejection(where if len(lines) == 1 else f"{where} line {number}", str(exc)))
    return keys, rejections


def dedupe(keys: Iterable[SshKey]) -> tuple[SshKey, ...]:
    """Drop repeated (user, line) pairs, keeping the first; order is preserved."""
    seen: set[tuple[str | None, str]] = set()
    out: list[SshKey] = []
    for key in keys:
        if (key.user, key.line) not in seen:
            seen.add((key.user, key.line))
            out.append(key)
    return tuple(out)
