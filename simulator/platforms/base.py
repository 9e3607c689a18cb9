"""What every platform provides to the server and to the control API."""

from __future__ import annotations

import abc
from typing import Any

from ..httpcore import HandlerResult, Request, Response
from ..scenario import Scenario
from ..simclock import SimClock
from ..tree import Node, Tree


class Platform(abc.ABC):
    """A cloud's metadata endpoint for one VM.

    `tree` is the platform's view of the VM, built from the scenario and then
    mutated at run time through `set`/`delete` (paths in the platform's own
    names). Handlers run on the server's event loop only.
    """

    name: str = ""
    # URL path prefixes this platform answers; the server routes by them.
    prefixes: tuple[str, ...] = ()
    # Headers on an injected error status (the platform's server still answers).
    fault_headers: list[tuple[str, str]] = []  # noqa: RUF012 - read-only per class
    # Path a client starts from, for Simulator.url().
    base_path: str = "/"

    def __init__(self, scenario: Scenario, clock: SimClock) -> None:
        self.scenario = scenario
        self.clock = clock
        self.tree = Tree(self.render(scenario))

    @abc.abstractmethod
    def render(self, scenario: Scenario) -> dict[str, Node]:
        """The initial tree for a scenario."""

    @abc.abstractmethod
    def handle(self, req: Request) -> HandlerResult:
        """Answer one request whose path starts with one of `prefixes`."""

    def address(self, http_base: str) -> str:
        """Where a client of this platform starts, given the server's `http://host:port`."""
        return http_base + self.base_path

    def claims(self, req: Request) -> bool:
        return any(req.path == p or req.path.startswith(p + "/") for p in self.prefixes)

    def claims_root(self, req: Request) -> int:
        """How strongly a request for `/` (or `/?...`) belongs to this
        platform: 0 not at all, 1 by default, 2 certainly."""
        return 0

    def relpath(self, path: str) -> str:
        """The path without this platform's base path (or prefix), for fault
        patterns: `/computeMetadata/v1/instance/id` -> `instance/id`."""
        for p in (self.base_path.rstrip("/"), *self.prefixes):
            if not p:
                continue
            if path == p or path.startswith(p + "/"):
                return "/".join(s for s in path[len(p):].split("/") if s)
        return path.lstrip("/")

    def reload(self, scenario: Scenario) -> None:
        """Re-render the tree from a new scenario (one change: long polls on
        subtrees whose content differs are released, the others keep waiting)."""
        self.scenario = scenario
        self.tree.set("", self.render(scenario))

    # -- state API (control server and Python API) ---------------------------
    def get(self, path: str) -> Node:
        return self.tree.get(path)

    def set(self, path: str, value: Node) -> None:
        self.tree.set(path, value)

    def delete(self, path: str) -> None:
        self.tree.delete(path)

    def state(self) -> dict[str, Any]:
        """Things the guest wrote back (guest attributes, health reports)."""
        return {}

    def held_polls(self) -> int:
        """Long polls waiting right now."""
        return 0

    @staticmethod
    def not_found(extra: list[tuple[str, str]] | None = None) -> Response:
        return Response.text(404, "Not Found\n", extra)
