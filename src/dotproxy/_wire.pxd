# The C wire core's types, for the compiled modules of the per-query path (they read these
# fields in C); the attributes are declared here, the methods in _wire.pyx.


cdef class Edns:
    cdef readonly int udp_size
    cdef readonly bint do
    cdef readonly int version
    cdef list _options  # None until read: built from _message[_rdata:_rdend]
    cdef bytes _message
    cdef Py_ssize_t _rdata
    cdef Py_ssize_t _rdend


cdef class Query:
    cdef readonly int id
    cdef readonly int opcode
    cdef readonly bint rd
    cdef readonly bint cd
    cdef readonly bint ad
    cdef readonly bytes qname_wire
    cdef readonly int qtype
    cdef readonly int qclass
    cdef readonly object edns
    cdef object _qname


cdef class ResponseInfo:
    cdef readonly int id
    cdef readonly int rcode
    cdef readonly bint tc
    cdef readonly bint aa
    cdef readonly bint ra
    cdef readonly bint ad
    cdef object _qname
    cdef readonly object qname_wire
    cdef readonly object qtype
    cdef readonly object qclass
    cdef readonly int qdcount
    cdef readonly int ancount
    cdef readonly int nscount
    cdef readonly int arcount
    cdef readonly object min_ttl
    cdef readonly object edns


cdef class AnswerMatch:
    cdef public int keepalive  # set by match_answer(): edns-tcp-keepalive in units of 100 ms, or -1


# Called on every query and answer by the compiled modules (C calls, no module attribute lookup).
cpdef parse_query(data)
cpdef scan_response(data)
cpdef match_answer(message, Py_ssize_t start, Py_ssize_t end, Query query, bint strip_opt, AnswerMatch match)
cpdef bytes set_id(data, id, bint strip_opt=*)
cpdef bytes frame_query(query, id, pad_block=*, bint keepalive=*)
