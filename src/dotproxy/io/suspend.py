"""Noticing that the machine was suspended.

The event loop's clock (monotonic) stops while the machine sleeps, so nothing
timed on it can tell that a connection was left idle for eight hours. A clock
that keeps counting through sleep can: the gap between the two grows by the
time spent suspended. Linux: CLOCK_BOOTTIME vs CLOCK_MONOTONIC; macOS:
CLOCK_MONOTONIC (counts sleep there) vs CLOCK_UPTIME_RAW (does not).
"""

from __future__ import annotations

import sys
import time


def _clocks() -> tuple[int, int] | None:
    if sys.platform == "darwin":
        counting, stopping = getattr(time, "CLOCK_MONOTONIC", None), getattr(time, "CLOCK_UPTIME_RAW", None)
    else:
        counting, stopping = getattr(time, "CLOCK_BOOTTIME", None), getattr(time, "CLOCK_MONOTONIC", None)
    if counting is None or stopping is None:
        return None
    try:
        time.clock_gettime(counting)
        time.clock_gettime(stopping)
    except OSError:
        return None
    return counting, stopping


_CLOCKS = _clocks()


def suspended_so_far() -> float:
    """Seconds this machine spent suspended since boot, up to a constant; 0.0 where unknown."""
    if _CLOCKS is None:
        return 0.0
    counting, stopping = _CLOCKS
    return time.clock_gettime(counting) - time.clock_gettime(stopping)


class SuspendWatch:
    """Tells a suspension from successive readings of :func:`suspended_so_far` (sans-IO: readings are given)."""

    def __init__(self, reading: float, *, threshold: float = 1.0) -> None:
        self.threshold = threshold  # gaps below this are clock jitter, not sleep
        self._last = reading

    def observe(self, reading: float) -> float:
        """Seconds suspended since the previous reading, or 0.0 when below the threshold."""
        gap = reading - self._last
        self._last = reading
        return gap if gap >= self.threshold else 0.0
