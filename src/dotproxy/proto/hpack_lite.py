"""HPACK (RFC 7541) for a DoH client: a full decoder, and the few encoder pieces requests need.

Requests are encoded without touching any dynamic table (indexed static fields and
literals without indexing), so the only HPACK state on our side is the decoder's.

The decoder keeps the dynamic table (insertions, evictions, size updates up to the
limit we advertised), decodes integers and strings (Huffman through a 4-bit state
machine), and remembers two things a DoH server repeats on every answer:

* Huffman strings, by their encoded bytes (a pure function, always valid);
* whole header blocks that left the dynamic table unchanged, by their bytes, valid
  only until the next change to the table: the cache is emptied on every insertion,
  eviction or size update, because indices into the table then mean other entries.

Malformed input raises :class:`HpackError` (a ``ValueError``) and nothing else.
"""

from __future__ import annotations

from collections import deque

from dotproxy.proto._hpack_tables import HUFFMAN_CODES, STATIC_TABLE

_STATIC_COUNT = len(STATIC_TABLE)  # 61
_CACHE_LIMIT = 256  # header blocks remembered; answers from one server repeat a handful
_HUFFMAN_CACHE_LIMIT = 1024
# Only small things are remembered: real answer heads are tens of bytes, and a hostile server
# must not be able to park hundreds of megabytes in a cache (1024 x 64 KiB strings).
_CACHED_BLOCK_MAX = 1024
_CACHED_STRING_MAX = 256


class HpackError(ValueError):
    """A header block that is not valid HPACK (an HTTP/2 COMPRESSION_ERROR)."""


# ------------------------------------------------------------------------ Huffman


def _build_huffman_fsm():
    """A 4-bit-at-a-time decoder: the states are the 256 inner nodes of the code tree.

    ``NEXT[state << 4 | nibble]`` is the state after the nibble, ``EMIT[...]`` the
    symbol completed on the way (-1: none; -2: EOS, which a string must not contain;
    the shortest code is 5 bits, so a nibble completes at most one symbol).
    ``ACCEPT[state]``: a string may end here (up to 7 bits of EOS-prefix padding).
    """
    # Inner nodes: [child0, child1]; a child is ("leaf", symbol) or an inner node index.
    nodes = [[None, None]]
    depth = [0]
    ones = [True]  # the path from the root is all 1 bits
    for sym, (code, length) in enumerate(HUFFMAN_CODES):
        node = 0
        for i in range(length - 1, -1, -1):
            bit = (code >> i) & 1
            if i == 0:
                nodes[node][bit] = ("leaf", sym)
            else:
                child = nodes[node][bit]
                if child is None:
                    child = len(nodes)
                    nodes.append([None, None])
                    depth.append(depth[node] + 1)
                    ones.append(ones[node] and bit == 1)
                    nodes[node][bit] = child
                node = child
    nxt = [0] * (len(nodes) * 16)
    emit = [-1] * (len(nodes) * 16)
    for state in range(len(nodes)):
        for nibble in range(16):
            node, sym = state, -1
            for i in range(3, -1, -1):
                child = nodes[node][(nibble >> i) & 1]
                if isinstance(child, tuple):
                    sym = -2 if child[1] == 256 or sym != -1 else child[1]
                    node = 0
                else:
                    node = child
            nxt[state << 4 | nibble] = node
            emit[state << 4 | nibble] = sym
    accept = [depth[s] <= 7 and ones[s] for s in range(len(nodes))]
    return nxt, emit, accept


_FSM = None


def huffman_decode(data: bytes) -> bytes:
    global _FSM
    if _FSM is None:
        _FSM = _build_huffman_fsm()
    nxt, emit, accept = _FSM
    out = bytearray()
    state = 0
    for b in data:
        i = state << 4 | b >> 4
        sym = emit[i]
        if sym >= 0:
            out.append(sym)
        elif sym == -2:
            raise HpackError("EOS in a Huffman string")
        i = nxt[i] << 4 | (b & 15)
        sym = emit[i]
        if sym >= 0:
            out.append(sym)
        elif sym == -2:
            raise HpackError("EOS in a Huffman string")
        state = nxt[i]
    if not accept[state]:
        raise HpackError("bad Huffman padding")
    return bytes(out)


