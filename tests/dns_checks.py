"""Answer checks shared by the suites that go through the engine (checked with dnspython, the oracle)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from dotproxy.testing import ANSWER_A


def check_answer(answer: bytes, query: bytes) -> dns.message.Message:
    """``answer`` answers ``query``: same ID and question, NOERROR, the test upstream's A record."""
    q = dns.message.from_wire(query)
    r = dns.message.from_wire(answer)
    assert r.id == q.id, (r.id, q.id)
    assert r.flags & dns.flags.QR
    assert r.question == q.question, (r.question, q.question)
    assert r.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(r.rcode())
    if q.question[0].rdtype == dns.rdatatype.A:
        assert [rd.address for rrset in r.answer for rd in rrset] == [ANSWER_A]
    return r
