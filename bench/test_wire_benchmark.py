"""pytest-benchmark suite for the packet core: C core vs Python twin vs dnspython.

    python -m pytest bench/test_wire_benchmark.py --benchmark-only --benchmark-group-by=group

Each group holds one operation for the three contenders; pytest-benchmark prints
each one's multiple of the fastest beside its time. ``bench/wire_ratios.py`` turns
the same measurements into verdicts against the targets.
"""

import pytest

from wire_ratios import eight_answer_response, operations, typical_query

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
