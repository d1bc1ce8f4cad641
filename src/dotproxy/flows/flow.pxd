# C declarations for flow.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython


cdef class Admission:
    cdef public Py_ssize_t limit
    cdef public Py_ssize_t in_flight

    cpdef bint admit(self) except -1
    cpdef release(self)


cdef class _FlowQuery:
    cdef public Flow flow
    cdef public object data
    cdef public object query
    cdef public object endpoint
    cdef public double deadline
    cdef public object handle


cdef class Flow:
    cdef public str kind
    cdef public object name
    cdef public object metadata
    cdef public object _resolve
    cdef public object _deliver
    cdef public double _timeout
    cdef public Admission _admission
    cdef public object _stats
    cdef public object _on_close
    cdef public object _query_log
    cdef public dict _in_flight
    cdef public object _time
    cdef public object _idle
    cdef public bytearray _buffer
    cdef public bint closed

    @cython.locals(off=Py_ssize_t, n=Py_ssize_t, length=Py_ssize_t)
    cpdef receive(self, data, endpoint=*)
    @cython.locals(pending=_FlowQuery, deadline=double)
    cpdef _query(self, data, endpoint)
    cpdef _resolved(self, _FlowQuery pending, answer, error)
    cpdef _send(self, answer, endpoint, query, str outcome=*, started=*, upstream=*)
