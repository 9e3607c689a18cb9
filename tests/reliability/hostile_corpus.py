"""The hostile metadata corpus: over 200 bad entries, generated (some are megabytes long).

Two kinds of entry:

- `name` entries are whole GCE `ssh-keys` lines (`USER:KEY`) whose user name is the
  problem: path separators, shell metacharacters, newlines, look-alike Unicode, system
  accounts, 33 characters or more. Each carries a fresh, valid key, so a name that got
  through would show as a key installed for it.
- `key` entries are key lines that are the problem: CR, NUL, unbalanced option quotes,
  wrong or truncated blobs, unknown types, bad RSA/ECDSA values, megabyte lines, thousands
  of lines. On GCE each goes to a user of its own (`kNNN`), elsewhere to the default user.

Every entry has a `body`: base64 that appears in it and that must never reach a log line
or an authorized_keys file. `sized` entries (over 64 KiB) are kept apart from platforms
whose transport caps a whole snapshot near 1 MiB (EC2's walk, NoCloud's files).
"""

from __future__ import annotations

import base64
import hashlib
import struct

import attrs

from tests.keys import ECDSA, RSA


@attrs.frozen
class Entry:
    id: str
    kind: str  # "name" (a whole USER:KEY line) or "key" (a key line)
    text: str
    body: str  # base64 that must not be installed or logged
    sized: bool = False  # over 64 KiB
    # The entry spans several metadata lines (an embedded newline, or a flood of lines).
    lines: int = 1
    # Not a refusal: dropped without a word (an expired key is simply not installed).
    silent: bool = False
    # Bad only where every line must start with `USER:` (GCE): a platform that reads a key
    # entry as lines of keys may take its second line.
    named_only: bool = False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def blob_ed25519(tag: str, length: int = 32) -> bytes:
    return _field(b"ssh-ed25519") + _field(
        hashlib.sha256(tag.encode()).digest()[:length].ljust(length, b"\1")
    )


def key_line(tag: str, comment: str = "c") -> tuple[str, str]:
    """(a valid ed25519 line, its base64) distinct per tag."""
    body = _b64(blob_ed25519(tag))
    return f"ssh-ed25519 {body} {comment}", body


def _bodyless(entry_id: str) -> str:
    """A body for entries that carry no key of their own: a unique marker."""
    return _b64(hashlib.sha256(entry_id.encode()).digest())


BAD_NAMES: tuple[str, ...] = (
    # path separators and traversal
    "../root",
    "..",
    ".",
    "a/b",
    "/etc/passwd",
    "../../home/x",
    "x/..",
    "a\\b",
    "~root",
    "..x/y",
    # shell metacharacters
    "a;id",
    "$(id)",
    "`id`",
    "a|b",
    "a&b",
    "a>b",
    "a<b",
    "a b",
    "a\tb",
    "a*",
    "a?",
    "a[1]",
    "{a,b}",
    "a'b",
    'a"b',
    "a!b",
    "a$b",
    "a=b",
    "a,b",
    "a%b",
    "a^b",
    "a(b)",
    "a+b",
    "@group",
    "+nis",
    # option-like and numeric
    "-rf",
    "-o",
    "--help",
    "-",
    "123",
    "0",
    "007",
    # control characters (a newline splits the line: both halves must be refused), also at
    # the end of a name, where stripping them would turn the name into another, valid one
    "evil\r",
    "ev\x00il",
    "ev\x1bil",
    "ev\x7fil",
    "ev\x0bil",
    "ev\x0cil",
    "eve\x0b",
    "eve\x0c",
    "eve\x1c",
    "eve\x1f",
    "eve\x85",
    "\x1eeve",
    # look-alike Unicode
    "\u0430dmin",
    "r\u043e\u043et",
    "\uff52\uff4f\uff4f\uff54",
    "alice\u200b",
    "ali\u0301ce",
    "\u202eecila",
    "\u0391lice",
    "bob\u00a0",
    "\u0131nfo",
    "caf\u00e9",
    "\u2024\u2024",
    "x\u2215y",
    "carol\u2028",
    "\u3000dave",
    "dave\u2009",
    "\u205fdave",
    # system accounts (on every Debian base system)
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "systemd-network",
    "sshd",
    "messagebus",
    "_apt",
    # too long: 33 characters and more
    "a" * 33,
    "b" * 34,
    "c" * 48,
    "d" * 64,
    "e" * 255,
    "f" * 256,
    "g" * 4096,
    "h" * 40000,
    "i" * 32 + "-",
    # empty, blank
    "",
    " ",
    "\t",
    # more separators and metacharacters, alone and mixed into names that look fine
    "alice/",
    "/alice",
    "al/ice",
    "alice;",
    "alice&&id",
    "alice||id",
    "alice$IFS",
    "alice${IFS}x",
    "alice`x`",
    "alice\\",
    "al ice",
    "al\tice",
    "alice:x",
    "alice#",
    "alice\\n",
    "\\x41lice",
    "alice%0a",
    "alice%00",
    "..alice/../..",
    "a/../../../../etc/shadow",
    # more look-alikes and invisible characters
    "\u0440oot",
    "adm\u0456n",
    "\u1d00lice",
    "alic\u0435",
    "\u0455shd",
    "d\u0435bian",
    "alice\ufeff",
    "\ufeffalice",
    "al\u00adice",
    "al\u2060ice",
    "\u0101lice",
    "ALICE\u0130",
    "\uff41\uff4c\uff49",
    "\U0001d41aice",
    "x\u0000",
    "x\u0085y",
    "x\u2028y",
    "x\u2029y",
    # names a shell or a tool reads specially
    "*",
    "?",
    "[a-z]",
    "~",
    "$HOME",
    "%s%s%s",
    "{user}",
    "{group}",
    "-G root",
    "--prefix=/",
)


