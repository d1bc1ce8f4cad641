"""Run the atheris harness (tests/fuzz/fuzz_wire.py) for a bounded time.

The harness compares the C core with the pure-Python twin on every input, so
one run covers both implementations. It starts from the packet corpus.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(TESTS, "fuzz", "fuzz_wire.py")
CORPUS = os.path.join(TESTS, "corpus")
FUZZ_SECONDS = int(os.environ.get("DOTPROXY_FUZZ_SECONDS", "18"))


def _need_atheris():
    try:
        import atheris  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("atheris is not installed (pip install atheris)", pytrace=False)
        pytest.skip("atheris is not installed")


def test_fuzz_harness(tmp_path, src_dir):
    _need_atheris()
    work = tmp_path / "corpus"
    work.mkdir()
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_dir, env.get("PYTHONPATH", "")) if p)
    cmd = [
        sys.executable,
        HARNESS,
        str(work),  # new inputs go here, not into tests/corpus
        os.path.join(CORPUS, "golden"),
        os.path.join(CORPUS, "malformed"),
        f"-max_total_time={FUZZ_SECONDS}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-max_len=1024",
        f"-artifact_prefix={artifacts}{os.sep}",
        "-print_final_stats=1",
    ]
    r = subprocess.run(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=FUZZ_SECONDS + 90
    )
    out = r.stdout
    crashes = sorted(os.listdir(artifacts))
    for name in crashes:
        with open(artifacts / name, "rb") as f:
            out += f"\n{name}: {f.read().hex()}"
    if r.returncode != 0 or crashes:
        # keep the finding for whoever reads the log
        at = out.find("Uncaught Python exception")
        tail = out[at - 200 :][:6000] if at >= 0 else out[-6000:]
        pytest.fail(f"fuzz_wire.py exited {r.returncode} with {len(crashes)} artifact(s):\n{tail}", pytrace=False)
    assert "Done" in out and "stat::number_of_executed_units" in out, out[-3000:]
    executed = int(out.split("stat::number_of_executed_units:")[1].split()[0])
    assert executed > 1000, f"the harness ran only {executed} inputs"


def test_fuzz_harness_fails_on_disagreement(tmp_path, src_dir):
    """The harness is not a no-op: fed a module pair that disagrees, it fails."""
    _need_atheris()
    # A copy of the harness whose "C" side is a sabotaged twin.
    fake_pkg = tmp_path / "fakes"
    fake_pkg.mkdir()
    (fake_pkg / "sabotaged_wire.py").write_text(
        "from dotproxy._wire_py import *  # noqa\n"
        "from dotproxy import _wire_py as _t\n"
        "def set_id(data, id):\n"
        "    return _t.set_id(data, id ^ 1)\n"
    )
    src = open(HARNESS).read()
    assert "    from dotproxy import _wire as _wire_c\n" in src
    harness = tmp_path / "fuzz_sabotaged.py"
    harness.write_text(src.replace("    from dotproxy import _wire as _wire_c\n", "    import sabotaged_wire as _wire_c\n"))
    seeds = tmp_path / "seeds"
    shutil.copytree(os.path.join(CORPUS, "golden"), seeds)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(fake_pkg), src_dir, env.get("PYTHONPATH", "")) if p)
    r = subprocess.run(
        [sys.executable, str(harness), str(seeds), "-runs=50", f"-artifact_prefix={tmp_path}{os.sep}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "set_id disagrees" in r.stdout + r.stderr
