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
