"""Not a platform: the pieces several platform parsers share.

This module reads no wire format of its own and has no parser (no `parse_*`,
no PLATFORM, no error class): each platform module passes in its own error
class and its own names for where a value was found, so every message still
says which platform's document it is about.

- Loaded documents (YAML, JSON, TOML): `shape_problem` measures what a value
  stands for once YAML aliases are expanded, `freeze` makes the read-only
  copy kept in extras, `read_only` is the attrs converter for a mapping
  field, and `Unreadable` is a file or value the transport found but could
  not read or load.
- cloud-init style meta-data, a mapping with instance-id, local-hostname and
  public-keys (NoCloud's meta-data, VMware's guestinfo.metadata):
  `meta_mapping`, `instance_id`, `local_hostname`, `public_keys`,
  `data_bytes`, and `yaml_kind` for the type names in their reasons.
- key files whose every key is one named user's (CPIO's authorized_keys,
  SmartOS's root_authorized_keys): `user_key_file`.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from guestagent.domain.metadata import Rejection, SshKey
from guestagent.domain.ssh_keys import dedupe, key_for_user, parse_default_user_keys
from guestagent.domain.validation import Invalid

# The bounds on what a loaded value may stand for once YAML aliases are expanded.
# Real meta-data nests two or three levels, network-config under ten.
MAX_DEPTH = 32
MAX_VALUES = 100_000
MAX_TEXT = 8 * 1024 * 1024

# An instance id: one printable word of 1 to 255 characters.
ONE_WORD_ID = re.compile(r"[\x21-\x7e]{1,255}")
# What a hostname (or any other one-word value) may not hold.
NOT_ONE_WORD = re.compile(r"[\x00-\x20\x7f]")


@attrs.frozen
class Unreadable:
    """A file or value the transport found but could not read or load (too large, not
    YAML, not decodable); `reason` is safe to log."""

    reason: str


def read_only(value: Mapping[str, object]) -> Mapping[str, object]:
    """A read-only copy of a mapping (the attrs converter of an extras' document field;
    mypy's attrs plugin takes no generic converter, so typed ones stay where they are)."""
    return MappingProxyType(dict(value))


# ------------------------------------------------------------------ loaded documents


def yaml_kind(value: object) -> str:
    """A YAML-ish name for a value's type, for reasons ('a YAML list')."""
    names = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        bytes: "binary",
        list: "list",
        tuple: "list",
        dict: "mapping",
        set: "set",
        frozenset: "set",
        type(None): "null",
        datetime.date: "date",
        datetime.datetime: "timestamp",
    }
    for cls, name in names.items():
        if type(value) is cls:
            return f"a YAML {name}"
    if isinstance(value, Mapping):
        return "a YAML mapping"
    return f"a {type(value).__name__}"


