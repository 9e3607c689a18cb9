"""JSON from metadata, parsed with a bound on nesting.

Python's json module recurses once per level: a few thousand `[` in any
attribute (anyone who may set project metadata can write one) raise
RecursionError, which is not a ValueError and used to escape every handler
on its way up. Depth is measured first, in one linear pass, so a hostile
document costs one refusal and never a crash.
"""

from __future__ import annotations

import json
import re

# Real metadata nests a handful of levels (GCE's tree is under ten); this leaves room
# for users' own JSON in attributes while staying far below the interpreter's limit.
MAX_DEPTH = 64


class JsonRefused(ValueError):
    """Not JSON, or nested deeper than MAX_DEPTH; str() is a reason safe to log."""


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth(text: str) -> int:
    """The deepest level of [ and { outside strings (escapes honoured)."""
    depth = deepest = 0
    # Regexes do the per-character work in C: this runs on every metadata change.
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> object:
    """json.loads that refuses deep nesting and never raises anything but JsonRefused."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRefused("not UTF-8") from exc
    if nesting_depth(text) > max_depth:
        raise JsonRefused(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise JsonRefused("not valid JSON") from exc


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages about wrong types."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
