# C declarations for dot.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython

from dotproxy._wire cimport Query, ResponseInfo, parse_query, scan_response
from dotproxy.proto.answers cimport answers, for_client, question_of


@cython.final
@cython.freelist(256)
cdef class _Pending:
    cdef public object client_id
    cdef public tuple question
    cdef public bint strip_opt
    cdef public double sent_at


cdef class StreamClient:
    cdef public object _pad_block
    cdef public bint _keepalive
    cdef public int _next_id
    cdef public dict _pending
    cdef public set _orphans
    cdef public set _probes
    cdef public list _out
    cdef public bytearray _in
    cdef public object last_received
    cdef public int _keepalive_units
    cdef public Py_ssize_t late_answers
    cdef public Py_ssize_t unexpected_answers
    cdef public Py_ssize_t answered

    @cython.locals(query_id=int)
    cpdef int _allocate_id(self) except? -1
    @cython.locals(off=Py_ssize_t, n=Py_ssize_t, length=Py_ssize_t, end=Py_ssize_t)
    cpdef list receive_data(self, data, double now)
    cpdef int send_query(self, data, double now, Query query=*) except? -1
    @cython.locals(pending=_Pending, info=ResponseInfo, wire_id=int)
    cpdef _answer(self, message, double now, list events)
