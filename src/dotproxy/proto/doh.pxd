# C declarations for doh.py (compiled by Cython when built; the .py runs as it is otherwise).
cimport cython

from dotproxy._wire cimport Query
from dotproxy.proto.answers cimport answer_received, answers, for_client, question_of

cdef int _DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY
cdef int _WINDOW_UPDATE, _CONTINUATION
cdef int _END_STREAM, _END_HEADERS, _PADDED, _PRIORITY_FLAG
cdef Py_ssize_t _MAX_FRAME


@cython.final
@cython.freelist(256)
cdef class _Request:
    cdef public object query_id  # a Python int: a dict key here and in the connection
    cdef public object client_id
    cdef public tuple question
    cdef public bint strip_opt
    cdef public bytes block
    cdef public bytes body
    cdef public double sent_at
    cdef public object stream_id  # None while queued
    cdef public Py_ssize_t send_window
    cdef public bytes status
    cdef public bytes content_type
    cdef public object content_length
    cdef public list chunks
    cdef public Py_ssize_t received
    cdef public bint failed


@cython.locals(request=_Request)
cpdef _Request _request(query_id, client_id, tuple question, bint strip_opt, bytes block, bytes body,
                        double sent_at)


cdef class DohClient:
    cdef object _upstream
    cdef bytes _method
    cdef bytes _path
    cdef object _pad_block
    cdef Py_ssize_t _max_streams
    cdef bytes _block_head
    cdef bytes _accept
    cdef bytes _post_fields
    cdef dict _post_blocks
    cdef bytearray _out
    cdef bytes _inbuf
    cdef object _decoder
    cdef public Py_ssize_t _next_stream_id  # public: a test starts it near the last ID
    cdef Py_ssize_t _send_window
    cdef Py_ssize_t _recv_window
    cdef Py_ssize_t _recv_unacked
    cdef Py_ssize_t _peer_initial_window
    cdef Py_ssize_t _peer_max_frame
    cdef object _peer_max_streams
    cdef Py_ssize_t _continuing
    cdef list _fragments
    cdef Py_ssize_t _fragments_size
    cdef Py_ssize_t _fragments_count
    cdef bint _fragments_end_stream
    cdef bint _table_size_update
    cdef list _pending_events
    cdef Py_ssize_t _next_query_id
    cdef dict _requests
    cdef dict _streams
    cdef object _queue
    cdef list _blocked
    cdef dict _pings
    cdef bint _settings_seen
    cdef bint _closed
    cdef public bint going_away
    cdef public bint broken
    cdef public object last_received
    cdef public Py_ssize_t late_answers

    cpdef Py_ssize_t current_stream_limit(self) except? -1
    cpdef bint is_accepting(self) except -1
    @cython.locals(request=_Request, out=bytes, block=bytes, body=bytes)
    cpdef send_query(self, data, double now, query=*)
    cpdef data_to_send(self)
    cpdef list receive_data(self, data, double now)
    cdef _break(self, code, str reason, list out)
    @cython.locals(buf=bytes, n=Py_ssize_t, pos=Py_ssize_t, length=Py_ssize_t, ftype=int, flags=int,
                   sid=Py_ssize_t, end=Py_ssize_t, payload=bytes)
    cdef _receive(self, data, double now, list out)
    cdef _check_stream(self, Py_ssize_t sid, str what)
    @cython.locals(flow=Py_ssize_t, request=_Request)
    cdef _on_data(self, Py_ssize_t sid, int flags, bytes payload, double now, list out)
    @cython.locals(start=Py_ssize_t, end=Py_ssize_t)
    cdef _on_headers(self, Py_ssize_t sid, int flags, bytes payload, double now, list out)
    cdef _on_continuation(self, Py_ssize_t sid, int flags, bytes payload, double now, list out)
    @cython.locals(request=_Request)
    cdef _on_header_block(self, Py_ssize_t sid, bytes block, bint end_stream, double now, list out)
    @cython.locals(request=_Request)
    cdef _end_stream(self, Py_ssize_t sid, double now, list out)
    @cython.locals(limit=Py_ssize_t, stream_id=Py_ssize_t, request=_Request, streams=dict, out=bytearray,
                   block=bytes)
    cdef _open_streams(self)
    @cython.locals(body=bytes, size=Py_ssize_t, out=bytearray, chunk=bytes)
    cdef _send_body(self, _Request request)
    @cython.locals(request=_Request)
    cdef _send_blocked(self, list out)
    cdef _reset(self, stream_id, code)
    cdef _fail(self, _Request request, error, list out)
    cdef _check_head(self, _Request request, headers, list out)
    @cython.locals(chunks=list, body=bytes)
    cdef _complete(self, _Request request, double now, list out)