def shape_problem(value: object, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> str | None:
    """Why `value` is too big to keep (a reason), or None when it is within bounds.

    Walks without recursion, counting every use of a shared (aliased) value,
    so a billion-laughs document and a self-referencing anchor are both
    refused in at most `max_values` steps.
    """
    values = text = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        values += 1
        if values > max_values:
            return f"holds more than {max_values} values once its aliases are expanded"
        if depth > max_depth:
            return f"is nested deeper than {max_depth} levels"
        if isinstance(item, str | bytes):
            text += len(item)
            if text > MAX_TEXT:
                return f"holds more than {MAX_TEXT} characters once its aliases are expanded"
        elif isinstance(item, Mapping):
            for key, sub in item.items():
                stack.append((key, depth + 1))
                stack.append((sub, depth + 1))
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend((sub, depth + 1) for sub in item)
    return None


def freeze(value: object) -> object:
    """A read-only copy: mappings behind MappingProxyType, lists as tuples, sets frozen.

    Recursive: only for values whose depth is bounded already (`shape_problem`,
    domain.jsondoc, tomllib's own limit)."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: freeze(sub) for key, sub in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(sub) for sub in value)
    if isinstance(value, set):
        return frozenset(value)
    return value


# ------------------------------------------------------------------ cloud-init style meta-data


def meta_mapping(value: object, name: str, error: type[ValueError]) -> dict[str, object]:
    """A loaded meta-data document (not None: absent is the caller's to judge) as a
    mapping of its string keys to frozen values; `error` when it is Unreadable, not a
    mapping, or too big (see `shape_problem`). `name` is the document's, e.g. "meta-data"."""
    if isinstance(value, Unreadable):
        raise error(f"{name} refused: {value.reason}")
    if not isinstance(value, Mapping):
        raise error(f"{name} is {yaml_kind(value)}, not a mapping")
    problem = shape_problem(value)
    if problem:
        raise error(f"{name} {problem}")
    return {key: freeze(sub) for key, sub in value.items() if isinstance(key, str)}


def instance_id(raw: object, name: str, error: type[ValueError]) -> str:
    """The instance-id of meta-data `name` (`raw` not None: absent is the caller's to
    judge): a string or a number that is one printable word; `error` otherwise."""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise error(f"{name} instance-id is {yaml_kind(raw)}, not a string")
    value = str(raw).strip()
    if not ONE_WORD_ID.fullmatch(value):
        raise error(f"{name} instance-id is not one printable word of 1 to 255 characters")
    return value


def local_hostname(meta: Mapping[str, object], name: str, rejections: list[Rejection]) -> str:
    """meta-data's local-hostname; "" when absent, or when unusable (then the hostname holds)."""
    raw = meta.get("local-hostname")
    if raw is None:
        return ""
    where = f"{name} local-hostname"
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        reason = f"is {yaml_kind(raw)}, not a string; hostname kept"
        rejections += Rejection.holding(where, reason, ("hostname",))
        return ""
    value = str(raw).strip()
    if NOT_ONE_WORD.search(value):
        rejections += Rejection.holding(where, "is not one word; hostname kept", ("hostname",))
        return ""
    return value


def _key_lines(
    value: object, where: str, rejections: list[Rejection], sets: bool
) -> list[tuple[str, list[str]]]:
    """(where, lines) for a string or a list of strings (also a set, when `sets`);
    anything else holds accounts."""
    if isinstance(value, str):
        return [(where, value.splitlines())]
    if isinstance(value, list | tuple) or (sets and isinstance(value, set | frozenset)):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else list(value)
        out: list[tuple[str, list[str]]] = []
        for index, item in enumerate(items):
            place = f"{where}[{index}]"
            if isinstance(item, str):
                out.append((place, item.splitlines()))
            elif item is not None:
                # Often a key line whose comment holds ": " and so became a YAML mapping.
                # One unreadable entry: the list cannot be trusted to be complete.
                reason = f"is {yaml_kind(item)}, not a key line; keys kept as they are"
                rejections += Rejection.holding(place, reason, ("accounts",))
        return out
    reason = f"is {yaml_kind(value)}, not a key line or a list of them; keys kept as they are"
    rejections += Rejection.holding(where, reason, ("accounts",))
    return []


def public_keys(
    raw: object, where: str, rejections: list[Rejection], *, max_keys: int, sets: bool = True
) -> list[SshKey]:
    """The keys of a public-keys value (`raw` not None), as cloud-init reads it: a string
    of lines, a list of lines (`sets`: a YAML set too), or a mapping whose values are
    either (the names are labels, and not shown: a mis-indented key could be one).
    Every key is the image's default user's. A value of another type holds accounts;
    more than `max_keys` keys hold accounts and the first `max_keys` are kept."""
    groups: list[tuple[str, list[str]]] = []
    if isinstance(raw, Mapping):
        for number, value in enumerate(raw.values(), start=1):
            if value is not None:
                groups += _key_lines(value, f"{where} entry {number}", rejections, sets)
    else:
        groups = _key_lines(raw, where, rejections, sets)
    keys: list[SshKey] = []
    for place, lines in groups:
        found, refused = parse_default_user_keys(lines, place)
        keys += found
        rejections += refused
    # Counted once each: the same key pasted a thousand times is one key, as on GCE and EC2.
    keys = list(dedupe(keys))
    if len(keys) > max_keys:
        reason = f"holds more than {max_keys} keys; keys kept as they are"
        rejections += Rejection.holding(where, reason, ("accounts",))
        keys = keys[:max_keys]
    return keys


def data_bytes(
    value: object,
    name: str,
    subsystems: tuple[str, ...],
    error: type[ValueError],
    rejections: list[Rejection],
) -> bytes | None:
    """User or vendor data as the transport handed it over: bytes or None as they are;
    Unreadable holds `subsystems` (the data is kept as it was); anything else is `error`."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, Unreadable):
        rejections += Rejection.holding(name, f"{value.reason}; kept as it was", subsystems)
        return None
    raise error(f"{name} is {yaml_kind(value)}, not bytes")


# ------------------------------------------------------------------ key files of one user


def user_key_file(
    text: str, user: str, where: str, rejections: list[Rejection], *, max_keys: int
) -> list[SshKey]:
    """An authorized_keys file whose every key is `user`'s: blank and # lines skipped, a
    line that is not a key refused on its own (`where line N`), more than `max_keys`
    keys hold accounts and the first `max_keys` are kept."""
    keys: list[SshKey] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            keys.append(key_for_user(user, line))
        except Invalid as exc:
            rejections.append(Rejection(f"{where} line {number}", str(exc)))
    if len(keys) > max_keys:
        reason = f"holds more than {max_keys} keys; keys kept as they are"
        rejections += Rejection.holding(where, reason, ("accounts",))
        keys = keys[:max_keys]
    return keys
