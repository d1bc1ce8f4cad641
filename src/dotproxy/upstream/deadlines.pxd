# C declarations for deadlines.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython


cdef class DeadlineEntry:
    cdef public double deadline
    cdef public DeadlineEntry _prev
    cdef public DeadlineEntry _next
    cdef public bint _listed

    cpdef expired(self)


cdef class Deadlines:
    cdef public object loop
    cdef public DeadlineEntry _head
    cdef public DeadlineEntry _tail
    cdef public object _timer
    cdef public double _timer_at
    cdef public Py_ssize_t count

    @cython.locals(after=DeadlineEntry, deadline=double)
    cpdef add(self, DeadlineEntry entry)
    @cython.locals(prev=DeadlineEntry, nxt=DeadlineEntry)
    cpdef remove(self, DeadlineEntry entry)
    cpdef _arm(self, double deadline)
