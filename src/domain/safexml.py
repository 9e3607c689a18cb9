"""XML from the platform, parsed with every document-type feature refused and every size bounded.

Azure speaks XML (the provisioning DVD's ovf-env.xml, the WireServer's goal
state and version list). None of those documents has, or needs, a document
type declaration, so one is refused outright: no DTD means no entity
declarations, so no "billion laughs" expansion, no external entity fetching
and no quadratic blow-up, whatever the expat version underneath. That is the
technique defusedxml uses (it installs the same expat handlers); it is done
here with the standard library's own `xml.parsers.expat` because the domain
layer imports nothing but the standard library and attrs, and because the
rules below (size, depth, element count) are ones defusedxml does not
enforce anyway. Python 3.11 links expat 2.5, which has its own amplification
limits; they are a second line, not the one relied on.

The result is a small immutable tree (`Element`): namespaced names are kept
as `{namespace}local`, as ElementTree spells them, text is the concatenated
character data of the element itself (children's text is theirs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NoReturn
from xml.parsers import expat

import attrs

# Real documents: ovf-env.xml a few KiB (CustomData up to 64 KiB base64), a goal
# state 2-4 KiB, the version list under 1 KiB.
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_ELEMENTS = 10_000


class XmlRefused(ValueError):
    """Not well-formed, too large, too deep, or using DTD features; str() is safe to log."""


@attrs.frozen
class Element:
    tag: str  # "{namespace}local" or "local"
    attributes: tuple[tuple[str, str], ...] = ()
    text: str = ""
    children: tuple[Element, ...] = ()

    @property
    def local(self) -> str:
        """The tag without its namespace."""
        return self.tag.rsplit("}", 1)[-1]

    @property
    def namespace(self) -> str:
        return self.tag[1:].split("}", 1)[0] if self.tag.startswith("{") else ""

    def attribute(self, name: str) -> str | None:
        for key, value in self.attributes:
            if key == name or key.rsplit("}", 1)[-1] == name:
                return value
        return None

    def child(self, local: str) -> Element | None:
        """The first child with this local name (any namespace)."""
        return next((c for c in self.children if c.local == local), None)

    def all(self, local: str) -> tuple[Element, ...]:
        return tuple(c for c in self.children if c.local == local)

    def find(self, path: str) -> Element | None:
        """Follow `A/B/C` by local names, first match at each step."""
        node: Element | None = self
        for part in path.split("/"):
            if node is None:
                return None
            node = node.child(part)
        return node

    def findtext(self, path: str) -> str | None:
        found = self.find(path)
        return None if found is None else found.text

    def iter(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            yield from child.iter()


class _Builder:
    def __init__(self, max_depth: int, max_elements: int) -> None:
        self.max_depth = max_depth
        self.max_elements = max_elements
        self.count = 0
        # Open elements: (tag, attributes, text parts, children)
        self.stack: list[tuple[str, tuple[tuple[str, str], ...], list[str], list[Element]]] = []
        self.root: Element | None = None

    def start(self, name: str, attributes: dict[str, str]) -> None:
        self.count += 1
        if self.count > self.max_elements:
            raise XmlRefused(f"more than {self.max_elements} elements")
        if len(self.stack) >= self.max_depth:
            raise XmlRefused(f"nested deeper than {self.max_depth} levels")
        self.stack.append((_tag(name), tuple((_tag(k), v) for k, v in attributes.items()), [], []))

    def end(self, name: str) -> None:
        tag, attributes, text, children = self.stack.pop()
        element = Element(tag, attributes, "".join(text), tuple(children))
        if self.stack:
            self.stack[-1][3].append(element)
        else:
            self.root = element

    def data(self, text: str) -> None:
        if self.stack:
            self.stack[-1][2].append(text)


def _tag(name: str) -> str:
    # expat with namespace_separator=" " reports "uri local".
    uri, sep, local = name.rpartition(" ")
    return f"{{{uri}}}{local}" if sep else name


def _refuse(what: str) -> Callable[..., Any]:
    def handler(*_args: object) -> NoReturn:
        raise XmlRefused(f"{what} refused (platform documents never have one)")

    return handler


def parse(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> Element:
    """The document's root element; XmlRefused for anything else, never another exception."""
    if not isinstance(data, bytes | bytearray):
        raise XmlRefused("not bytes")
    if len(data) > max_bytes:
        raise XmlRefused(f"larger than {max_bytes} bytes ({len(data)} bytes)")
    builder = _Builder(max_depth, max_elements)
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse("a document type declaration")
    parser.EntityDeclHandler = _refuse("an entity declaration")
    parser.UnparsedEntityDeclHandler = _refuse("an unparsed entity declaration")
    parser.ExternalEntityRefHandler = _refuse("an external entity reference")
    parser.NotationDeclHandler = _refuse("a notation declaration")
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        parser.Parse(bytes(data), True)
    except XmlRefused:
        raise
    except expat.ExpatError as exc:
        raise XmlRefused(f"not well-formed XML ({expat.ErrorString(exc.code)})") from exc
    except (RecursionError, MemoryError, ValueError, UnicodeError) as exc:
        raise XmlRefused(f"unreadable XML ({exc.__class__.__name__})") from exc
    if builder.root is None:
        raise XmlRefused("no root element")
    return builder.root
