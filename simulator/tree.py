"""A mutable metadata tree: nested dicts and lists with string paths.

Each platform keeps its view of the instance as one `Tree`. Paths are the
names the platform serves (GCE's `instance/network-interfaces/0/ip`), lists
are addressed by index. Every change bumps `version` and calls the listeners,
which is what releases long polls; renderers cache by version.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

Node = Any  # dict[str, Node] | list[Node] | str | int | float | bool | None
Listener = Callable[[], None]


class PathError(KeyError):
    """The path does not name a node (or names a child of a leaf)."""


# The unspecified address as text (a default route's network, a placeholder
# for "no address"), never something the simulator binds to.
ANY4 = "0.0.0.0"  # noqa: S104


def split(path: str) -> list[str]:
    """Path segments; empty segments are ignored (GCE clients send `v1//`)."""
    return [p for p in path.split("/") if p]


def child(node: Node, seg: str) -> Node:
    if isinstance(node, dict):
        if seg in node:
            return node[seg]
        raise PathError(seg)
    if isinstance(node, list) and seg.isdigit() and int(seg) < len(node):
        return node[int(seg)]
    raise PathError(seg)


def is_dir(node: Node) -> bool:
    return isinstance(node, dict | list)


def listing(node: Node) -> list[str]:
    """Child names of a directory node; subdirectories end in `/`."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    return [f"{k}/" if is_dir(v) else str(k) for k, v in items]


def etag_of(node: Node) -> str:
    """Content hash: equal content gives an equal etag, as on the real server."""
    blob = json.dumps(node, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Tree:
    def __init__(self, root: dict[str, Node] | None = None) -> None:
        self.root: dict[str, Node] = root if root is not None else {}
        self.version = 0
        self._listeners: list[Listener] = []
        self._etags: dict[tuple[str, ...], str] = {}
        self._etag_version = 0

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def resolve(self, segs: list[str] | tuple[str, ...]) -> Node:
        node: Node = self.root
        for seg in segs:
            node = child(node, seg)
        return node

    def get(self, path: str) -> Node:
        return copy.deepcopy(self.resolve(split(path)))

    def exists(self, path: str) -> bool:
        try:
            self.resolve(split(path))
        except PathError:
            return False
        return True

    def etag(self, segs: tuple[str, ...]) -> str:
        """Etag of a subtree, cached until the next change."""
        if self._etag_version != self.version:
            self._etags.clear()
            self._etag_version = self.version
        tag = self._etags.get(segs)
        if tag is None:
            tag = self._etags[segs] = etag_of(self.resolve(segs))
        return tag

    def set(self, path: str, value: Node) -> None:
        """Create or replace; missing parent directories are created."""
        segs = split(path)
        if not segs:
            if not isinstance(value, dict):
                raise PathError("the root must be a mapping")
            self.root = copy.deepcopy(value)
            self.changed()
            return
        node: Node = self.root
        for seg in segs[:-1]:
            node = node.setdefault(seg, {}) if isinstance(node, dict) else child(node, seg)
        last = segs[-1]
        value = copy.deepcopy(value)
        if isinstance(node, dict):
            node[last] = value
        elif isinstance(node, list) and last.isdigit() and int(last) <= len(node):
            if int(last) == len(node):
                node.append(value)
            else:
                node[int(last)] = value
        else:
            raise PathError(path)
        self.changed()

    def delete(self, path: str) -> None:
        segs = split(path)
        if not segs:
            raise PathError("cannot delete the root")
        parent = self.resolve(segs[:-1])
        last = segs[-1]
        if isinstance(parent, dict) and last in parent:
            del parent[last]
        elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
            del parent[int(last)]
        else:
            raise PathError(path)
        self.changed()

    def changed(self) -> None:
        self.version += 1
        for listener in list(self._listeners):
            listener()
