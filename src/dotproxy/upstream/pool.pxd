# C declarations for pool.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython

from dotproxy.upstream.base cimport AnswerSink, Backoff, Upstream
from dotproxy.upstream.deadlines cimport DeadlineEntry, Deadlines


cdef class PooledConnection:
    cdef public PooledUpstream pool
    cdef public object loop
    cdef public object transport
    cdef public dict waiters
    cdef public bint ready
    cdef public bint draining
    cdef public object closed
    cdef public double last_activity
    cdef public double idle_timeout
    cdef public bint _flush_scheduled
    cdef public object _idle_handle
    cdef public object _liveness_handle
    cdef public object _close_handle
    cdef public double _liveness_armed_at
    cdef public object _watchdog_handle
    cdef public double _watch_from
    cdef public object end_reason
    cdef public Py_ssize_t sent
    cdef public Py_ssize_t answers
    cdef public double started_at
    cdef public bint _close_started
    cdef public int _fd
    cdef public bint _ack_due
    cdef public object core

    cpdef bint usable(self) except -1
    cpdef read_done(self)
    cpdef ack_now(self)
    cpdef submit(self, Ticket ticket, double now)
    cpdef send_query(self, Ticket ticket, double now)
    cpdef withdraw(self, int query_id)
    @cython.locals(pool=PooledUpstream)
    cpdef answered(self, double now)
    @cython.locals(ticket=Ticket)
    cpdef resolve(self, query_id, data)
    @cython.locals(ticket=Ticket)
    cpdef reject(self, query_id, error)
    cpdef double last_heard(self) except? -1.0
    cpdef schedule_flush(self)
    cpdef _flush(self)
    cpdef bint write_pending(self) except -1


cdef class Ticket(DeadlineEntry):  # no freelist: a subtype cannot have one
    cdef public PooledUpstream pool
    cdef public object data
    cdef public object query
    cdef public object callback
    cdef public PooledConnection conn
    cdef public int query_id
    cdef public int resends
    cdef public int moves
    cdef public bint fallback
    cdef public bint done

    cpdef cancel(self)
    cpdef answered(self, answer)
    cpdef failed(self, error)
    cpdef expired(self)
    @staticmethod
    @cython.locals(ticket=Ticket)
    cdef Ticket start(PooledUpstream pool, data, query, double deadline, callback, bint fallback)
    @cython.locals(conn=PooledConnection)
    cpdef _withdraw(self)
    @cython.locals(sink=AnswerSink)
    cpdef _finish(self, answer, error)


cdef class PooledUpstream(Upstream):
    cdef public object tls
    cdef public frozenset _pins
    cdef public list _conns
    cdef public set _closing
    cdef public object _dial_task
    cdef public dict _queue
    cdef public Backoff _backoff
    cdef public object _tasks
    cdef public object loop
    cdef public Deadlines _deadlines
    cdef public double _quiet_after
    cdef public Py_ssize_t _max_outstanding
    cdef public Py_ssize_t _spread_at
    cdef public Py_ssize_t _pool_size
    cdef public int _max_resends
    cdef public double _connect_timeout
    cdef public double _dial_time
    cdef public double _dial_started
    cdef public bint _dial_slow
    cdef public object _dial_watch
    cdef public Backoff _redial
    cdef public object _redial_handle
    cdef public Py_ssize_t _budget
    cdef public Py_ssize_t _budget_seen

    cpdef submit_parsed(self, data, query, double deadline, callback, double now=*, bint fallback=*)
    cpdef capacity(self, PooledConnection conn)
    cpdef refusing(self, double now)

    @cython.locals(best=PooledConnection, conn=PooledConnection, quiet_after=double, load=Py_ssize_t, best_load=Py_ssize_t)
    cpdef PooledConnection _pick(self, bint fresh, double now)
    @cython.locals(conn=PooledConnection)
    cpdef _place(self, Ticket ticket, double now)
    cpdef _submit_on(self, PooledConnection conn, Ticket ticket, double now)
    @cython.locals(ticket=Ticket)
    cpdef _resend_all(self, list tickets, str detail)
    @cython.locals(ticket=Ticket, conn=PooledConnection, now=double)
    cpdef _pump(self)
