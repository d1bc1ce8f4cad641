"""dotproxy.wire picks the C core, or the twin when told to."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

FUNCS = ["parse_query", "scan_response", "match_answer", "set_id", "frame_query", "age_ttls", "cache_key",
         "make_error", "truncate", "pad", "strip_opt"]
CLASSES = ["Query", "Edns", "ResponseInfo", "AnswerMatch"]

PROBE = """
import json, dotproxy.wire as w, dotproxy._wire_py as py
try:
    import dotproxy._wire as c
except ImportError:
    c = None
impl = {"c": c, "py": py}[w.IMPLEMENTATION]
names = %r
print(json.dumps({
    "impl": w.IMPLEMENTATION,
    "same": all(getattr(w, n) is getattr(impl, n) for n in names),
    "module_of_parse_query": getattr(w.parse_query, "__module__", None),
    "wire_error": w.WireError.__module__ + "." + w.WireError.__name__,
}))
""" % (FUNCS + CLASSES,)


def _probe(src_dir, **env_extra):
    env = {k: v for k, v in os.environ.items() if k != "DOTPROXY_PURE_PYTHON"}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_dir, env.get("PYTHONPATH", "")) if p)
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_default_is_c(src_dir):
    try:
        import dotproxy._wire  # noqa: F401
    except ImportError as err:
        pytest.fail(f"dotproxy._wire cannot be imported ({err!r}); build it with: pip install -e .", pytrace=False)
    got = _probe(src_dir)
    assert got["impl"] == "c"
    assert got["same"]
    assert got["wire_error"] == "dotproxy.errors.WireError"


def test_in_process_facade_is_c():
    import dotproxy.wire as w

    if os.environ.get("DOTPROXY_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("this run forces the twin")
    assert w.IMPLEMENTATION == "c", "dotproxy._wire is not built: pip install -e ."
    import dotproxy._wire as c

    for n in FUNCS + CLASSES:
        assert getattr(w, n) is getattr(c, n), n
    assert w.OPT_PADDING == 12 and w.OPT_EDE == 15


def test_pure_python_forced(src_dir):
    got = _probe(src_dir, DOTPROXY_PURE_PYTHON="1")
    assert got["impl"] == "py"
    assert got["same"]
    assert got["module_of_parse_query"] == "dotproxy._wire_py"


def test_zero_means_not_forced(src_dir):
    try:
        import dotproxy._wire  # noqa: F401
    except ImportError:
        pytest.fail("dotproxy._wire cannot be imported; build it with: pip install -e .", pytrace=False)
    assert _probe(src_dir, DOTPROXY_PURE_PYTHON="0")["impl"] == "c"
    assert _probe(src_dir, DOTPROXY_PURE_PYTHON="")["impl"] == "c"


def test_facade_works_on_both(src_dir):
    """A query through the façade gives the same answer whichever core is under it."""
    code = (
        "import dotproxy.wire as w, sys;"
        "q = bytes.fromhex('12340100000100000000000003777777076578616d706c6503636f6d0000010001');"
        "p = w.parse_query(q);"
        "print(w.IMPLEMENTATION, p.qname, p.qtype, w.make_error(q, 2).hex(), w.cache_key(q).hex())"
    )
    outs = {}
    for forced in ("0", "1"):
        env = dict(os.environ, DOTPROXY_PURE_PYTHON=forced)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src_dir, env.get("PYTHONPATH", "")) if p)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        impl, rest = r.stdout.split(" ", 1)
        outs[impl] = rest
    assert set(outs) == {"c", "py"}
    assert outs["c"] == outs["py"]
    assert outs["py"].startswith("www.example.com 1 ")
