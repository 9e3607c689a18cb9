"""Redaction for `guestagent collect-logs`: text with key material and secrets taken out,
and the rules for which files are never read at all. Pure.

- SSH key blobs: the base64 after a key type (`ssh-ed25519 AAAA...`), and any base64
  that has the shape of an SSH wire-format blob on its own (it starts with `AAAA`: the
  four-byte length of the type name), become `<redacted key>`. Options and comments stay.
- PEM blocks (`-----BEGIN ... KEY-----` to its END, or to the end of the text when it
  was cut) become `<redacted private key>`.
- Values that look like secrets: INI and `key=value` lines, JSON members, XML elements
  and attributes whose name says password, passwd, secret, token, credential, api key or
  private key (and Azure's CustomData/UserData, which carry user data), and the password
  in a URL's user info. Boolean values (`DeleteRootPassword=n`) are kept: they are
  settings, not secrets.
- Files named like private keys (`ssh_host_*_key`, `*.pem`, `*.key`, `id_rsa`...) are
  never opened; the collector asks `never_read()` before it opens anything.

Over-redaction is preferred to a leak: a log line that merely mentions a token with a
colon after it loses the word that follows.
"""

from __future__ import annotations

import posixpath
import re

REDACTED = "<redacted>"
REDACTED_KEY = "<redacted key>"
REDACTED_PRIVATE_KEY = "<redacted private key>"

_B64 = r"[A-Za-z0-9+/]"
_KEY_TYPE = (
    r"(?:ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9-]+@openssh\.com"
    r"|[a-z0-9-]+-cert-v0[0-9]@openssh\.com|x509v3-[a-z0-9-]+|pgp-sign-[a-z0-9]+)"
)
# A key type, white space, then the blob (any length: a truncated paste is still a key).
_TYPED_BLOB = re.compile(rf"(?<![A-Za-z0-9_-])({_KEY_TYPE})([ \t]+){_B64}{{8,}}={{0,3}}", re.IGNORECASE)
# An SSH blob without its type: the 4-byte big-endian length of a short name is "AAAA".
_BARE_BLOB = re.compile(rf"AAAA{_B64}{{40,}}={{0,3}}")
_PEM = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*KEY[A-Z0-9 ]*)-----.*?(?:-----END \1-----|\Z)",
    re.DOTALL,
)
# Names that say a value is sensitive.
_SENSITIVE_NAMES = r"(?:pass(?:word|wd|phrase)|secret|token|credentials?|api[_-]?key|private[_-]?key|pwd)"
_NAME = rf"[\w.-]*{_SENSITIVE_NAMES}[\w.-]*"
_BOOLEAN = re.compile(r"(?:y|n|yes|no|true|false|on|off|0|1|none|null|)", re.IGNORECASE)
# `name = value` lines (INI, waagent.conf, shell-ish env files): the whole value.
_LINE = re.compile(
    rf"^([ \t]*[;#]?[ \t]*(?:export[ \t]+)?{_NAME}[ \t]*[=:][ \t]*)(.*?)([ \t]*)$", re.I | re.M
)
# JSON members: "name": "value" or a bare number/literal.
_JSON = re.compile(rf'("{_NAME}"[ \t]*:[ \t]*)("(?:[^"\\\n]|\\.)*"|[^,}}\]\s]+)', re.IGNORECASE)
# XML elements and attributes.
_XML_ELEMENT = re.compile(
    rf"(<((?:[\w.-]+:)?(?:{_NAME}|CustomData|UserData))(?:\s[^>]*)?>)(.*?)(</\2\s*>)",
    re.IGNORECASE | re.DOTALL,
)
_XML_ATTRIBUTE = re.compile(rf"(\s{_NAME}[ \t]*=[ \t]*)(\"[^\"]*\"|'[^']*')", re.IGNORECASE)
# Anywhere in a line: name=value or name: value (journal lines, query strings, headers).
_INLINE = re.compile(
    rf"(?<![\w.-])({_NAME})([\"']?[ \t]*[=:][ \t]*)(\"[^\"\n]*\"|'[^'\n]*'|[^\s,;&\"'<>]+)", re.I
)
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s/:@]+:)([^\s/@]+)(@)", re.IGNORECASE)

_PRIVATE_KEY_NAMES = re.compile(
    r"(?:ssh_host_.*_key|id_(?:rsa|dsa|ecdsa|ed25519|ecdsa_sk|ed25519_sk|xmss)|.*\.(?:pem|key|p12|pfx|prv))",
    re.IGNORECASE,
)


def redact_keys(text: str) -> str:
    text = _PEM.sub(REDACTED_PRIVATE_KEY, text)
    text = _TYPED_BLOB.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED_KEY}", text)
    return _BARE_BLOB.sub(REDACTED_KEY, text)


def _keep_booleans(match: re.Match[str], value_group: int) -> str:
    value = match.group(value_group)
    if _BOOLEAN.fullmatch(value.strip("\"'")) or value.startswith("<redacted"):
        return match.group(0)
    quote = value[0] if value[:1] in ('"', "'") and value[-1:] == value[:1] and len(value) > 1 else ""
    start, end = match.span(value_group)
    base = match.start(0)
    whole = match.group(0)
    return whole[: start - base] + f"{quote}{REDACTED}{quote}" + whole[end - base :]


def redact_secrets(text: str) -> str:
    text = _XML_ELEMENT.sub(
        lambda m: m.group(0) if not m.group(3).strip() else f"{m.group(1)}{REDACTED}{m.group(4)}", text
    )
    text = _XML_ATTRIBUTE.sub(lambda m: _keep_booleans(m, 2), text)
    text = _JSON.sub(lambda m: _keep_booleans(m, 2), text)
    text = _LINE.sub(lambda m: _keep_booleans(m, 2) if m.group(2) else m.group(0), text)
    text = _INLINE.sub(lambda m: _keep_booleans(m, 3), text)
    return _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(3)}", text)


def redact(text: str) -> str:
    """Everything above: keys first (a key inside a secret's value is gone either way)."""
    return redact_secrets(redact_keys(text))


def never_read(path: str) -> bool:
    """Whether a file's name says it holds a private key: such a file is never opened."""
    return bool(_PRIVATE_KEY_NAMES.fullmatch(posixpath.basename(path)))


def holds_private_key(text: str) -> bool:
    """A file that turns out to be a private key is left out whole, not redacted."""
    return "PRIVATE KEY-----" in text or "BEGIN OPENSSH PRIVATE" in text


def member_name(prefix: str, path: str) -> str | None:
    """A safe name inside the tarball for the guest path `path`: `prefix/etc/hosts`.

    Relative, no `..`, no empty or `.` parts, no control characters; None when the path
    cannot be named safely (it is then left out).
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return None
    return posixpath.join(prefix, *parts)