def huffman_encode(data: bytes) -> bytes:
    acc, bits = 0, 0
    for b in data:
        code, length = HUFFMAN_CODES[b]
        acc = acc << length | code
        bits += length
    pad = -bits % 8
    acc = acc << pad | ((1 << pad) - 1)
    return acc.to_bytes((bits + pad) // 8, "big")


# ------------------------------------------------------------------------ encoding (requests)


def encode_integer(value: int, prefix_bits: int, first_byte_flags: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte_flags | value,))
    out = bytearray((first_byte_flags | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_string(value: bytes, huffman: bool = False) -> bytes:
    if huffman:
        value = huffman_encode(value)
        return encode_integer(len(value), 7, 0x80) + value
    return encode_integer(len(value), 7) + value


def encode_indexed(index: int) -> bytes:
    """A field taken whole from the table (we only ever name static entries)."""
    return encode_integer(index, 7, 0x80)


def encode_literal(name: bytes | int, value: bytes, huffman: bool = False) -> bytes:
    """A literal field without indexing: the peer's table is left as it was.

    ``name`` is a static-table index or the name itself.
    """
    if isinstance(name, int):
        return encode_integer(name, 4) + encode_string(value, huffman)
    return b"\x00" + encode_string(name, huffman) + encode_string(value, huffman)


def static_index(name: bytes, value: bytes | None = None) -> int:
    """The static-table index of ``(name, value)``, or of ``name`` when ``value`` is None; 0 if absent."""
    for i, (n, v) in enumerate(STATIC_TABLE, 1):
        if n == name and (value is None or v == value):
            return i
    return 0


# ------------------------------------------------------------------------ decoding (responses)


class Decoder:
    """The receiving half of one connection's HPACK context."""

    def __init__(self, max_table_size: int = 4096, max_header_list_size: int = 65536) -> None:
        self._table: deque[tuple[bytes, bytes]] = deque()  # newest first: index 62 is _table[0]
        self._size = 0
        self._limit = max_table_size  # what we allowed in SETTINGS_HEADER_TABLE_SIZE
        self._max = max_table_size  # what the encoder chose, <= _limit
        self._max_list = max_header_list_size
        self._blocks: dict[bytes, tuple] = {}
        self._strings: dict[bytes, bytes] = {}

    @property
    def table_size(self) -> int:
        return self._size

    @property
    def max_table_size(self) -> int:
        return self._max

    def table(self) -> list[tuple[bytes, bytes]]:
        return list(self._table)

    def decode(self, block: bytes) -> tuple:
        """The header list of one complete header block, as a tuple of (name, value) bytes pairs."""
        headers = self._blocks.get(block)
        if headers is not None:
            return headers
        headers, changed = self._decode(block)
        if changed:
            self._blocks.clear()
        elif len(block) <= _CACHED_BLOCK_MAX:
            if len(self._blocks) >= _CACHE_LIMIT:
                self._blocks.clear()
            self._blocks[block] = headers
        return headers

    def _decode(self, block: bytes):
        headers = []
        n = len(block)
        pos = 0
        changed = False
        fields = False
        list_size = 0
        while pos < n:
            b = block[pos]
            pos += 1
            if b & 0x80:  # indexed field
                index = b & 0x7F
                if index == 0x7F:
                    index, pos = _integer(block, pos, index)
                header = self._entry(index)
            elif b & 0x40:  # literal with incremental indexing
                index = b & 0x3F
                if index == 0x3F:
                    index, pos = _integer(block, pos, index)
                header, pos = self._literal(block, pos, index)
                self._insert(*header)
                changed = True
            elif b & 0x20:  # dynamic table size update: only before the first field
                if fields:
                    raise HpackError("table size update after a header field")
                size = b & 0x1F
                if size == 0x1F:
                    size, pos = _integer(block, pos, size)
                if size > self._limit:
                    raise HpackError(f"table size update to {size}, above the {self._limit} allowed")
                self._max = size
                self._evict(0)
                changed = True
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                index = b & 0x0F
                if index == 0x0F:
                    index, pos = _integer(block, pos, index)
                header, pos = self._literal(block, pos, index)
            fields = True
            list_size += len(header[0]) + len(header[1]) + 32
            if list_size > self._max_list:
                raise HpackError("header list too long")
            headers.append(header)
        return tuple(headers), changed

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_COUNT:
            return STATIC_TABLE[index - 1]
        index -= _STATIC_COUNT + 1
        if index < 0 or index >= len(self._table):
            raise HpackError(f"index {index + _STATIC_COUNT + 1} is in neither table")
        return self._table[index]

    def _literal(self, block: bytes, pos: int, index: int) -> tuple[tuple[bytes, bytes], int]:
        """A literal field's name (from the table when ``index``, else a string) and value."""
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = self._string(block, pos)
        value, pos = self._string(block, pos)
        return (name, value), pos

    def _string(self, block: bytes, pos: int) -> tuple[bytes, int]:
        if pos >= len(block):
            raise HpackError("header block ends before a string")
        b = block[pos]
        pos += 1
        length = b & 0x7F
        if length == 0x7F:
            length, pos = _integer(block, pos, length)
        end = pos + length
        if end > len(block):
            raise HpackError("string runs past the end of the header block")
        value = block[pos:end]
        if b & 0x80:
            decoded = self._strings.get(value)
            if decoded is None:
                decoded = huffman_decode(value)
                if length <= _CACHED_STRING_MAX:
                    if len(self._strings) >= _HUFFMAN_CACHE_LIMIT:
                        self._strings.clear()
                    self._strings[value] = decoded
            value = decoded
        return value, end

    def _insert(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        if size > self._max:  # RFC 7541 section 4.4: the table empties, the entry is not added
            self._table.clear()
            self._size = 0
            return
        self._evict(size)
        self._table.appendleft((name, value))
        self._size += size

    def _evict(self, room: int) -> None:
        table = self._table
        while table and self._size + room > self._max:
            name, value = table.pop()
            self._size -= len(name) + len(value) + 32


def _integer(block: bytes, pos: int, value: int) -> tuple[int, int]:
    """The continuation bytes of an integer whose prefix was all ones (``value``)."""
    shift = 0
    n = len(block)
    while True:
        if pos >= n:
            raise HpackError("header block ends inside an integer")
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("integer too large")
