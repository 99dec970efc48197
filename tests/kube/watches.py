"""Watch events and watchers ("Efficient detection of changes" in kubernetes.io's API concepts).

A watcher with a label or field selector sees an object that starts matching as ADDED and one that
stops matching as DELETED, as the server's watch cache reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

JSON = dict[str, Any]
Predicate = Callable[[JSON], bool]


class WatchEvent(NamedTuple):
    rv: int
    key: tuple[str, str]  # (group, plural)
    type: str  # ADDED, MODIFIED, DELETED
    obj: JSON
    old: JSON | None


@dataclass
class Watcher:
    key: tuple[str, str]
    namespace: str | None
    matches: Predicate
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[JSON | None]

    def _sees(self, obj: JSON | None) -> bool:
        if obj is None:
            return False
        in_namespace = self.namespace is None or obj["metadata"].get("namespace") == self.namespace
        return in_namespace and self.matches(obj)

    def transition(self, ev: WatchEvent) -> JSON | None:
        """The event this watcher sees: a change into or out of its selection is ADDED or DELETED."""
        if ev.key != self.key:
            return None
        if ev.type == "DELETED":
            return {"type": "DELETED", "object": ev.obj} if self._sees(ev.obj) else None
        now_in, was_in = self._sees(ev.obj), self._sees(ev.old)
        if now_in:
            return {"type": "MODIFIED" if was_in else "ADDED", "object": ev.obj}
        return {"type": "DELETED", "object": ev.obj} if was_in else None

    def offer(self, item: JSON | None) -> None:
        with contextlib.suppress(RuntimeError):  # the watcher's loop is closed: it has gone
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
