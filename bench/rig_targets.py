"""The engine issue's five rig targets, read from ``../shared/rig`` JSON results.

    python3 bench/rig_targets.py RUN.json [RUN2.json ...] [--peer dotproxy] [--reference NAME]

Each file is one rig run (``run.sh ... --peers kresd,dnsdist,dotproxy --tests uniq-max,uniq-rate
--json RUN.json``); the figures are the rig's medians over ``--repeat``. Per run, against peers
measured in that same run:

- DoT queries per proxy CPU-second >= 2.5x kresd's (uniq-max)
- DoT throughput >= 1.2x kresd's (uniq-max)
- DoT p99 at max load <= kresd's (uniq-max)
- DoT p99 at 2,000 queries/s <= kresd's (uniq-rate)
- DoH throughput >= 5x dnsdist's DoH backend (uniq-max; its queries per CPU-second ratio is
  printed beside it)

``--peer`` names the build to judge: the rig's peer ``dotproxy`` (the default) or a build run with
``--proxy-cmd ... --proxy-name NAME``. ``--reference NAME`` also compares it with another DoT peer of
the same runs, for example ``bench/minimal_forwarder.py`` run as ``--proxy-name minimal``: the
issue's "what is possible here" (one pipelined TLS connection and nothing else), whose own ratio to
kresd moves with the machine like ours. Prints each run's verdicts and, for several runs, how many
met each target and the range of each ratio. Exit status: 0 when every target was met in every run,
1 when one was missed, 2 when a run cannot be judged (a row or figure missing or unusable; the other
runs are still judged).
"""

from __future__ import annotations

import argparse
import json
import sys

TARGETS = (
    # name, (peer transport test field), (rival transport test field), kind, bound
    ("DoT q/CPU-s", ("dot", "uniq-max", "qps_per_proxy_cpu_s"), ("kresd", "dot"), "ratio>=", 2.5),
    ("DoT QPS", ("dot", "uniq-max", "qps"), ("kresd", "dot"), "ratio>=", 1.2),
    ("p99 max", ("dot", "uniq-max", "p99_ms"), ("kresd", "dot"), "ratio<=", 1.0),
    ("p99 2k/s", ("dot", "uniq-rate", "p99_ms"), ("kresd", "dot"), "ratio<=", 1.0),
    ("DoH QPS", ("doh", "uniq-max", "qps"), ("dnsdist", "doh"), "ratio>=", 5.0),
)


class MissingRow(Exception):
    pass


def row(summary: list[dict], peer: str, transport: str, test: str) -> dict:
    for r in summary:
        if r.get("peer") == peer and r.get("transport") == transport and r.get("test") == test:
            return r
    raise MissingRow(f"no {peer} {transport} {test} row")


def judge(summary: list[dict], peer: str) -> list[tuple[str, float, bool, str]]:
    """(target, ratio, met, detail) for each target of one run."""
    out = []
    for name, (transport, test, field), (rival, rival_transport), kind, bound in TARGETS:
        our_row, their_row = row(summary, peer, transport, test), row(summary, rival, rival_transport, test)
        ours, theirs = our_row[field], their_row[field]
        ratio = ours / theirs
        met = ratio >= bound if kind == "ratio>=" else ratio <= bound
        detail = f"{ours:,.2f} vs {theirs:,.2f}" if field == "p99_ms" else f"{ours:,.0f} vs {theirs:,.0f}"
        if name == "DoH QPS":  # its throughput target, with the CPU side beside it
            detail += f"; q/CPU-s {our_row['qps_per_proxy_cpu_s'] / their_row['qps_per_proxy_cpu_s']:.2f}x"
        out.append((name, ratio, met, detail))
    return out


def against_reference(summary: list[dict], peer: str, reference: str) -> str:
    """One line: the reference's DoT figures beside ours, from the same run."""
    ours, ref, kresd = (row(summary, name, "dot", "uniq-max") for name in (peer, reference, "kresd"))
    ours_rate, ref_rate = (row(summary, name, "dot", "uniq-rate") for name in (peer, reference))
    per_cpu = "qps_per_proxy_cpu_s"
    return (f"{reference}: {ref[per_cpu]:,.0f} q/CPU-s ({ref[per_cpu] / kresd[per_cpu]:.2f}x kresd), "
            f"{peer}/{reference} {ours[per_cpu] / ref[per_cpu]:.2f}x; p99 at max {ref['p99_ms']:.2f} ms "
            f"(ours {ours['p99_ms']:.2f}), at 2,000/s {ref_rate['p99_ms']:.2f} ms (ours {ours_rate['p99_ms']:.2f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN.json")
    ap.add_argument("--peer", default="dotproxy", help="the build to judge (default: dotproxy)")
    ap.add_argument("--reference", metavar="NAME", help="another DoT peer of the runs to compare with")
    a = ap.parse_args(argv)
    verdicts = []
    unjudged = 0
    for path in a.runs:
        try:
            with open(path) as f:
                run = json.load(f)
            verdict = judge(run["summary"], a.peer)
            reference = against_reference(run["summary"], a.peer, a.reference) if a.reference else None
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError, MissingRow) as e:
            print(f"{path}: cannot judge: {e if isinstance(e, MissingRow) else repr(e)}", file=sys.stderr)
            unjudged += 1
            continue
        verdicts.append(verdict)
        met = sum(m for _, _, m, _ in verdict)
        date = run.get("meta", {}).get("date", "?")
        print(f"{path} ({date}): {met}/{len(verdict)} met")
        for name, ratio, m, detail in verdict:
            print(f"  {'met ' if m else 'MISS'} {name:12} {ratio:5.2f}x  ({detail})")
        if reference:
            print(f"  {reference}")
    if len(verdicts) > 1:
        print(f"over {len(verdicts)} runs:")
        for i, (name, *_rest) in enumerate(TARGETS):
            ratios = [v[i][1] for v in verdicts]
            print(f"  {name:12} met in {sum(v[i][2] for v in verdicts)}/{len(verdicts)}, "
                  f"ratio {min(ratios):.2f}-{max(ratios):.2f}x")
    if unjudged:
        return 2
    return 0 if all(m for v in verdicts for _, _, m, _ in v) else 1


if __name__ == "__main__":
    sys.exit(main())
