# C declarations for dot.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython

from dotproxy._wire cimport AnswerMatch, Query, frame_query, match_answer, parse_query, scan_response
from dotproxy.proto.answers cimport answer_received


@cython.final
@cython.freelist(256)
cdef class _Pending:
    cdef public Query query
    cdef public bint strip_opt
    cdef public double sent_at


cdef class StreamClient:
    cdef public object _pad_block
    cdef public bint _keepalive
    cdef public int _next_id
    cdef public dict _pending
    cdef public set _orphans
    cdef public set _probes
    cdef public bytearray _used
    cdef public list _out
    cdef public bytearray _rbuf
    cdef public Py_ssize_t _rlen
    cdef public object last_received
    cdef public int _keepalive_units
    cdef public AnswerMatch _match
    cdef public Py_ssize_t late_answers
    cdef public Py_ssize_t unexpected_answers
    cdef public Py_ssize_t answered

    @cython.locals(n=int, used=bytearray)
    cpdef _allocate_id(self)
    @cython.locals(n=int)
    cpdef _reserve(self, query_id)
    @cython.locals(n=int)
    cpdef _release(self, query_id)
    @cython.locals(n=Py_ssize_t)
    cpdef list receive_data(self, data, double now)
    @cython.locals(room=Py_ssize_t, grown=bytearray)
    cpdef get_buffer(self, Py_ssize_t sizehint)
    @cython.locals(buf=bytearray, off=Py_ssize_t, n=Py_ssize_t, length=Py_ssize_t, end=Py_ssize_t, rest=Py_ssize_t)
    cpdef list buffer_updated(self, Py_ssize_t nbytes, double now)
    cpdef send_query(self, data, double now, Query query=*)
    cpdef list frames_to_send(self)
    @cython.locals(pending=_Pending, units=int)
    cpdef _answer(self, bytearray data, Py_ssize_t start, Py_ssize_t end, double now, list events)
    cpdef _unmatched(self, message, list events)
