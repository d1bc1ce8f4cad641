# C declarations for doh.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython

from dotproxy.proto.answers cimport AnswerReceived as CAnswerReceived
from dotproxy.proto.doh cimport DohClient
from dotproxy.upstream.pool cimport PooledConnection, PooledUpstream, Ticket


cdef class DohConnection(PooledConnection):
    cdef readonly DohClient _doh  # self.core, typed (set once, with it)

    cpdef send_query(self, Ticket ticket, double now)
    cpdef bint usable(self) except -1
    @cython.locals(now=double, pool=PooledUpstream, answered=bint, answer=CAnswerReceived)
    cpdef data_received(self, data)


cdef class DohUpstream(PooledUpstream):
    cdef public double _refused_until
    cdef public object _refusal

    @cython.locals(core=DohClient, limit=Py_ssize_t)
    cpdef capacity(self, PooledConnection conn)
    cpdef refusing(self, double now)
