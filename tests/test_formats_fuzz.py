"""Property tests (hypothesis) for the file loaders: random valid files load exactly, and
random / malformed files either load correctly or raise the project's ``DataError``:
never another exception, never a silently wrong row count.

"Loads correctly" is checked against a small independent parser (an oracle) wherever the
text is simple enough for one (no quotes, NUL bytes or bare carriage returns): the loader's
rows must be the oracle's rows, and a line with more fields than the header (a separator
inside a value, shifted columns) must be an error. Elsewhere the frame's invariants are
checked: canonical columns and dtypes, no missing ids, finite ratings >= 0, unique rows.
"""

from __future__ import annotations

import gzip
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from recsys.data.formats import (
    read_interactions,
    read_ml1m_movies,
    read_ml100k_items,
    read_ml100k_users,
    read_movielens,
    read_xc,
)
from recsys.data.validation import CANONICAL
from recsys.errors import DataError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------ strategies
def _tables(string_ids: bool):
    ids = (st.text("abcxyzAB", min_size=1, max_size=4).map(lambda s: "u" + s) if string_ids
           else st.integers(0, 10**9))
    row = st.tuples(ids, ids, st.integers(0, 50).map(lambda x: x / 10), st.integers(0, 2**40))
    return st.lists(row, min_size=1, max_size=30, unique_by=lambda r: (r[0], r[1], r[3]))


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """1-3 random edits of ``data``: truncate, delete a span, insert bytes, duplicate or
    drop a line, swap a separator."""
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "delete", "insert", "dup_line", "drop_line", "swap"]))
        n = len(data)
        i = draw(st.integers(0, max(0, n)))
        if kind == "truncate":
            data = data[:i]
        elif kind == "delete":
            data = data[:i] + data[i + draw(st.integers(1, 8)):]
        elif kind == "insert":
            blob = draw(st.one_of(st.binary(min_size=1, max_size=6),
                                  st.text(",\t:;|\n .-e0123456789naifNA\"", min_size=1, max_size=6).map(str.encode)))
            data = data[:i] + blob + data[i:]
        else:
            lines = data.split(b"\n")
            j = draw(st.integers(0, len(lines) - 1))
            if kind == "dup_line":
                lines.insert(j, lines[j])
            elif kind == "drop_line":
                del lines[j]
            else:
                lines[j] = lines[j].replace(draw(st.sampled_from([b",", b"::", b"\t"])),
                                            draw(st.sampled_from([b";", b",,", b":", b"\t", b" "])), 1)
            data = b"\n".join(lines)
    return data


# ------------------------------------------------------------------------ checks
def _check_frame(df: pd.DataFrame) -> None:
    """Invariants of the canonical interaction frame."""
    assert list(df.columns) == [c for c in CANONICAL if c in df.columns]
    assert len(df) >= 1 and df.index.equals(pd.RangeIndex(len(df)))
    for c in ("user", "item"):
        assert df[c].notna().all()
        assert df[c].dtype == np.int64 or all(isinstance(v, str) and v.strip() for v in df[c])
    if "rating" in df:
        assert df["rating"].dtype == np.float32 and np.isfinite(df["rating"]).all() and (df["rating"] >= 0).all()
    if "time" in df:
        assert df["time"].dtype == np.int64
    assert not df.duplicated([c for c in ("user", "item", "time") if c in df]).any()


def _simple(text: str) -> bool:
    return not any(ch in text for ch in '"\0\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029')


def _number(s: str) -> float:
    v = float(s)  # raises on non-numbers, as the loader must
    if not math.isfinite(v):
        raise ValueError(s)
    return v


