"""The pure-Python twin of ``_udpbatch``: the same signatures, one recvfrom/sendto per datagram."""

from __future__ import annotations

import errno
import os
import socket
import struct

MAX_BATCH = 64
_SLOT_SIZE = 65536
_FAMILY = struct.Struct("=H")  # sa_family_t, host order


def tuple_to_endpoint(addr) -> bytes:
    """``(host, port)`` or ``(host, port, flowinfo, scope_id)`` -> the raw ``struct sockaddr`` bytes
    (``None``, an unnamed peer such as a socketpair's, -> ``b""``: send to the connected peer)."""
    if not addr:
        return b""
    host = addr[0]
    if ":" in host:
        flowinfo = addr[2] if len(addr) > 2 else 0
        scope_id = addr[3] if len(addr) > 3 else 0
        return (_FAMILY.pack(socket.AF_INET6) + struct.pack("!HI", addr[1], flowinfo)
                + socket.inet_pton(socket.AF_INET6, host) + struct.pack("=I", scope_id))
    return _FAMILY.pack(socket.AF_INET) + struct.pack("!H", addr[1]) + socket.inet_aton(host) + bytes(8)


def endpoint_to_tuple(endpoint: bytes):
    """Raw ``struct sockaddr`` bytes -> ``(host, port)`` (IPv4) or ``(host, port, flowinfo, scope_id)`` (IPv6);
    ``b""`` -> ``None``. ``OSError(EINVAL)`` for anything else, as the kernel would say."""
    if not endpoint:
        return None
    if len(endpoint) < 16:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    family = _FAMILY.unpack_from(endpoint)[0]
    if family == socket.AF_INET6:
        port, flowinfo = struct.unpack_from("!HI", endpoint, 2)
        scope_id = struct.unpack_from("=I", endpoint, 24)[0]
        return socket.inet_ntop(socket.AF_INET6, endpoint[8:24]), port, flowinfo, scope_id
    if family == socket.AF_INET:
        return socket.inet_ntoa(endpoint[4:8]), struct.unpack_from("!H", endpoint, 2)[0]
    raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))


def recv_many(sock: socket.socket, max: int = MAX_BATCH) -> list:
    out = []
    for _ in range(min(max, MAX_BATCH)):
        try:
            data, addr = sock.recvfrom(_SLOT_SIZE)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            if out:
                break  # met again on the next call
            raise
        out.append((data, tuple_to_endpoint(addr)))
    return out


def quickack(fd: int) -> None:
    """TCP_QUICKACK on ``fd`` (Linux; elsewhere a no-op): the ACK of what was read leaves now."""
    option = getattr(socket, "TCP_QUICKACK", None)
    if option is None:
        return
    sock = socket.socket(fileno=fd)  # borrowed: detached below, never closed here
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, 1)
    finally:
        sock.detach()


def send_many(sock: socket.socket, items: list) -> int:
    done = 0
    for data, endpoint in items:
        if not isinstance(data, bytes) or not isinstance(endpoint, bytes):
            raise TypeError("send_many wants (bytes, endpoint bytes) pairs")
        try:
            if endpoint:
                sock.sendto(data, endpoint_to_tuple(endpoint))
            else:
                sock.send(data)
        except (BlockingIOError, InterruptedError):
            return done
        except OSError:
            if done:
                return done  # met again on the next call
            raise
        done += 1
    return done
