# C declarations for sockets.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython

from dotproxy.flows.flow cimport DatagramSink, Flow


cdef class BatchUdpListener(DatagramSink):
    cdef public object name
    cdef public object loop
    cdef public object sock
    cdef public int _fd
    cdef public list _out
    cdef public bint _flush_pending
    cdef public bint _writing
    cdef public bint _closing
    cdef public bint _reading
    cdef public Py_ssize_t send_errors
    cdef public Py_ssize_t recv_errors
    cdef public object closed
    cdef public object _time
    cdef public double _last_direct
    cdef public object flow  # whatever open_flow returns: receive() and close()

    @cython.locals(engine_flow=Flow)
    cpdef _readable(self)
    cpdef send(self, data, endpoint)
    @cython.locals(engine_flow=Flow, now=double)
    cpdef bint _at_once(self) except -1
    @cython.locals(n=Py_ssize_t)
    cpdef _flush(self)