def _oracle_ml(text: str):
    """Rows of a MovieLens ratings text by plain splitting, or ValueError if malformed."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    sep = "::" if "::" in lines[0] else "\t"
    n = len(lines[0].split(sep))
    rows = []
    for ln in lines:
        f = ln.split(sep)
        if len(f) != n or n not in (3, 4):
            raise ValueError(ln)
        vals = [_number(x) for x in f]
        if vals[0] != int(vals[0]) or vals[1] != int(vals[1]) or vals[2] < 0:
            raise ValueError(ln)
        rows.append((int(vals[0]), int(vals[1]), vals[2], *([math.floor(vals[3])] if n == 4 else [])))
    keys = [(r[0], r[1], *r[3:]) for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicates")
    return rows


def _write(tmp: str, name: str, data: bytes) -> Path:
    p = Path(tmp) / name
    p.write_bytes(data)
    return p


def _load(fn, path):
    """fn(path) -> frame, or None on DataError; any other exception fails the test."""
    try:
        return fn(path)
    except DataError as e:
        assert str(path) in str(e) or path.name in str(e), f"DataError does not name the file: {e}"
        assert "Fix" in str(e) or "fix" in str(e).lower(), str(e)
        return None


# ------------------------------------------------------------------------ valid files load exactly
@FUZZ
@given(rows=st.one_of(_tables(False), _tables(True)),
       fmt=st.sampled_from(["csv", "tsv", "csv.gz", "parquet"]), crlf=st.booleans(), blank_tail=st.booleans())
def test_valid_interaction_files_load_exactly(rows, fmt, crlf, blank_tail):
    expect = pd.DataFrame(rows, columns=["user", "item", "rating", "time"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"r.{fmt}"
        if fmt == "parquet":
            pytest.importorskip("pyarrow")
            expect.to_parquet(path)
        else:
            eol = "\r\n" if crlf else "\n"
            text = expect.to_csv(sep="\t" if fmt == "tsv" else ",", index=False, lineterminator=eol)
            data = (text + ("\n\n" if blank_tail else "")).encode()
            path.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
        df = read_interactions(path)
    _check_frame(df)
    assert len(df) == len(rows)
    assert df["user"].tolist() == expect["user"].tolist() and df["item"].tolist() == expect["item"].tolist()
    assert np.allclose(df["rating"], expect["rating"]) and df["time"].tolist() == expect["time"].tolist()


@FUZZ
@given(rows=_tables(False), with_time=st.booleans(), sep=st.sampled_from(["::", "\t"]), gz=st.booleans())
def test_valid_movielens_files_load_exactly(rows, with_time, sep, gz):
    n = 4 if with_time else 3
    if not with_time:
        assume(len({(r[0], r[1]) for r in rows}) == len(rows))
    text = "\n".join(sep.join(str(v) for v in r[:n]) for r in rows) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        df = read_movielens(_write(tmp, "ratings.dat", gzip.compress(text.encode()) if gz else text.encode()))
    _check_frame(df)
    assert len(df) == len(rows) and df["user"].tolist() == [r[0] for r in rows]
    assert ("time" in df) == with_time


# ------------------------------------------------------------------------ malformed files
BASE_CSV = b"user,item,rating,time\n1,10,4.5,100\n1,11,3.0,200\n2,10,0.5,300\nu9,12,5,400\n3,13,1,500\n"
BASE_ML = b"1::10::5::100\n1::11::3::200\n2::10::1::300\n3::12::4::400\n"


@FUZZ
@given(data=mutations(BASE_CSV), gz=st.booleans())
def test_malformed_csv_loads_correctly_or_raises_data_error(data, gz):
    with tempfile.TemporaryDirectory() as tmp:
        df = _load(read_interactions, _write(tmp, "r.csv.gz" if gz else "r.csv", gzip.compress(data) if gz else data))
    if df is None:
        return
    _check_frame(df)
    text = data.decode("utf-8")  # it loaded, so it was text
    if not _simple(text):
        return
    lines = [ln for ln in text.split("\n") if ln.strip()]
    width = len(lines[0].split(","))
    assert all(len(ln.split(",")) <= width for ln in lines[1:]), "a line with more fields than the header loaded"
    assert len(df) == len(lines) - 1, "row count differs from the file's data lines"


@FUZZ
@given(data=mutations(BASE_ML))
def test_malformed_movielens_loads_correctly_or_raises_data_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        df = _load(read_movielens, _write(tmp, "ratings.dat", data))
    if df is None:
        return
    _check_frame(df)
    text = data.decode("utf-8")
    if not _simple(text):
        return
    try:
        rows = _oracle_ml(text)
    except ValueError:
        pytest.fail(f"loaded a file the oracle rejects: {text!r}")
    assert len(df) == len(rows)
    assert df["user"].tolist() == [r[0] for r in rows] and df["item"].tolist() == [r[1] for r in rows]
    assert np.allclose(df["rating"], [r[2] for r in rows])


# ------------------------------------------------------------------------ arbitrary bytes
MAGIC = st.sampled_from([b"", b"PAR1", b"\x1f\x8b", b"PK\x03\x04", b"user,item\n", b"1::2::3\n", b"3 2 2\n"])


@FUZZ
@given(head=MAGIC, body=st.binary(max_size=200),
       name=st.sampled_from(["r.csv", "r.tsv", "r.parquet", "r.csv.gz", "ratings.dat", "u.item", "movies.dat",
                             "u.user", "xc.txt"]))
def test_arbitrary_bytes_never_raise_anything_but_data_error(head, body, name):
    readers = {"ratings.dat": read_movielens, "u.item": read_ml100k_items, "movies.dat": read_ml1m_movies,
               "u.user": read_ml100k_users, "xc.txt": read_xc}
    fn = readers.get(name, read_interactions)
    with tempfile.TemporaryDirectory() as tmp:
        out = _load(fn, _write(tmp, name, head + body))
    if isinstance(out, pd.DataFrame) and fn in (read_interactions, read_movielens):
        _check_frame(out)


# ------------------------------------------------------------------------ side files and XC
U_ITEM = ("1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
          "2|GoldenEye (1995)|01-Jan-1995||http://y|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n").encode("latin-1")
MOVIES = b"1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure|Children's|Fantasy\n"
XC = b"3 5 4\n0,2 1:0.5 3:1.0\n 2:1\n3 0:2 4:0.25\n"


@FUZZ
@given(data=st.one_of(mutations(U_ITEM), mutations(MOVIES)))
def test_malformed_side_files_load_correctly_or_raise(data):
    fn, name = (read_ml100k_items, "u.item") if data.count(b"|") > 20 else (read_ml1m_movies, "movies.dat")
    with tempfile.TemporaryDirectory() as tmp:
        df = _load(fn, _write(tmp, name, data))
    if df is None:
        return
    assert df["item"].dtype == np.int64 and df["item"].is_unique
    text = data.decode("latin-1")
    if _simple(text):
        lines = [ln for ln in text.split("\n") if ln.strip()]
        assert len(df) == len(lines), "row count differs from the file's lines"
        sep, width = ("|", 24) if fn is read_ml100k_items else ("::", 3)
        assert all(len(ln.split(sep)) == width for ln in lines), "a line with the wrong field count loaded"


@FUZZ
@given(data=mutations(XC))
def test_malformed_xc_loads_correctly_or_raises(data):
    with tempfile.TemporaryDirectory() as tmp:
        out = _load(read_xc, _write(tmp, "xc.txt", data))
    if out is None:
        return
    x, y = out
    n_rows, n_feat, n_lab = (int(v) for v in data.split(b"\n", 1)[0].split())
    assert x.shape == (n_rows, n_feat) and y.shape == (n_rows, n_lab)
    assert np.isfinite(x.data).all() and (y.data == 1).all()
