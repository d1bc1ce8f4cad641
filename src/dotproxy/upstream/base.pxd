# C declarations for base.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython

cdef class AnswerSink:
    cpdef resolved(self, answer, error)


cdef class UpstreamStats:
    cdef public Py_ssize_t queries
    cdef public Py_ssize_t answers
    cdef public Py_ssize_t timeouts
    cdef public Py_ssize_t failures
    cdef public Py_ssize_t retries
    cdef public Py_ssize_t dials
    cdef public Py_ssize_t dial_failures
    cdef public Py_ssize_t handshakes
    cdef public Py_ssize_t resumed
    cdef public Py_ssize_t connections_open
    cdef public Py_ssize_t late_answers
    cdef public Py_ssize_t unexpected_answers
    cdef public Py_ssize_t liveness_failures
    cdef public Py_ssize_t probes
    cdef public Py_ssize_t dial_waits_abandoned
    cdef public Py_ssize_t drained_stuck
    cdef public Py_ssize_t closed_idle
    cdef public Py_ssize_t closed_by_server
    cdef public Py_ssize_t closed_reset
    cdef public Py_ssize_t closed_silence
    cdef public Py_ssize_t closed_stuck
    cdef public Py_ssize_t closed_goaway
    cdef public Py_ssize_t closed_network_change
    cdef public Py_ssize_t closed_orphans
    cdef public Py_ssize_t closed_broken
    cdef public Py_ssize_t closed_budget
    cdef public Py_ssize_t closed_shutdown


cdef class Upstream:
    cdef public object url
    cdef public object options
    cdef public object name
    cdef public UpstreamStats stats
    cdef public bint _closed
    cdef public object _submitted
    cdef public object srtt
    cdef public double rttvar

    @cython.locals(srtt=double)
    cpdef _observe_rtt(self, double rtt)


cdef class Backoff:
    cdef public double minimum
    cdef public double maximum
    cdef public int failures
    cdef public double until
    cdef public object error

    cpdef blocking(self, double now)
