"""Queries in deadline order under one loop timer.

A timer per query costs a libuv timer start and stop (uvloop) or a heap push and a
cancelled handle (asyncio) on every query, answered or not; nearly every query is
answered long before its deadline. Here a query joins a doubly linked list kept in
deadline order and leaves it in O(1) when it finishes; one timer waits for the
earliest deadline. Deadlines mostly arrive in order (the same timeout from each
query's arrival), so an insert walks back from the tail a step or none.

The timer is lazy: when the earliest query leaves, the timer stays; it fires, finds
nothing due, and waits for the new earliest. At most one extra wake-up per deadline
span, instead of a timer operation per query.
"""

from __future__ import annotations

import asyncio

#: A timer may fire a little before its time (uvloop rounds to milliseconds): what is
#: due within this many seconds of a firing counts as due, so that no firing is wasted.
_EARLY = 0.001


class DeadlineEntry:
    """What :class:`Deadlines` keeps: an absolute ``deadline`` and :meth:`expired`, called
    once when it passes while the entry is still in the list."""

    __slots__ = ("deadline", "_prev", "_next", "_listed")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._prev: DeadlineEntry | None = None
        self._next: DeadlineEntry | None = None
        self._listed = False

    def expired(self) -> None:
        raise NotImplementedError


class Deadlines:
    """Entries in deadline order, and one timer for the earliest."""

    __slots__ = ("loop", "_head", "_tail", "_timer", "_timer_at", "count")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._head: DeadlineEntry | None = None
        self._tail: DeadlineEntry | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.count = 0

    def add(self, entry: DeadlineEntry) -> None:
        if entry._listed:
            return
        deadline = entry.deadline
        after = self._tail
        while after is not None and after.deadline > deadline:
            after = after._prev
        entry._prev = after
        if after is None:
            entry._next = self._head
            self._head = entry
        else:
            entry._next = after._next
            after._next = entry
        if entry._next is None:
            self._tail = entry
        else:
            entry._next._prev = entry
        entry._listed = True
        self.count += 1
        if after is None:  # the new earliest
            self._arm(deadline)

    def remove(self, entry: DeadlineEntry) -> None:
        if not entry._listed:
            return
        prev, nxt = entry._prev, entry._next
        if prev is None:
            self._head = nxt
        else:
            prev._next = nxt
        if nxt is None:
            self._tail = prev
        else:
            nxt._prev = prev
        entry._prev = entry._next = None
        entry._listed = False
        self.count -= 1

    def close(self) -> None:
        """Forget every entry (none expires) and the timer."""
        while self._head is not None:
            self.remove(self._head)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # it fires first and re-arms for what is earliest then
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        due = self.loop.time() + _EARLY
        try:
            while self._head is not None and self._head.deadline <= due:
                entry = self._head
                self.remove(entry)
                entry.expired()
        finally:  # a failing entry must not leave the later ones without a timer
            if self._head is not None:
                self._arm(self._head.deadline)
