# cython: language_level=3, boundscheck=False, wraparound=False
"""Batched UDP syscalls on Linux: recvmmsg/sendmmsg (Python twin: ``_udpbatch_py``).

``recv_many(sock, max)`` -> list of ``(bytes, endpoint)``: up to ``max`` (at most
:data:`MAX_BATCH`) datagrams waiting on the non-blocking socket, in one syscall;
``[]`` when none waits. ``send_many(sock, items)`` -> how many of ``items`` (a list
of ``(bytes, endpoint)``) went out, in order, in one syscall; fewer than
``len(items)`` when the socket buffer is full (EAGAIN after some went), 0 when
nothing could go for EAGAIN. Any other error with nothing sent raises ``OSError``
for the first item: the caller drops it and carries on.

An endpoint is the peer's raw ``struct sockaddr`` as bytes (16 bytes for IPv4,
28 for IPv6), an opaque value for the Flow; ``endpoint_to_tuple`` and
``tuple_to_endpoint`` (in ``dotproxy.udpbatch``) convert for logs and tests.
Datagrams are never truncated: every slot holds 65,536 bytes.

``quickack(fd)`` acknowledges at once what was read on TCP socket ``fd`` (TCP_QUICKACK),
for the pooled upstream connections: the socket object uvloop hands out builds a Python
socket per ``setsockopt`` call (2-5% of the proxy's CPU at max load, measured).
"""

import os

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE, PyList_GET_ITEM
from cpython.tuple cimport PyTuple_GET_ITEM
from libc.errno cimport errno, EAGAIN, EINTR
from libc.string cimport memset

cdef extern from "<errno.h>":
    int EWOULDBLOCK

cdef extern from "<sys/uio.h>":
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>":
    ctypedef unsigned int socklen_t
    struct sockaddr_storage:
        pass
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags, void *timeout) nogil
    int sendmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags) nogil
    int MSG_DONTWAIT
    int setsockopt(int fd, int level, int optname, const void *optval, socklen_t optlen) nogil

cdef extern from "<netinet/in.h>":
    int IPPROTO_TCP

cdef extern from "<netinet/tcp.h>":
    int TCP_QUICKACK

DEF _SLOTS = 64
DEF _SLOT_SIZE = 65536

MAX_BATCH = _SLOTS

cdef mmsghdr _rmsgs[_SLOTS]
cdef iovec _riov[_SLOTS]
cdef sockaddr_storage _raddr[_SLOTS]
cdef char _rbuf[_SLOTS][_SLOT_SIZE]
cdef mmsghdr _smsgs[_SLOTS]
cdef iovec _siov[_SLOTS]


cdef inline int _fd(sock) except -1:
    if isinstance(sock, int):
        return sock
    return sock.fileno()


def quickack(int fd):
    """TCP_QUICKACK on ``fd``: the ACK of what was read leaves now. ``OSError`` when it cannot."""
    cdef int one = 1
    if setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one)) != 0:
        raise OSError(errno, os.strerror(errno))


def recv_many(sock, int max=_SLOTS):
    cdef int fd = _fd(sock)
    cdef int n, i
    if max > _SLOTS:
        max = _SLOTS
    if max < 1:
        return []
    for i in range(max):
        _riov[i].iov_base = _rbuf[i]
        _riov[i].iov_len = _SLOT_SIZE
        memset(&_rmsgs[i].msg_hdr, 0, sizeof(msghdr))
        _rmsgs[i].msg_hdr.msg_name = &_raddr[i]
        _rmsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
        _rmsgs[i].msg_hdr.msg_iov = &_riov[i]
        _rmsgs[i].msg_hdr.msg_iovlen = 1
    while True:
        n = recvmmsg(fd, _rmsgs, max, MSG_DONTWAIT, NULL)
        if n >= 0:
            break
        if errno == EINTR:
            continue
        if errno == EAGAIN or errno == EWOULDBLOCK:
            return []
        raise OSError(errno, __import__("os").strerror(errno))
    out = [None] * n
    for i in range(n):
        out[i] = (PyBytes_FromStringAndSize(_rbuf[i], _rmsgs[i].msg_len),
                  PyBytes_FromStringAndSize(<char *>&_raddr[i], _rmsgs[i].msg_hdr.msg_namelen))
    return out


def send_many(sock, list items):
    cdef int fd = _fd(sock)
    cdef Py_ssize_t total = PyList_GET_SIZE(items)
    cdef Py_ssize_t done = 0
    cdef int chunk, i, n
    cdef object item, data, endpoint
    while done < total:
        chunk = <int>min(total - done, _SLOTS)
        for i in range(chunk):
            item = <object>PyList_GET_ITEM(items, done + i)
            data = item[0]
            endpoint = item[1]
            if not isinstance(data, bytes) or not isinstance(endpoint, bytes):
                raise TypeError("send_many wants (bytes, endpoint bytes) pairs")
            memset(&_smsgs[i].msg_hdr, 0, sizeof(msghdr))
            _siov[i].iov_base = PyBytes_AS_STRING(data)
            _siov[i].iov_len = PyBytes_GET_SIZE(data)
            _smsgs[i].msg_hdr.msg_name = PyBytes_AS_STRING(endpoint)
            _smsgs[i].msg_hdr.msg_namelen = <socklen_t>PyBytes_GET_SIZE(endpoint)
            _smsgs[i].msg_hdr.msg_iov = &_siov[i]
            _smsgs[i].msg_hdr.msg_iovlen = 1
        n = sendmmsg(fd, _smsgs, chunk, MSG_DONTWAIT)
        if n < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN or errno == EWOULDBLOCK:
                return done
            if done:
                return done  # the caller comes back and meets the error on that item
            raise OSError(errno, __import__("os").strerror(errno))
        done += n
        if n < chunk:
            return done  # the kernel stopped early (full buffer, or an error it reports next time)
    return done