def _name_entries() -> list[Entry]:
    out = []
    for i, name in enumerate(BAD_NAMES):
        line, body = key_line(f"name-{i}", f"name{i}")
        out.append(Entry(f"name-{i:03d}", "name", f"{name}:{line}", body))
    # A newline in a name: the line splits, and neither half may be taken.
    for i, (left, right) in enumerate((("evil", ":"), ("ev", ":"), ("x\n", "\n:"))):
        line, body = key_line(f"nl-{i}", f"nl{i}")
        out.append(Entry(f"name-nl-{i}", "name", f"{left}\n{right}{line}", body, lines=2 + left.count("\n")))
    # No user at all, or no colon.
    for i, text in enumerate((":{k}", "{k}", " :{k}", "\t:{k}")):
        line, body = key_line(f"nouser-{i}", f"nouser{i}")
        out.append(Entry(f"name-nouser-{i}", "name", text.format(k=line), body))
    return out


def _truncations() -> list[Entry]:
    out = []
    full = blob_ed25519("trunc")
    for cut in range(1, len(full), 2):
        data = full[:cut]
        text = _b64(data)
        # Up to the type and length fields every ed25519 key starts the same: no material.
        body = text if cut > 27 else ""
        out.append(Entry(f"key-trunc-{cut}", "key", f"ssh-ed25519 {text} truncated", body))
    rsa_body = RSA.split()[1]
    for cut in (8, 100, 200, len(rsa_body) - 8):
        body = rsa_body[:cut]
        # re-encode what is left so the base64 itself is canonical: the fields must not add up
        data = base64.b64decode(body + "=" * (-len(body) % 4), validate=False)
        body = _b64(data)
        out.append(Entry(f"key-trunc-rsa-{cut}", "key", f"ssh-rsa {body} truncated", body))
    return out


