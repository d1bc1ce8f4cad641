"""pytest-benchmark suite for the packet core: C core vs Python twin vs dnspython.

    python -m pytest bench/test_wire_benchmark.py --benchmark-only --benchmark-group-by=group

Each group holds one operation for the three contenders; pytest-benchmark prints
each one's multiple of the fastest beside its time. ``bench/wire_ratios.py`` turns
the same measurements into verdicts against the targets.
"""

import dns.message
import dns.rrset
import pytest

from wire_ratios import _wire_c, _wire_py, eight_answer_response, operations, typical_query

QUERY = typical_query()
RESPONSE = eight_answer_response(QUERY)
OPS = operations(QUERY, RESPONSE)


@pytest.mark.parametrize(
    ("operation", "contender"),
    [(op, who) for op, contenders in OPS.items() for who in contenders],
)
def test_wire(benchmark, operation, contender):
    benchmark.group = operation
    benchmark(OPS[operation][contender])


# ---------------------------------------------------------------- the DoT answer path
#
#     python -m pytest bench/test_wire_benchmark.py -k match --benchmark-only
#
# match_answer() against the composition it replaces in StreamClient._answer: scan_response,
# the question compared as a tuple, set_id(strip_opt=True) (a client that sent no EDNS).


def typical_answer() -> tuple[bytes, bytes]:
    """(query, answer): an A answer without OPT, about 100 bytes (a CNAME to a CDN, two addresses)."""
    q = dns.message.make_query("WwW.Example.COM", "A", use_edns=False)
    q.id = 0x1234
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("WwW.Example.COM.", 300, "IN", "CNAME", "www.example.com.cdn.net."))
    r.answer.append(dns.rrset.from_text("www.example.com.cdn.net.", 60, "IN", "A", "192.0.2.1", "192.0.2.2"))
    return q.to_wire(), r.to_wire()


def _answer_paths():
    query_wire, answer = typical_answer()
    assert 90 <= len(answer) <= 110, len(answer)
    paths = {}
    for name, mod in (("c", _wire_c), ("py", _wire_py)):
        if mod is None:
            continue
        query = mod.parse_query(b"\xab\xcd" + query_wire[2:])  # the client's ID
        question = (query.qname_wire, query.qtype, query.qclass)
        match = mod.AnswerMatch()
        end = len(answer)

        def composition(mod=mod, query=query, question=question):
            info = mod.scan_response(answer)
            if (info.qname_wire, info.qtype, info.qclass) != question:
                return None
            return mod.set_id(answer, query.id, strip_opt=True)

        def fused(mod=mod, query=query, match=match):
            return mod.match_answer(answer, 0, end, query, True, match)

        assert fused() == composition() is not None
        paths[f"{name} match_answer"] = fused
        paths[f"{name} composition"] = composition
    return paths


ANSWER_PATHS = _answer_paths()


@pytest.mark.parametrize("contender", list(ANSWER_PATHS))
def test_match_answer(benchmark, contender):
    benchmark.group = "match_answer (~100 B A answer, no OPT)"
    # 100 calls a round: one call of the C core is close to the timer's own cost.
    benchmark.pedantic(ANSWER_PATHS[contender], iterations=100, rounds=1000 if contender.startswith("py") else 5000,
                       warmup_rounds=10)
