"""Task ownership: every background task dotproxy starts has an owner that cancels and awaits it.

An object that needs background work (a pool dialling, a listener serving) holds a
:class:`TaskOwner` and closes it in its own ``aclose()``. This is the one place
that calls ``create_task``: a TaskGroup would need an enclosing ``async with``
block, while these owners live as long as the objects that hold them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("dotproxy.tasks")


class TaskOwner:
    """Starts tasks, keeps them, and cancels and awaits all of them in :meth:`aclose`."""

    def __init__(self, name: str, *, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.name = name
        self._on_error = on_error  # default: log it
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        return self._closed

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task:
        """Start ``coro`` as a task owned here. A failure is logged, never left unretrieved."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.name} is closed: no new tasks")
        task = asyncio.get_running_loop().create_task(coro, name=name or self.name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            if self._on_error is not None:
                self._on_error(exc)
            else:
                log.error("%s: task %s failed", self.name, task.get_name(), exc_info=exc)

    async def aclose(self) -> None:
        """Cancel every task and wait until all of them have finished."""
        self._closed = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
