"""What every transport checks of an answer before a client sees it."""

from __future__ import annotations

from dotproxy import wire
from dotproxy.errors import NOERROR


class AnswerReceived:
    """The event of every transport core: the answer to query ``query_id``, as the client must
    see it (its ID restored), and the round trip it took."""

    __slots__ = ("query_id", "data", "rtt")

    def __init__(self, query_id: int, data: bytes, rtt: float) -> None:
        self.query_id = query_id
        self.data = data
        self.rtt = rtt

    def __eq__(self, other: object) -> bool:
        if type(other) is not AnswerReceived:
            return NotImplemented
        return (self.query_id, self.data, self.rtt) == (other.query_id, other.data, other.rtt)

    def __repr__(self) -> str:
        return f"AnswerReceived(query_id={self.query_id!r}, data={self.data!r}, rtt={self.rtt!r})"


def answer_received(query_id: int, data: bytes, rtt: float) -> AnswerReceived:
    """``AnswerReceived(query_id, data, rtt)`` built field by field: a transport core makes one
    per answer, and when compiled this skips the argument parsing of a constructor call."""
    event = AnswerReceived.__new__(AnswerReceived)
    event.query_id = query_id
    event.data = data
    event.rtt = rtt
    return event


def question_of(query: wire.Query) -> tuple:
    """The question an answer must repeat: (lower-cased name, type, class)."""
    return (query.qname_wire, query.qtype, query.qclass)


def answers(info: wire.ResponseInfo, question: tuple) -> bool:
    """Whether a scanned response answers ``question``: it repeats it (any case), or it is
    an error answer without a question (a FORMERR or NOTIMP may omit it)."""
    if info.qdcount:
        return (info.qname_wire, info.qtype, info.qclass) == question
    return info.rcode != NOERROR


def for_client(message: bytes, client_id: int, strip_opt: bool) -> bytes:
    """The answer as the client must see it: its own ID, and no OPT if it sent none."""
    return wire.set_id(message, client_id, strip_opt=strip_opt)
