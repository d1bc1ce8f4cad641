# C declarations for stream.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython

from dotproxy.proto.answers cimport AnswerReceived as CAnswerReceived
from dotproxy.proto.dot cimport StreamClient
from dotproxy.upstream.pool cimport PooledConnection, PooledUpstream, Ticket


cdef class StreamConnection(PooledConnection):
    cdef public StreamClient _stream  # self.core, typed

    cpdef int send_query(self, Ticket ticket, double now) except? -1
    @cython.locals(now=double, pool=PooledUpstream, answered=bint, core=StreamClient, answer=CAnswerReceived)
    cpdef data_received(self, data)


cdef class StreamUpstream(PooledUpstream):
    pass
