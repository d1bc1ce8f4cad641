# C declarations for base.py (compiled by Cython when built; the .py runs as it is otherwise).

cdef class Upstream:
    cdef public object url
    cdef public object options
    cdef public object name
    cdef public object stats
    cdef public bint _closed
    cdef public object _submitted
    cdef public object srtt
    cdef public double rttvar

    cpdef _observe_rtt(self, double rtt)


cdef class Backoff:
    cdef public double minimum
    cdef public double maximum
    cdef public int failures
    cdef public double until
    cdef public object error

    cpdef blocking(self, double now)
