"""``recsys data stats NAME|PATH``: dataset statistics after the protocol's filtering."""

from __future__ import annotations

import argparse
import json

from recsys.data.datasets import NAMES, load_dataset


def main(argv: list[str]) -> None:
    """Print users, items, interactions, density and popularity skew of a dataset."""
    p = argparse.ArgumentParser(prog="recsys data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stats", help="statistics after filtering (ratings >= 3, 10-core)")
    s.add_argument("name", help="a named dataset (" + ", ".join(NAMES) + ") or a .csv / .tsv / .parquet file")
    s.add_argument("--root", default=None, help="data folder (default $RECSYS_DATA)")
    s.add_argument("--threshold", type=float, default=3.0)
    s.add_argument("--k-core", type=int, default=10)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    data = load_dataset(a.name, a.root, rating_threshold=a.threshold, k_core=a.k_core)
    st = data.stats()
    if a.json:
        print(json.dumps(st, indent=2))
        return
    print("| statistic | value |\n|---|---|")
    for k, v in st.items():
        print(f"| {k} | {v:,.4f} |" if isinstance(v, float) else
              f"| {k} | {v:,} |" if isinstance(v, int) else f"| {k} | {v} |")
