"""bench/rig_targets.py judges rig runs against the engine issue's targets."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "rig_targets.py"
_spec = importlib.util.spec_from_file_location("rig_targets", _PATH)
rig_targets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rig_targets)


def _row(peer, transport, test, qps, per_cpu, p99):
    return dict(peer=peer, transport=transport, test=test, qps=qps, qps_per_proxy_cpu_s=per_cpu, p99_ms=p99)


# kresd: 30,000 q/s at 30,000 q/CPU-s, p99 12 ms at max and 1.1 ms at 2,000/s; dnsdist DoH 4,000 q/s.
OURS = dict(dot_qps=50_000, dot_per_cpu=80_000.0, p99_max=9.0, p99_rate=0.4, doh_qps=33_000)


def _run(tmp_path, name, peer="dotproxy", **ours):
    o = {**OURS, **ours}
    summary = [
        _row("kresd", "dot", "uniq-max", 30_000, 30_000, 12.0),
        _row("kresd", "dot", "uniq-rate", 2_000, 8_000, 1.1),
        _row("dnsdist", "doh", "uniq-max", 4_000, 20_000, 50.0),
        _row(peer, "dot", "uniq-max", o["dot_qps"], o["dot_per_cpu"], o["p99_max"]),
        _row(peer, "dot", "uniq-rate", 2_000, 8_000, o["p99_rate"]),
        _row(peer, "doh", "uniq-max", o["doh_qps"], 50_000, 12.0),
    ]
    path = tmp_path / name
    path.write_text(json.dumps({"meta": {"date": "2026-12-07"}, "summary": summary}))
    return str(path)


def test_all_met(tmp_path, capsys):
    assert rig_targets.main([_run(tmp_path, "a.json")]) == 0
    assert "5/5 met" in capsys.readouterr().out


@pytest.mark.parametrize("field, value, line", [
    ("dot_per_cpu", 74_700.0, "MISS DoT q/CPU-s   2.49x"),
    ("dot_qps", 35_700, "MISS DoT QPS       1.19x"),
    ("p99_max", 12.1, "MISS p99 max       1.01x"),
    ("p99_rate", 1.2, "MISS p99 2k/s      1.09x"),
    ("doh_qps", 19_900, "MISS DoH QPS       4.97x"),
])
def test_each_target_can_miss(tmp_path, capsys, field, value, line):
    assert rig_targets.main([_run(tmp_path, "m.json", **{field: value})]) == 1
    out = capsys.readouterr().out
    assert "4/5 met" in out and line in out


def test_the_bounds_are_met(tmp_path, capsys):
    at_bounds = _run(tmp_path, "b.json", dot_per_cpu=75_000.0, dot_qps=36_000, p99_max=12.0, p99_rate=1.1,
                     doh_qps=20_000)
    assert rig_targets.main([at_bounds]) == 0


def test_a_miss_in_any_run_fails(tmp_path, capsys):
    good = _run(tmp_path, "a.json")
    bad = _run(tmp_path, "b.json", dot_per_cpu=70_000.0, p99_rate=1.2)  # 2.33x kresd; p99 over
    assert rig_targets.main([good, bad]) == 1
    out = capsys.readouterr().out
    assert "MISS DoT q/CPU-s   2.33x" in out
    assert "MISS p99 2k/s" in out
    assert "DoT q/CPU-s  met in 1/2, ratio 2.33-2.67x" in out


def test_a_run_that_cannot_be_judged(tmp_path, capsys):
    missing_row = tmp_path / "c.json"
    missing_row.write_text(json.dumps({"meta": {}, "summary": [_row("kresd", "dot", "uniq-max", 1, 1, 1)]}))
    no_summary = tmp_path / "d.json"
    no_summary.write_text(json.dumps({"meta": {}}))
    zero = pathlib.Path(_run(tmp_path, "z.json"))
    run = json.loads(zero.read_text())
    run["summary"][0]["qps_per_proxy_cpu_s"] = 0
    zero.write_text(json.dumps(run))
    good = _run(tmp_path, "a.json")
    assert rig_targets.main([str(missing_row), str(no_summary), str(zero), good]) == 2
    captured = capsys.readouterr()
    assert "c.json: cannot judge: no dotproxy dot uniq-max row" in captured.err
    assert "d.json: cannot judge: KeyError('summary')" in captured.err
    assert "z.json: cannot judge: ZeroDivisionError" in captured.err
    assert "a.json (2026-12-07): 5/5 met" in captured.out  # the others are still judged


def test_peer_named(tmp_path):
    path = _run(tmp_path, "e.json", peer="dotproxy (start)")
    assert rig_targets.main([path, "--peer", "dotproxy (start)"]) == 0
    assert rig_targets.main([path]) == 2


def test_reference_peer_in_the_same_run(tmp_path, capsys):
    path = pathlib.Path(_run(tmp_path, "f.json"))
    run = json.loads(path.read_text())
    run["summary"] += [_row("minimal", "dot", "uniq-max", 28_000, 64_000, 48.0),
                       _row("minimal", "dot", "uniq-rate", 2_000, 7_500, 1.3)]
    path.write_text(json.dumps(run))
    assert rig_targets.main([str(path), "--reference", "minimal"]) == 0
    out = capsys.readouterr().out
    assert "minimal: 64,000 q/CPU-s (2.13x kresd), dotproxy/minimal 1.25x; p99 at max 48.00 ms (ours 9.00)" in out
    assert rig_targets.main([str(path), "--reference", "absent"]) == 2
