# C declarations for stream.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython

from dotproxy.upstream.pool cimport PooledConnection, PooledUpstream


cdef class StreamConnection(PooledConnection):
    @cython.locals(now=double, pool=PooledUpstream, answered=bint)
    cpdef data_received(self, data)


cdef class StreamUpstream(PooledUpstream):
    pass
