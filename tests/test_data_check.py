"""Tests for ``recsys data check`` (recsys.data.check) and ``recsys data stats`` on a YAML source.

Every file is generated under tmp_path; the working directory is tmp_path, so the sources'
relative paths resolve there (as training resolves them) and anything written by mistake
would land where the tests look.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from recsys.commands.console import main
from recsys.data.check import Problem, check_source
from recsys.data.source import DataSource
from recsys.errors import ConfigError


def write_clean(folder, n_users: int = 60, n_items: int = 30) -> None:
    """events.csv (usual column names, string ids, 6 rows per user) and items.csv (one row per item)."""
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"sku{j}", 1, 1_600_000_000 + 10 * u + k)
            for u in range(n_users) for k, j in enumerate(rng.choice(n_items, 6, replace=False))]
    pd.DataFrame(rows, columns=["user_id", "item_id", "weight", "timestamp"]).to_csv(folder / "events.csv", index=False)
    pd.DataFrame({"item_id": [f"sku{j}" for j in range(n_items)], "brand": [f"b{j % 4}" for j in range(n_items)],
                  "price": np.arange(n_items) * 1.5}).to_csv(folder / "items.csv", index=False)


def snapshot(folder) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and mtime."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_check(args: list[str], capsys) -> tuple[int, list[str]]:
    """(exit code, printed lines) of ``recsys data check ARGS``."""
    code = 0
    try:
        main(["data", "check", *args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().out.splitlines()


def test_clean_csv_and_item_file_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_clean(tmp_path)
    (tmp_path / "source.yaml").write_text("source:\n  interactions: events.csv\n  item_features: items.csv\n"
                                          "  split: {kind: leave_last_out}\n  k_core: 2\n")
    code, lines = run_check(["source.yaml"], capsys)
    assert code == 0 and lines == ["no problems in source.yaml, events.csv, items.csv"]
    code, lines = run_check(["events.csv"], capsys)  # the plain file form
    assert code == 0 and lines == ["no problems in events.csv"]


DIRTY_EVENTS = """customer_id,sku,qty,ts,note
u1,A1,1,1600000000,x
u1,A2,2,1600000100,x
,A3,1,1600000200,x
u2,A1,-3,1600000300,x
u2,A2,1,2020-13-45,x
u1,A1,1,1600000000,x
u3,A9,1,1600000500,x
"""
DIRTY_ITEMS = """sku,brand,price
A1,acme,9.5
A2,acme,cheap
A1,zen,3
Z1,zen,4
Z2,zen,5
"""


def write_dirty(folder) -> None:
    """A pre-split source: train.csv with a missing id (row 2), a negative weight (row 3), an
    unparsable timestamp (row 4), a repeated pair (row 5) and an unused column; test.csv
    without the mapped weight column; items.csv with a non-numeric price (row 1), a duplicate
    id (row 2), rows for items without interactions (Z1, Z2) and no row for A3, A9."""
    (folder / "train.csv").write_text(DIRTY_EVENTS)
    (folder / "test.csv").write_text("customer_id,sku,ts\nu1,A2,1600000900\n")
    (folder / "items.csv").write_text(DIRTY_ITEMS)
    (folder / "fit.yaml").write_text("""data:
  source:
    train: train.csv
    test: test.csv
    columns: {user: customer_id, item: sku, weight: qty, time: ts}
    dedupe: null
    item_features: items.csv
    item_columns: {item: sku, categorical: [brand], numeric: [price]}
