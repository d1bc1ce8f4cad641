"""dotproxy.upstream.deadlines: entries in deadline order under one lazy loop timer.

Every test runs on real loops, asyncio and uvloop (the ``run`` fixture), with real
timers of a few tens of milliseconds. Timing asserts are one-sided and generous:
nothing expires before its deadline (less the module's ``_EARLY`` tolerance for
uvloop's millisecond rounding) nor ``LATE`` seconds after it.
"""

from __future__ import annotations

import asyncio

import pytest
from loop_fixtures import wait_until

from dotproxy.upstream.deadlines import _EARLY, DeadlineEntry, Deadlines

#: How late an expiration may be before the test calls it a failure (loaded CI boxes).
LATE = 0.5
#: Float noise on top of ``_EARLY``.
EPS = 1e-6


class Rec(DeadlineEntry):
    """Records each expiration as ``(name, loop time)`` in a shared log."""

    __slots__ = ("name", "log", "loop", "on_expire")

    def __init__(self, deadline, name, log, loop, on_expire=None):
        DeadlineEntry.__init__(self, deadline)
        self.name = name
        self.log = log
        self.loop = loop
        self.on_expire = on_expire

    def expired(self):
        self.log.append((self.name, self.loop.time()))
        if self.on_expire is not None:
            self.on_expire(self)


def names(log):
    return [name for name, _ in log]


def check_on_time(entries, log):
    """Every logged expiration happened within [deadline - _EARLY, deadline + LATE)."""
    by_name = {e.name: e for e in entries}
    for name, at in log:
        deadline = by_name[name].deadline
        assert at >= deadline - _EARLY - EPS, f"{name} expired {deadline - at:.4f}s early"
        assert at < deadline + LATE, f"{name} expired {at - deadline:.4f}s late"


def check_empty(dl):
    assert dl.count == 0
    assert dl._head is None and dl._tail is None


def walk(dl):
    """The list, head to tail, checking the back links on the way."""
    out, prev, e = [], None, dl._head
    while e is not None:
        assert e._prev is prev and e._listed
        out.append(e)
        prev, e = e, e._next
    assert dl._tail is prev
    return out


def test_entry_uses_slots_and_base_expired_is_abstract():
    e = Rec(1.0, "a", [], None)
    assert not hasattr(e, "__dict__")
    with pytest.raises(NotImplementedError):
        DeadlineEntry(1.0).expired()


def test_expire_in_deadline_order_once_each_on_time(run):
    async def main():
        loop = asyncio.get_running_loop()
        dl = Deadlines(loop)
        log = []
        t0 = loop.time()
        entries = [Rec(t0 + 0.03 + 0.02 * i, f"e{i}", log, loop) for i in range(5)]
        for e in entries:
            dl.add(e)
        assert dl.count == 5
        assert walk(dl) == entries
        assert dl._timer is not None and dl._timer_at == entries[0].deadline
        # Nothing is due yet.
        assert log == []
        await wait_until(lambda: len(log) == 5, timeout=LATE + 0.2, what="all expired")
        await asyncio.sleep(0.05)  # and nothing more
        assert names(log) == [e.name for e in entries]
        check_on_time(entries, log)
        check_empty(dl)
        assert dl._timer is None  # nothing left to wait for
        assert all(not e._listed and e._prev is None and e._next is None for e in entries)

    run(main)


def test_equal_deadlines_expire_in_insertion_order(run):
    async def main():
        loop = asyncio.get_running_loop()
        dl = Deadlines(loop)
        log = []
        d = loop.time() + 0.05
        entries = [Rec(d, f"e{i}", log, loop) for i in range(4)]
        early = Rec(d - 0.02, "early", log, loop)
        for e in entries[:2]:
            dl.add(e)
        dl.add(early)
        for e in entries[2:]:
            dl.add(e)
        await wait_until(lambda: len(log) == 5, timeout=1.0, what="all expired")
        assert names(log) == ["early", "e0", "e1", "e2", "e3"]
        check_on_time(entries + [early], log)

    run(main)


def test_out_of_order_inserts_are_sorted_and_rearm_the_timer_earlier(run):
    async def main():
        loop = asyncio.get_running_loop()
        dl = Deadlines(loop)
        log = []
        t0 = loop.time()
        late = Rec(t0 + 0.30, "late", log, loop)
        dl.add(late)
        assert dl._timer_at == late.deadline
        mid = Rec(t0 + 0.15, "mid", log, loop)
        dl.add(mid)
        assert dl._timer_at == mid.deadline  # a new earliest re-arms the timer earlier
        inner = Rec(t0 + 0.20, "inner", log, loop)  # between two: no re-arm
        dl.add(inner)
        assert dl._timer_at == mid.deadline
        first = Rec(t0 + 0.04, "first", log, loop)
        dl.add(first)
        assert dl._timer_at == first.deadline
        assert walk(dl) == [first, mid, inner, late]
        assert dl.count == 4

        await wait_until(lambda: len(log) >= 1, timeout=1.0, what="first expired")
        # It expired at its own deadline, long before the one the timer was first set for.
        assert names(log) == ["first"]
        assert log[0][1] < mid.deadline
        await wait_until(lambda: len(log) == 4, timeout=1.0, what="all expired")
        assert names(log) == ["first", "mid", "inner", "late"]
        check_on_time([first, mid, inner, late], log)
        check_empty(dl)
        assert dl._timer is None

    run(main)


