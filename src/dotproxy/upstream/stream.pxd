# C declarations for stream.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython

from dotproxy.proto.answers cimport AnswerReceived as CAnswerReceived
from dotproxy.proto.dot cimport StreamClient
from dotproxy.upstream.pool cimport PooledConnection, PooledUpstream, Ticket


cdef class StreamConnection(PooledConnection):
    cdef public StreamClient _stream  # self.core, typed

    cpdef send_query(self, Ticket ticket, double now)
    cpdef bint write_pending(self) except -1
    @cython.locals(now=double)
    cpdef buffer_updated(self, Py_ssize_t nbytes)
    @cython.locals(now=double)
    cpdef data_received(self, data)
    @cython.locals(pool=PooledUpstream, answered=bint, answer=CAnswerReceived)
    cpdef _handle(self, list events, double now)


cdef class StreamUpstream(PooledUpstream):
    pass
