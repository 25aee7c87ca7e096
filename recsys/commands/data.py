"""``recsys data stats SOURCE``: dataset statistics after the protocol's filtering;
``recsys data check SOURCE``: every problem of your data files in one pass (writes nothing).

SOURCE: a named dataset (stats only), a .csv / .tsv / .parquet interaction file (usual column
names), or a YAML file holding a data source (a fit config with ``data: {source: ...}``,
``source: ...`` at top level, or the source mapping itself). Relative paths inside the YAML
are read from the working directory, as ``recsys fit`` reads them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recsys.data.check import check_path, read_source_yaml, summary
from recsys.data.datasets import NAMES, load_dataset
from recsys.data.source import load_source
from recsys.errors import ConfigError

SOURCE_HELP = ("a named dataset (" + ", ".join(NAMES) + "), a .csv / .tsv / .parquet interaction file, or a "
               ".yaml data source (data: {source: ...}, source: ..., or the mapping itself; its relative paths "
               "are read from the working directory)")


def _is_yaml(source: str) -> bool:
    return Path(source).suffix.lower() in (".yaml", ".yml")


def stats(a: argparse.Namespace) -> None:
    """Print users, items, interactions, density and popularity skew of a dataset."""
    if _is_yaml(a.source):
        if a.threshold is not None or a.k_core is not None:
            raise ConfigError(f"--threshold / --k-core with the data source {a.source}: the source sets its own "
                              "filters. Fix: set min_weight / rating_threshold / k_core in the YAML.")
        data = load_source(read_source_yaml(a.source))
    else:
        data = load_dataset(a.source, a.root, rating_threshold=3.0 if a.threshold is None else a.threshold,
                            k_core=10 if a.k_core is None else a.k_core)
    st = data.stats()
    if a.json:
        print(json.dumps(st, indent=2))
        return
    print("| statistic | value |\n|---|---|")
    for k, v in st.items():
        print(f"| {k} | {v:,.4f} |" if isinstance(v, float) else
              f"| {k} | {v:,} |" if isinstance(v, int) else f"| {k} | {v} |")


def check(a: argparse.Namespace) -> None:
    """Print every problem of a source's files and a summary; ``SystemExit(1)`` on any error."""
    if a.source in NAMES:
        raise ConfigError(f"data check {a.source!r}: a named dataset is checked as it loads. Fix: run "
                          f"`recsys data stats {a.source}`, or check your own file or YAML source.")
    problems, files = check_path(a.source)
    if a.json:
        print(json.dumps([vars(p) for p in problems], indent=2))
    else:
        for p in problems:
            print(p.format())
        print(summary(problems, files))
    if any(p.severity == "error" for p in problems):
        raise SystemExit(1)


def main(argv: list[str]) -> None:
    """``recsys data stats|check SOURCE``."""
    p = argparse.ArgumentParser(prog="recsys data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stats", help="statistics after filtering (ratings >= 3, 10-core; a YAML source: its own)")
    s.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    s.add_argument("--root", default=None, help="data folder of the named datasets (default $RECSYS_DATA)")
    s.add_argument("--threshold", type=float, default=None,
                   help="keep ratings >= this (default 3; named datasets and files only)")
    s.add_argument("--k-core", type=int, default=None, help="iterative k-core (default 10; named datasets and "
                   "files only)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(run=stats)
    c = sub.add_parser(
        "check", help="report every problem of your data files in one pass; writes nothing",
        description="Report every problem of a data source's files (interaction files, feature files, the source's "
        "settings) in one pass, one line each: the file, the row (data rows from 0) or column, the problem and the "
        "fix. Errors (what loading would fail on or get wrong) make the exit code 1; warnings (unused columns, "
        "feature rows without interactions, ids without a feature row, repeats that dedupe drops) are printed "
        "and do not. Exit 0 when there are no errors. Nothing is written.")
    c.add_argument("source", metavar="SOURCE", help="a .csv / .tsv / .parquet / .txt interaction file (usual column "
                   "names, as --data.dataset=PATH reads it) or a .yaml data source (data: {source: ...}, source: "
                   "..., or the mapping itself; its relative paths are read from the working directory)")
    c.add_argument("--json", action="store_true", help="print the problems as JSON (no summary line)")
    c.set_defaults(run=check)
    a = p.parse_args(argv)
    a.run(a)