def test_removed_entries_never_expire_and_double_add_remove_are_noops(run):
    async def main():
        loop = asyncio.get_running_loop()
        dl = Deadlines(loop)
        log = []
        t0 = loop.time()
        a, b, c, d = (Rec(t0 + 0.03 + 0.01 * i, n, log, loop) for i, n in enumerate("abcd"))
        for e in (a, b, c, d):
            dl.add(e)
        dl.add(b)  # already listed: no-op
        assert dl.count == 4
        assert walk(dl) == [a, b, c, d]

        dl.remove(b)  # middle
        dl.remove(b)  # twice: no-op
        assert dl.count == 3
        dl.remove(d)  # tail
        assert dl.count == 2
        assert walk(dl) == [a, c]
        assert not b._listed and b._prev is None and b._next is None
        never = Rec(t0 + 0.02, "never", log, loop)
        dl.remove(never)  # never added: no-op
        assert dl.count == 2

        await wait_until(lambda: len(log) == 2, timeout=1.0, what="a and c expired")
        await asyncio.sleep(0.06)  # past every deadline
        assert names(log) == ["a", "c"]
        check_on_time([a, c], log)
        check_empty(dl)
        dl.remove(a)  # already expired: no-op
        assert dl.count == 0

    run(main)


def test_removed_entry_can_be_added_again(run):
    async def main():
        loop = asyncio.get_running_loop()
        dl = Deadlines(loop)
        log = []
        e = Rec(loop.time() + 0.03, "e", log, loop)
        dl.add(e)
        dl.remove(e)
        dl.add(e)
        dl.add(e)
        assert dl.count == 1
        await wait_until(lambda: log, timeout=1.0, what="e expired")
        await asyncio.sleep(0.03)
        assert names(log) == ["e"]
        check_on_time([e], log)
        check_empty(dl)

    run(main)


def test_lazy_timer_next_entry_still_expires_on_time(run):
    async def main():
        loop = asyncio.get_running_loop()
        dl = Deadlines(loop)
        log = []
        t0 = loop.time()
        first = Rec(t0 + 0.03, "first", log, loop)
        second = Rec(t0 + 0.08, "second", log, loop)
        dl.add(first)
        dl.add(second)
        dl.remove(first)  # the earliest leaves: the timer stays where it was (lazy)
        assert dl.count == 1
        assert dl._timer is not None and dl._timer_at == first.deadline
        await asyncio.sleep(0.05)  # the lazy timer has fired with nothing due...
        assert log == []
        assert dl._timer is not None and dl._timer_at == second.deadline  # ...and re-armed
        await wait_until(lambda: log, timeout=1.0, what="second expired")
        assert names(log) == ["second"]
        check_on_time([second], log)
        check_empty(dl)
        assert dl._timer is None

    run(main)


def test_lazy_timer_then_new_earliest_between(run):
    """After the earliest leaves, an entry added between the stale timer and the next one
    expires at its own deadline."""

    async def main():
        loop = asyncio.get_running_loop()
        dl = Deadlines(loop)
        log = []
        t0 = loop.time()
        gone = Rec(t0 + 0.02, "gone", log, loop)
        last = Rec(t0 + 0.20, "last", log, loop)
        dl.add(gone)
        dl.add(last)
        dl.remove(gone)
        mid = Rec(t0 + 0.06, "mid", log, loop)
        dl.add(mid)  # new head, but the stale timer fires earlier anyway
        assert dl._timer_at == gone.deadline
        await wait_until(lambda: log, timeout=1.0, what="mid expired")
        assert names(log) == ["mid"]
        assert log[0][1] < last.deadline
        await wait_until(lambda: len(log) == 2, timeout=1.0, what="last expired")
        assert names(log) == ["mid", "last"]
        check_on_time([mid, last], log)

    run(main)


def test_expired_may_add_a_new_entry(run):
    async def main():
        loop = asyncio.get_running_loop()
        dl = Deadlines(loop)
        log = []
        t0 = loop.time()
        made = []

        def again(entry):
            if len(made) < 2:
                new = Rec(entry.deadline + 0.03, f"{entry.name}+", log, loop, again)
                made.append(new)
                dl.add(new)

        a = Rec(t0 + 0.03, "a", log, loop, again)
        b = Rec(t0 + 0.045, "b", log, loop)  # between a and a's follow-up
        dl.add(a)
        dl.add(b)
        await wait_until(lambda: len(log) == 4, timeout=1.0, what="all expired")
        await asyncio.sleep(0.05)
        assert names(log) == ["a", "b", "a+", "a++"]
        check_on_time([a, b, *made], log)
        check_empty(dl)
        assert dl._timer is None

    run(main)


