# C declarations for answers.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython

from dotproxy._wire cimport Query, ResponseInfo

@cython.final
@cython.freelist(64)
cdef class AnswerReceived:
    cdef public object query_id  # a Python int: it is a dict key on both sides
    cdef public object data
    cdef public double rtt

@cython.locals(event=AnswerReceived)
cpdef AnswerReceived answer_received(query_id, data, double rtt)
cpdef bint answers(ResponseInfo info, tuple question) except -1
cpdef tuple question_of(Query query)
cpdef for_client(message, client_id, bint strip_opt)
