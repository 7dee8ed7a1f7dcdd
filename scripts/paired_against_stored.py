"""Paired differences (bootstrap over concepts) of a new ``evaluate`` run's saeuron rows against
every method of a stored run on the same held-out seeds, when only saeuron changed (the
baselines' images are the same, so they need not be generated again)::

    python scripts/paired_against_stored.py NEW/metrics.json STORED/metrics.json [--domain style]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saeuron_core.intervals import paired_bootstrap  # noqa: E402

METRICS = ("average", "UA", "IRA", "CRA", "kept_on_target")


def by_removal(method: dict) -> dict:
    return {str(r["removed"]): r for r in method["rows"]}


def value(row: dict, metric: str) -> float:
    return (row["UA"] + row["IRA"] + row["CRA"]) / 3 if metric == "average" else row[metric]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("new")
    ap.add_argument("stored")
    ap.add_argument("--domain", default="style")
    args = ap.parse_args()
    new = json.loads(Path(args.new).read_text())["methods"]["saeuron"]
    stored = json.loads(Path(args.stored).read_text())["methods"]
    summary = new["summary"][args.domain]
    print(f"new saeuron ({new.get('variant')}), {args.domain}: average {100 * summary['average']:.1f}")
    for metric in METRICS[1:]:
        iv = summary["intervals"][metric]
        print(f"  {metric} {100 * iv['value']:.1f} [{100 * iv['lo']:.1f}, {100 * iv['hi']:.1f}]")
    rows = by_removal(new)
    for name, method in stored.items():
        theirs = by_removal(method)
        shared = [c for c in rows if c in theirs]
        for metric in METRICS:
            d = paired_bootstrap([value(rows[c], metric) for c in shared], [value(theirs[c], metric) for c in shared])
            print(
                f"new saeuron - stored {name} {metric}: {100 * d['mean']:+.1f} "
                f"[{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] ({len(shared)} removals)"
            )


if __name__ == "__main__":
    main()
