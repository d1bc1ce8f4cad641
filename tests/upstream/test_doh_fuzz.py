"""Run the DoH client's atheris harness (tests/fuzz/fuzz_doh.py) for a bounded time, from valid seeds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(TESTS, "fuzz", "fuzz_doh.py")
FUZZ_SECONDS = int(os.environ.get("DOTPROXY_FUZZ_SECONDS", "18"))


def _run(args, tmp_path, src_dir, timeout):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_dir, env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, HARNESS, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def test_seeds_pass_the_harness_checks(src_dir):
    sys.path.insert(0, os.path.dirname(HARNESS))
    try:
        import fuzz_doh
    finally:
        sys.path.remove(os.path.dirname(HARNESS))
    for seed in fuzz_doh.seeds():
        fuzz_doh.one_input(seed)
        fuzz_doh.one_input(b"\x01" + seed[1:])  # one byte per read


def test_doh_fuzz_harness(tmp_path, src_dir):
    try:
        import atheris  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("atheris is not installed (pip install atheris)", pytrace=False)
        pytest.skip("atheris is not installed")
    work = tmp_path / "corpus"
    work.mkdir()
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    assert _run(["--seeds", str(work)], tmp_path, src_dir, 60).returncode == 0
    r = _run([str(work), f"-max_total_time={FUZZ_SECONDS}", "-timeout=10", "-rss_limit_mb=2048", "-max_len=4096",
              f"-artifact_prefix={artifacts}{os.sep}", "-print_final_stats=1"], tmp_path, src_dir, FUZZ_SECONDS + 90)
    out = r.stdout
    crashes = sorted(os.listdir(artifacts))
    for name in crashes:
        out += f"\n{name}: {(artifacts / name).read_bytes().hex()}"
    if r.returncode != 0 or crashes:
        at = out.find("Uncaught Python exception")
        tail = out[at - 200 :][:6000] if at >= 0 else out[-6000:]
        pytest.fail(f"fuzz_doh.py exited {r.returncode} with {len(crashes)} artifact(s):\n{tail}", pytrace=False)
    executed = int(out.split("stat::number_of_executed_units:")[1].split()[0])
    assert executed > 1000, f"the harness ran only {executed} inputs"
