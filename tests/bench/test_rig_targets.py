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


def _run(tmp_path, name, ours_per_cpu=80_000.0, ours_p99_rate=0.4):
    summary = [
        _row("kresd", "dot", "uniq-max", 30_000, 30_000, 12.0),
        _row("kresd", "dot", "uniq-rate", 2_000, 8_000, 1.1),
        _row("dnsdist", "doh", "uniq-max", 4_000, 20_000, 50.0),
        _row("dotproxy", "dot", "uniq-max", 50_000, ours_per_cpu, 9.0),
        _row("dotproxy", "dot", "uniq-rate", 2_000, 8_000, ours_p99_rate),
        _row("dotproxy", "doh", "uniq-max", 33_000, 50_000, 12.0),
    ]
    path = tmp_path / name
    path.write_text(json.dumps({"meta": {"date": "2026-12-07"}, "summary": summary}))
    return str(path)


def test_all_met(tmp_path, capsys):
    assert rig_targets.main([_run(tmp_path, "a.json")]) == 0
    assert "5/5 met" in capsys.readouterr().out


def test_a_miss_in_any_run_fails(tmp_path, capsys):
    good = _run(tmp_path, "a.json")
    bad = _run(tmp_path, "b.json", ours_per_cpu=70_000.0, ours_p99_rate=1.2)  # 2.33x kresd; p99 over
    assert rig_targets.main([good, bad]) == 1
    out = capsys.readouterr().out
    assert "MISS DoT q/CPU-s   2.33x" in out
    assert "MISS p99 2k/s" in out
    assert "DoT q/CPU-s  met in 1/2, ratio 2.33-2.67x" in out


def test_missing_row(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"meta": {}, "summary": [_row("kresd", "dot", "uniq-max", 1, 1, 1)]}))
    assert rig_targets.main([str(path)]) == 2
    assert "no dotproxy dot uniq-max row" in capsys.readouterr().err


@pytest.mark.parametrize("peer", ["dotproxy (start)"])
def test_peer_named(tmp_path, peer):
    path = tmp_path / "d.json"
    summary = json.loads(pathlib.Path(_run(tmp_path, "e.json")).read_text())["summary"]
    for r in summary:
        if r["peer"] == "dotproxy":
            r["peer"] = peer
    path.write_text(json.dumps({"meta": {}, "summary": summary}))
    assert rig_targets.main([str(path), "--peer", peer]) == 0
    assert rig_targets.main([str(path)]) == 2


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