def _wrong_blobs() -> list[Entry]:
    out = []
    ed = blob_ed25519("wrong")
    cases = {
        "rsa-type-ed-blob": ("ssh-rsa", ed),
        "ecdsa-type-ed-blob": ("ecdsa-sha2-nistp256", ed),
        "ed-short-point": ("ssh-ed25519", _field(b"ssh-ed25519") + _field(b"\1" * 31)),
        "ed-long-point": ("ssh-ed25519", _field(b"ssh-ed25519") + _field(b"\1" * 33)),
        "ed-extra-field": ("ssh-ed25519", ed + _field(b"x")),
        "ed-trailing-byte": ("ssh-ed25519", ed + b"\0"),
        "ed-length-lies": ("ssh-ed25519", _field(b"ssh-ed25519") + struct.pack(">I", 2**31) + b"\1" * 32),
        "ed-empty-type": ("ssh-ed25519", _field(b"") + _field(b"\1" * 32)),
        "rsa-512-bits": ("ssh-rsa", _field(b"ssh-rsa") + _field(b"\1\0\1") + _field(b"\0" + b"\xc1" * 64)),
        "rsa-negative": ("ssh-rsa", _field(b"ssh-rsa") + _field(b"\x81\0\1") + _field(b"\xc1" * 256)),
        "rsa-huge": ("ssh-rsa", _field(b"ssh-rsa") + _field(b"\1\0\1") + _field(b"\0" + b"\xc1" * 2100)),
        "ecdsa-off-curve": (
            "ecdsa-sha2-nistp256",
            _field(b"ecdsa-sha2-nistp256") + _field(b"nistp256") + _field(b"\4" + b"\1" * 64),
        ),
        "ecdsa-wrong-curve": (
            "ecdsa-sha2-nistp256",
            _field(b"ecdsa-sha2-nistp256") + _field(b"nistp384") + _field(b"\4" + b"\1" * 64),
        ),
        "cert-garbage": ("ssh-ed25519-cert-v01@openssh.com", _field(b"ssh-rsa") + b"\0" * 40),
        "sk-short": (
            "sk-ssh-ed25519@openssh.com",
            _field(b"sk-ssh-ed25519@openssh.com") + _field(b"\1" * 32),
        ),
        "dss-short": ("ssh-dss", _field(b"ssh-dss") + _field(b"\1")),
    }
    for name, (key_type, blob) in cases.items():
        body = _b64(blob)
        out.append(Entry(f"key-blob-{name}", "key", f"{key_type} {body} {name}", body))
    # Base64 that is not canonical or not base64 at all (ECDSA P-256: its blob needs one "=").
    good = ECDSA.split()[1]
    assert good.endswith("=") and not good.endswith("==")
    for name, text in {
        "extra-padding": good + "==",
        "no-padding": good.rstrip("="),
        "bad-alphabet": good[:20] + "!" + good[21:],
        "urlsafe": good[:20] + "-_" + good[22:],
        "space-inside": good[:20] + " " + good[20:],
        "trailing-bits": good[:-2] + chr(ord(good[-2]) + 1) + "=",
        "padding-inside": good[:20] + "=" + good[21:],
    }.items():
        out.append(
            Entry(f"key-b64-{name}", "key", f"ecdsa-sha2-nistp256 {text} {name}", text.split()[0][:24])
        )
    return out


def _structure() -> list[Entry]:
    out = []

    def add(name: str, template: str) -> None:
        line, body = key_line(f"struct-{name}", name)
        key = line.split(" ", 1)[1]  # BODY COMMENT
        text = template.format(key=key, line=line, body=body, head=body[:20], tail=body[20:])
        out.append(Entry(f"key-{name}", "key", text, body))

    # Control characters inside the blob: no piece on either side is a key of its own.
    add("cr-inside-blob", "ssh-ed25519 {head}\r{tail} cr")
    add("lf-inside-blob", "ssh-ed25519 {head}\n{tail} lf")
    add("nul-inside-blob", "ssh-ed25519 {head}\x00{tail} nul")
    add("vt-inside-blob", "ssh-ed25519 {head}\x0b{tail} vt")
    add("ls-inside-blob", "ssh-ed25519 {head}\u2028{tail} ls")
    add("nul-after", "ssh-ed25519 {body}\x00 nul")
    add("nul-before", "\x00ssh-ed25519 {body} nul2")
    add("esc-in-comment", "ssh-ed25519 {body} \x1b[31mred")
    add("bell-in-options", 'command="\x07" ssh-ed25519 {body} bell')
    add("unbalanced-quote-command", 'command="echo hi ssh-ed25519 {key}')
    add("unbalanced-quote-from", 'from="10.0.0.0/8 ssh-ed25519 {key}')
    add("unbalanced-quote-end", 'no-pty,command="x ssh-ed25519 {key}"x"')
    add("escaped-quote-unbalanced", 'command="a\\" ssh-ed25519 {key}')
    add("unknown-type", "ssh-foo {body} unknown")
    add("type-only", "ssh-ed25519")
    add("options-only", 'no-pty,command="x"')
    add("two-types", "ssh-ed25519 ssh-rsa {body}")
    add("type-case", "SSH-ED25519 {body} case")
    add("non-ascii-comment", "ssh-ed25519 {body} caf\u00e9")
    add("non-ascii-options", 'command="\u00e9" ssh-ed25519 {body} opt')
    add("zero-width-type", "ssh-ed25519\u200b {body} zw")
    add("nbsp-separator", "ssh-ed25519\u00a0{body} nbsp")
    add("google-ssh-deep", "ssh-ed25519 {body} google-ssh " + "[" * 3000 + "]" * 3000)
    add("google-ssh-not-json", "ssh-ed25519 {body} google-ssh {{expireOn")
    add("google-ssh-list", 'ssh-ed25519 {body} google-ssh ["expireOn"]')
    add("google-ssh-bad-expiry", 'ssh-ed25519 {body} google-ssh {{"userName":"x","expireOn":"soon"}}')
    add("google-ssh-expiry-type", 'ssh-ed25519 {body} google-ssh {{"userName":"x","expireOn":12}}')
    add(
        "google-ssh-expired",
        'ssh-ed25519 {body} google-ssh {{"userName":"x","expireOn":"2001-01-01T00:00:00Z"}}',
    )
    out[-1] = attrs.evolve(out[-1], silent=True)
    add(
        "google-ssh-no-offset",
        'ssh-ed25519 {body} google-ssh {{"userName":"x","expireOn":"2099-01-01T00:00:00"}}',
    )
    add("long-options", "no-pty," * 3000 + "ssh-ed25519 {body} longopts")
    add("long-comment", "ssh-ed25519 {body} " + "c" * 20000)
    # A newline inside a key line: both halves refused (the second has no key type / no user).
    add("newline-options", 'command="/bin/sh"\nssh-ed25519 {body} nl-opt')
    out[-1] = attrs.evolve(out[-1], named_only=True)
    return out


