"""Hanging GETs released by tree changes.

No task per waiter: a waiter is a Future plus a timer handle, grouped by the
subtree it watches. On a change each group's etag is computed once, and every
waiter of a changed subtree is resolved in one pass. That is what lets ten
thousand held polls be answered within a second of one change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from .httpcore import Response
from .tree import PathError, Tree

Render = Callable[[], Response]


@dataclass(slots=True, eq=False)
class _Waiter:
    future: asyncio.Future[Response]
    render: Render
    timer: asyncio.TimerHandle | None = None


class LongPolls:
    def __init__(self, tree: Tree) -> None:
        self._tree = tree
        self._groups: dict[tuple[str, ...], tuple[str, dict[_Waiter, None]]] = {}
        tree.subscribe(self._on_change)

    def __len__(self) -> int:
        return sum(len(g) for _, g in self._groups.values())

    def wait(
        self, segs: tuple[str, ...], etag: str, timeout: float | None, render: Render,
    ) -> asyncio.Future[Response]:
        """A future answered with `render()` once the subtree's etag differs
        from `etag`, or after `timeout` seconds (also with `render()`)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Response] = loop.create_future()
        waiter = _Waiter(fut, render)
        group = self._groups.get(segs)
        if group is None or group[0] != etag:
            # A group is keyed by the etag its waiters hold; all waiters of one
            # path hold the current etag, so one group per path is enough.
            group = (etag, group[1] if group else {})
            self._groups[segs] = group
        group[1][waiter] = None
        if timeout is not None:
            waiter.timer = loop.call_later(timeout, self._release, waiter)
        fut.add_done_callback(lambda _f: self._forget(segs, waiter))
        return fut

    def _forget(self, segs: tuple[str, ...], waiter: _Waiter) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        group = self._groups.get(segs)
        if group is not None:
            group[1].pop(waiter, None)
            if not group[1]:
                del self._groups[segs]

    @staticmethod
    def _release(waiter: _Waiter) -> None:
        if not waiter.future.done():
            waiter.future.set_result(waiter.render())

    def _on_change(self) -> None:
        for segs, (etag, waiters) in list(self._groups.items()):
            try:
                now = self._tree.etag(segs)
            except PathError:
                now = ""  # the subtree is gone: answer (with a 404)
            if now != etag:
                for waiter in list(waiters):
                    self._release(waiter)