def test_expired_may_add_an_entry_already_due_and_remove_another(run):
    async def main():
        loop = asyncio.get_running_loop()
        dl = Deadlines(loop)
        log = []
        t0 = loop.time()
        victim = Rec(t0 + 0.03, "victim", log, loop)  # same deadline as a, after it
        late = Rec(t0 + 0.06, "late", log, loop)
        now_due = Rec(t0 - 1.0, "now_due", log, loop)  # already past when added

        def act(entry):
            dl.remove(victim)
            dl.add(now_due)

        a = Rec(t0 + 0.03, "a", log, loop, act)
        for e in (a, victim, late):
            dl.add(e)
        await wait_until(lambda: len(log) == 3, timeout=1.0, what="expirations")
        await asyncio.sleep(0.02)
        assert names(log) == ["a", "now_due", "late"]
        check_on_time([a, late], [x for x in log if x[0] != "now_due"])
        assert log[1][1] < late.deadline  # now_due went in a's firing, not a later one
        check_empty(dl)

    run(main)


def test_failing_expired_does_not_stop_later_entries(run):
    async def main():
        loop = asyncio.get_running_loop()
        calls = []
        old_handler = loop.get_exception_handler()
        loop.set_exception_handler(lambda loop, ctx: calls.append(ctx))
        try:
            dl = Deadlines(loop)
            log = []
            t0 = loop.time()
            boom = RuntimeError("boom")

            def fail(entry):
                raise boom

            bad = Rec(t0 + 0.03, "bad", log, loop, fail)
            same = Rec(t0 + 0.03, "same", log, loop)  # due in the same firing as bad
            later = Rec(t0 + 0.06, "later", log, loop)
            for e in (bad, same, later):
                dl.add(e)
            await wait_until(lambda: len(log) == 3, timeout=1.0, what="all expired")
            await asyncio.sleep(0.03)
            assert names(log) == ["bad", "same", "later"]
            check_on_time([bad, same, later], log)
            check_empty(dl)
            assert dl._timer is None
            assert len(calls) == 1, calls
            assert calls[0].get("exception") is boom
        finally:
            loop.set_exception_handler(old_handler)

    run(main)


def test_close_forgets_everything(run):
    async def main():
        loop = asyncio.get_running_loop()
        dl = Deadlines(loop)
        log = []
        t0 = loop.time()
        entries = [Rec(t0 + 0.02 + 0.01 * i, f"e{i}", log, loop) for i in range(4)]
        for e in entries:
            dl.add(e)
        assert dl._timer is not None
        dl.close()
        check_empty(dl)
        assert dl._timer is None
        assert all(not e._listed and e._prev is None and e._next is None for e in entries)
        await asyncio.sleep(0.08)  # past every deadline
        assert log == []
        dl.close()  # twice: harmless
        check_empty(dl)
        assert dl._timer is None

        # Still usable afterwards.
        e = Rec(loop.time() + 0.02, "after", log, loop)
        dl.add(e)
        await wait_until(lambda: log, timeout=1.0, what="after expired")
        assert names(log) == ["after"]
        check_on_time([e], log)

    run(main)


def test_close_from_expired(run):
    async def main():
        loop = asyncio.get_running_loop()
        dl = Deadlines(loop)
        log = []
        t0 = loop.time()
        a = Rec(t0 + 0.03, "a", log, loop, lambda entry: dl.close())
        b = Rec(t0 + 0.03, "b", log, loop)
        c = Rec(t0 + 0.05, "c", log, loop)
        for e in (a, b, c):
            dl.add(e)
        await wait_until(lambda: log, timeout=1.0, what="a expired")
        await asyncio.sleep(0.05)
        assert names(log) == ["a"]
        check_empty(dl)
        assert dl._timer is None

    run(main)


def test_many_entries(run):
    async def main():
        loop = asyncio.get_running_loop()
        dl = Deadlines(loop)
        log = []
        t0 = loop.time()
        n = 10_000
        entries = [Rec(t0 + 0.05 + i * 1e-6, i, log, loop) for i in range(n)]
        for e in entries:
            dl.add(e)
        assert dl.count == n
        assert dl._head is entries[0] and dl._tail is entries[-1]
        keep = {0, 1, 4_999, 5_000, n - 1}
        for i, e in enumerate(entries):
            if i not in keep:
                dl.remove(e)
        assert dl.count == len(keep)
        assert walk(dl) == [entries[i] for i in sorted(keep)]
        # A few out of order ones walk back through the short remaining list.
        extra = [Rec(t0 + 0.04 + 0.001 * k, f"x{k}", log, loop) for k in (3, 1, 2)]
        for e in extra:
            dl.add(e)
        assert dl.count == len(keep) + 3
        await wait_until(lambda: len(log) == len(keep) + 3, timeout=1.0, what="all expired")
        await asyncio.sleep(0.02)
        assert names(log) == ["x1", "x2", "x3", *sorted(keep)]
        check_on_time(entries + extra, log)
        check_empty(dl)
        assert dl._timer is None

    run(main)