def _sized() -> list[Entry]:
    body = _b64(blob_ed25519("mega"))
    mega = "ssh-ed25519 " + "A" * (1024 * 1024) + " " + body
    line, body2 = key_line("mega-comment")
    return [
        Entry("key-megabyte-blob", "key", mega, body, sized=True),
        Entry("key-megabyte-comment", "key", line + " " + "x" * (1024 * 1024), body2, sized=True),
    ]


FLOOD_LINES = 2000


def flood_of_bad_lines() -> Entry:
    """Thousands of refused lines for one user (each a different bad blob)."""
    lines = []
    for i in range(FLOOD_LINES):
        blob = blob_ed25519(f"flood-{i}")[:-1]  # one byte short: truncated
        lines.append(f"ssh-ed25519 {_b64(blob)} f{i}")
    first = _b64(blob_ed25519("flood-0")[:-1])
    return Entry("key-flood-bad", "key", "\n".join(lines), first, lines=FLOOD_LINES)


def flood_of_one_key() -> tuple[Entry, str]:
    """The same valid key thousands of times for one user: installed once. (entry, the key line)"""
    line, _ = key_line("flood-same", "same")
    return Entry("key-flood-same", "key", "\n".join([line] * FLOOD_LINES), "", lines=FLOOD_LINES), line


def entries() -> list[Entry]:
    """Every bad entry (the floods are separate: they are many lines each)."""
    return _name_entries() + _truncations() + _wrong_blobs() + _structure() + _sized()


def good_keys(n: int = 3) -> list[str]:
    return [key_line(f"good-{i}", f"good{i}")[0] for i in range(n)]


# ---------------------------------------------------------------- whole GCE documents

# Fields of GCE's recursive JSON, and the JSON values of wrong type a document may carry.
WRONG = {
    "object": {"x": {"y": 1}},
    "list": ["a", 1, None],
    "number": 12345,
    "boolean": True,
    "null": None,
    "string": "not-what-you-think",
}


def gce_field_paths(document: dict[str, object]) -> list[tuple[str, ...]]:
    """Every field of a real recursive document, as key paths (lists by index)."""
    paths: list[tuple[str, ...]] = []

    def walk(node: object, path: tuple[str, ...]) -> None:
        if path:
            paths.append(path)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*path, str(key)))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, (*path, str(index)))

    walk(document, ())
    return paths


def kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def with_value(document: object, path: tuple[str, ...], value: object) -> object:
    """A copy of `document` with the field at `path` replaced."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        out = dict(document)
        out[head] = with_value(document.get(head, {}), rest, value)
        return out
    if isinstance(document, list):
        items = list(document)
        items[int(head)] = with_value(items[int(head)], rest, value)
        return items
    raise KeyError(path)
