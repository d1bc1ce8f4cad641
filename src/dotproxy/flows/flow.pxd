# C declarations for flow.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython

from dotproxy._wire cimport Edns, Query, parse_query
from dotproxy.upstream.base cimport AnswerSink
from dotproxy.upstream.pool cimport PooledUpstream


cdef Py_ssize_t _UDP_PLAIN, _UDP_EDNS_CAP


cdef class FlowStats:
    cdef public Py_ssize_t queries
    cdef public Py_ssize_t answered
    cdef public Py_ssize_t servfail
    cdef public Py_ssize_t formerr
    cdef public Py_ssize_t refused_overload
    cdef public Py_ssize_t dropped_unreadable
    cdef public Py_ssize_t truncated
    cdef public Py_ssize_t cancelled
    cdef public Py_ssize_t write_failures
    cdef public Py_ssize_t flows_opened
    cdef public Py_ssize_t flows_closed


cdef class DatagramSink:
    cpdef send(self, data, endpoint)


cdef class Admission:
    cdef public Py_ssize_t limit
    cdef public Py_ssize_t in_flight

    cpdef bint admit(self) except -1
    cpdef release(self)


cdef class _FlowQuery(AnswerSink):  # no freelist: a subtype cannot have one
    cdef public Flow flow
    cdef public object data
    cdef public object query
    cdef public object endpoint
    cdef public double deadline
    cdef public object handle
    cdef public _FlowQuery prev
    cdef public _FlowQuery next
    cdef public bint listed

    cpdef resolved(self, answer, error)


cdef class Flow:
    cdef public str kind
    cdef public object name
    cdef public object metadata
    cdef public object _resolve
    cdef public PooledUpstream _pool
    cdef public object _deliver
    cdef public DatagramSink _sink
    cdef public double _timeout
    cdef public Admission _admission
    cdef public FlowStats _stats
    cdef public object _on_close
    cdef public object _query_log
    cdef public _FlowQuery _first
    cdef public _FlowQuery _last
    cdef public Py_ssize_t _count
    cdef public object _time
    cdef public object _idle
    cdef public bytearray _buffer
    cdef public bint closed

    @cython.locals(off=Py_ssize_t, n=Py_ssize_t, length=Py_ssize_t)
    cpdef receive(self, data, endpoint=*)
    @cython.locals(pending=_FlowQuery, last=_FlowQuery, now=double, deadline=double, query=Query)
    cpdef _query(self, data, endpoint)
    @cython.locals(prev=_FlowQuery, nxt=_FlowQuery)
    cpdef _resolved(self, _FlowQuery pending, answer, error)
    @cython.locals(pending=_FlowQuery, nxt=_FlowQuery)
    cpdef close(self)
    @cython.locals(edns=Edns, limit=Py_ssize_t)
    cpdef _send(self, answer, endpoint, Query query, str outcome=*, started=*, upstream=*)