""")


EXPECTED = [  # (severity, file, where, a piece of the problem)
    ("error", "train.csv", "row 2", "column 'customer_id' (the user) has 1 missing or empty ids"),
    ("error", "train.csv", "row 3", "column 'qty' (the rating) has 1 negative values (first at row 3: -3)"),
    ("error", "train.csv", "row 4", "column 'ts' (the time) has 1 non-numeric values (first at row 4: '2020-13-45')"),
    ("error", "train.csv", "row 5", "1 duplicate (user, item, time) rows (first repeat at row 5: user='u1', item='A1'"),
    ("warning", "train.csv", "columns", "column(s) ['note'] are not used"),
    ("error", "test.csv", "column 'qty'", "mapped column weight -> 'qty' not found; columns present: "
     "['customer_id', 'sku', 'ts']"),
    ("error", "items.csv", "row 1", "numeric column 'price' has 1 non-numeric or infinite values"),
    ("error", "items.csv", "row 2", "1 duplicate item ids (first repeat at row 2: 'A1')"),
    ("warning", "items.csv", "row 3", "2 item id(s) have a feature row but no interaction (e.g. ['Z1', 'Z2'])"),
    ("warning", "items.csv", "column 'sku'", "2 of 4 item id(s) of the interactions have no feature row "
     "(e.g. ['A3', 'A9'])"),
]


def test_dirty_files_report_every_problem_in_one_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_dirty(tmp_path)
    code, lines = run_check(["fit.yaml"], capsys)
    assert code == 1
    problems, summary = lines[:-1], lines[-1]
    for severity, file, where, text in EXPECTED:
        hits = [x for x in problems if x.startswith(f"{severity}: {file} ({where}): ") and text in x]
        assert len(hits) == 1, (severity, file, where, text, problems)
        assert re.search(r"\. Fix: .+\.$", hits[0]), hits[0]  # the project's message shape
    assert len(problems) == len(EXPECTED), problems  # nothing else, nothing twice
    assert summary == "7 errors, 3 warnings in train.csv, test.csv, items.csv"


def test_check_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_dirty(tmp_path)
    (tmp_path / "clean").mkdir()
    write_clean(tmp_path / "clean")
    before = snapshot(tmp_path)
    run_check(["fit.yaml"], capsys)
    run_check(["clean/events.csv"], capsys)
    main(["data", "stats", "clean/events.csv", "--k-core", "2", "--threshold", "1"])
    assert snapshot(tmp_path) == before  # same files, same bytes, same mtimes


def test_warnings_alone_exit_0(tmp_path, monkeypatch, capsys):
    # an unused column, feature rows without interactions, a repeated row that dedupe drops:
    # printed, and the exit code stays 0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.csv").write_text("user,item,note\n1,10,a\n1,11,b\n2,10,c\n2,10,c\n")
    (tmp_path / "items.csv").write_text("item,brand\n10,x\n11,y\n12,z\n")
    (tmp_path / "s.yaml").write_text("interactions: events.csv\nitem_features: items.csv\ncatalogue: all_items\n")
    code, lines = run_check(["s.yaml"], capsys)
    assert code == 0
    assert lines[-1] == "0 errors, 3 warnings in events.csv, items.csv"
    assert any("items.csv (row 2): 1 item id(s) have a feature row but no interaction (e.g. [12]); they are "
               "ranked as cold items (catalogue: all_items)" in x for x in lines), lines
    assert any("events.csv (row 3): 1 duplicate (user, item) rows" in x and "dedupe: last keeps the last" in x
               for x in lines), lines


def test_settings_problems_are_errors():
    src = DataSource(split={"kind": "weird"}, min_weight=1, rating_threshold=3)
    got = {(p.severity, p.where) for p in check_source(src, "s.yaml")}
    assert got == {("error", "interactions"), ("error", "split.kind"), ("error", "min_weight")}
    p = next(p for p in check_source(src, "s.yaml") if p.where == "split.kind")
    assert p.format() == ("error: s.yaml (split.kind): split kind='weird' is unknown; valid: ['global_time', "
                          "'items', 'leave_last_out', 'random', 'time', 'users']. Fix: pick one of them.")


def test_unreadable_files_are_one_problem_each(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.txt").write_text("1 2 3\n2 3 x\n")  # adjacency: its DataError is the one problem
    (tmp_path / "test.parquet").write_text("user,item\n1,2\n")  # a CSV named .parquet
    (tmp_path / "empty.csv").write_bytes(b"")
    src = DataSource(train="train.txt", test="test.parquet", valid="empty.csv", item_features="missing.csv")
    problems = check_source(src)
    assert [(p.file, p.where) for p in problems] == [("train.txt", ""), ("empty.csv", ""), ("test.parquet", ""),
                                                    ("missing.csv", "")]
    text = [p.problem for p in problems]
    assert "line 2 is not 'user item item ...'" in text[0] and "empty" in text[1]
    assert "is not a Parquet file" in text[2] and text[3].startswith("does not exist")
    assert all(isinstance(p, Problem) and p.severity == "error" for p in problems)


def test_a_time_split_needs_a_time_column_and_filters_must_leave_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.csv").write_text("user,item\n1,10\n1,11\n2,10\n")
    got = [p.problem for p in check_source(DataSource(interactions="events.csv", split={"kind": "time"}, k_core=5))]
    assert len(got) == 2 and "orders rows by time" in got[0] and "empty after the 5-core" in got[1]


def test_stats_reads_a_yaml_source(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_clean(tmp_path)
    (tmp_path / "fit.yaml").write_text("data:\n  source:\n    interactions: events.csv\n    item_features: items.csv\n"
                                       "    split: {kind: items, valid: 0.1, test: 0.2}\n")
    main(["data", "stats", "fit.yaml"])
    out = capsys.readouterr().out
    assert "| dataset | events.csv |" in out and "| users | 60 |" in out and "| interactions | 360 |" in out
    assert "| cold_test_items | 6 |" in out and "| item_numeric_features | 1 |" in out  # 20% of 30 items held out
    with pytest.raises(ConfigError, match="sets its own filters"):
        main(["data", "stats", "fit.yaml", "--k-core", "2"])
    (tmp_path / "bad.yaml").write_text("source:\n  interactions: events.csv\n  splitt: {kind: time}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['splitt'\]"):
        main(["data", "stats", "bad.yaml"])


def test_columns_without_usual_names(tmp_path, monkeypatch):
    # a file read by its usual column names: the missing id columns are named, with the
    # columns present; a single column is most likely the wrong separator
    monkeypatch.chdir(tmp_path)
    (tmp_path / "who.csv").write_text("who,what\n1,2\n")
    (tmp_path / "semi.csv").write_text("user;item\n1;2\n")
    got = [p.format() for p in check_source(DataSource(interactions="who.csv"))]
    assert len(got) == 2 and all(x.startswith("error: who.csv (columns): has no ") for x in got)
    assert "has no user column under a usual name" in got[0] and "columns present: ['who', 'what']" in got[0]
    assert "has no item column" in got[1]
    got = check_source(DataSource(interactions="semi.csv"))
    assert len(got) == 1 and "single column 'user;item'" in got[0].problem and got[0].fix.startswith("set sep: ';'")
