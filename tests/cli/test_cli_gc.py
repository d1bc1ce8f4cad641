"""``dotproxy serve`` keeps the cycle collector off the hot path (see ``tune_gc``)."""

import gc

from dotproxy.cli.main import GC_GEN0_THRESHOLD, tune_gc


def test_tune_gc_freezes_startup_objects_and_raises_the_gen0_threshold():
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
        assert gc.isenabled()  # cycles from rare paths are still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_tune_malloc_fixes_glibc_thresholds_in_a_serving_process():
    """``serve`` fixes glibc's malloc thresholds (see ``tune_malloc``); run in a child: it changes the
    process's allocator for good."""
    import platform
    import subprocess
    import sys

    import pytest

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    out = subprocess.run([sys.executable, "-c", "from dotproxy.cli.main import tune_malloc; print(tune_malloc())"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
