"""Per-query telemetry for a subscriber: what was asked, how it ended, who asked.

A flow builds a :class:`QueryRecord` only when a subscriber is set, so the
records cost nothing when nobody listens. The subscriber is called on the
engine's thread right after the answer is handed to the client; it must be
quick (hand the record to a queue, a counter, a logger). A subscriber that
raises is logged once and then ignored, never a cause of a lost answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("dotproxy.querylog")


@dataclass(frozen=True, slots=True)
class QueryRecord:
    qname: str | None  # presentation form, lower case; None when the query was unreadable
    qtype: int | None
    rcode: int  # of the answer the client got
    answers: int  # ANCOUNT of that answer
    outcome: str  # "answered", "truncated", "timeout" (SERVFAIL, deadline), "servfail", "refused", "formerr"
    latency: float  # seconds from arrival to the answer leaving
    upstream: str | None  # the upstream that answered (or failed last), None if none was asked
    transport: str  # the flow's kind: "udp" or "tcp"
    metadata: object  # the flow's metadata, as the host gave it (e.g. the source app)


QuerySubscriber = Callable[[QueryRecord], None]


class SafeSubscriber:
    """Calls the subscriber; its first failure is logged, later ones counted."""

    __slots__ = ("subscriber", "failures")

    def __init__(self, subscriber: QuerySubscriber) -> None:
        self.subscriber = subscriber
        self.failures = 0

    def __call__(self, record: QueryRecord) -> None:
        try:
            self.subscriber(record)
        except Exception:
            self.failures += 1
            if self.failures == 1:
                log.exception("the query log subscriber failed (further failures are only counted)")


def log_to(logger: logging.Logger, level: int = logging.INFO) -> QuerySubscriber:
    """A subscriber writing one line per query to ``logger``."""

    def write(r: QueryRecord) -> None:
        if logger.isEnabledFor(level):
            logger.log(level, "%s %s %s rcode=%d answers=%d %.1fms upstream=%s %s metadata=%r", r.transport,
                       r.qname, r.qtype, r.rcode, r.answers, r.latency * 1000, r.upstream, r.outcome, r.metadata)

    return write


def fan_out(subscribers: list[QuerySubscriber]) -> QuerySubscriber | None:
    """One subscriber calling each of ``subscribers`` (None for none: records are then never built)."""
    if not subscribers:
        return None
    if len(subscribers) == 1:
        return subscribers[0]

    def each(record: QueryRecord) -> None:
        for subscriber in subscribers:
            subscriber(record)

    return each
