"""Tests for recsys.data.formats (table, movielens, xc), recsys.data.validation and recsys.data.download.

Real-data tests read $RECSYS_DATA (default ../shared/data beside the checkout) and skip when
it is absent; everything else builds tiny files under tmp_path. Every bad-input test checks
the error type, that the message names the file, and that it says "Fix:".
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import time
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data import download as dl
from recsys.data.formats import (
    ML100K_GENRES,
    read_interactions,
    read_ml1m_movies,
    read_ml1m_users,
    read_ml100k_items,
    read_ml100k_users,
    read_movielens,
)
from recsys.data.formats.xc import read_xc
from recsys.data.validation import validate_interactions
from recsys.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RECSYS_DATA") or REPO.parent / "shared" / "data")


def real(rel: str) -> Path:
    """Path of a real dataset file, or skip the test with the reason."""
    p = DATA / rel
    if not p.is_file():
        pytest.skip(f"real data file {p} not found (set RECSYS_DATA to the shared data folder)")
    return p


def raises_data_error(fn, path, *args, match: tuple[str, ...] = (), **kwargs) -> str:
    """Call fn, assert DataError naming the file with a 'Fix:', return the message."""
    with pytest.raises(DataError) as info:
        fn(path, *args, **kwargs)
    msg = str(info.value)
    assert Path(path).name in msg, msg
    assert "Fix:" in msg, msg
    for frag in match:
        assert frag in msg, msg
    return msg


# ------------------------------------------------------------------------- real data
def test_real_ml100k_udata():
    df = read_movielens(real("ml-100k/u.data.gz"))
    assert list(df.columns) == ["user", "item", "rating", "time"]
    assert len(df) == 100_000
    assert df["user"].nunique() == 943 and df["item"].nunique() == 1682
    assert df.iloc[0].tolist() == [196, 242, 3, 881250949]
    assert [str(t) for t in df.dtypes] == ["int64", "int64", "float32", "int64"]
    assert df["rating"].value_counts().sort_index().tolist() == [6110, 11370, 27145, 34174, 21201]


def test_real_ml100k_official_split():
    base = read_movielens(real("ml-100k/u1.base.gz"))
    test = read_movielens(real("ml-100k/u1.test.gz"))
    assert (len(base), len(test)) == (80_000, 20_000)


def test_real_ml1m_ratings_without_timestamp_is_fast():
    path = real("ml-1m/ratings_no_timestamp.dat.gz")
    t0 = time.perf_counter()
    df = read_movielens(path)
    seconds = time.perf_counter() - t0
    assert list(df.columns) == ["user", "item", "rating"]  # no time column
    assert len(df) == 1_000_209
    assert df["user"].nunique() == 6040 and df["item"].nunique() == 3706
    assert df.iloc[0].tolist() == [1, 1193, 5]
    assert df.iloc[-1].tolist() == [6040, 1097, 4]
    assert seconds < 10, f"ML-1M took {seconds:.1f} s to load (about 0.3 s expected)"


def test_real_ml1m_prefix_with_timestamp():
    df = read_movielens(real("ml-1m/ratings_prefix50440_with_timestamp.dat.gz"))
    assert list(df.columns) == ["user", "item", "rating", "time"]
    assert len(df) == 50_440
    assert df.iloc[0].tolist() == [1, 1193, 5, 978300760]
    assert df["user"].max() == 331


def test_real_ml1m_movies_and_users():
    movies = read_ml1m_movies(real("ml-1m/movies.dat"))
    assert len(movies) == 3883 and list(movies.columns) == ["item", "title", "genres"]
    assert movies.iloc[0].tolist() == [1, "Toy Story (1995)", "Animation|Children's|Comedy"]
    assert not movies["title"].str.contains("::").any()
    users = read_ml1m_users(real("ml-1m/users.dat"))
    assert len(users) == 6040
    assert users.iloc[0].tolist() == [1, "F", 1, 10, "48067"]


def test_real_ml100k_items_and_users():
    items = read_ml100k_items(real("ml-100k/u.item"))
    assert len(items) == 1682
    assert list(items.columns) == ["item", "title", "genres", *ML100K_GENRES]
    assert len(ML100K_GENRES) == 19
    assert items.iloc[0][["item", "title", "genres"]].tolist() == [
        1, "Toy Story (1995)", "Animation|Children's|Comedy"]
    # the genres string and the flags say the same thing on every row
    flags = items[list(ML100K_GENRES)].to_numpy()
    assert (items["genres"].str.count(r"\|") + 1).tolist() == flags.sum(axis=1).tolist()
    users = read_ml100k_users(real("ml-100k/u.user"))
    assert len(users) == 943
    assert users.iloc[0].tolist() == [1, 24, "M", "technician", "85711"]


def test_real_bibtex_xc():
    X, Y = read_xc(real("bibtex/xc_train.txt.gz"))
    assert X.shape == (4880, 1836) and Y.shape == (4880, 159)
    assert X.nnz == 334_250
    assert X.dtype == np.float32 and Y.dtype == np.float32
    assert set(np.unique(Y.data)) == {1.0}
    assert Y.nnz / Y.shape[0] == pytest.approx(2.380, abs=5e-4)
    Xt, Yt = read_xc(real("bibtex/xc_test.txt.gz"))
    assert Xt.shape == (2515, 1836) and Yt.shape == (2515, 159) and Xt.nnz == 173_496


# ----------------------------------------------------------------- synthetic round trips
FRAME = pd.DataFrame(
    {
        "userId": [10, 10, 11, 12],
        "movieId": [5, 6, 5, 7],
        "stars": [4.5, 3.0, 0.0, 5.0],
        "ts": [100, 200, 300, 400],
        "extra": ["a", "b", "c", "d"],
    }
)
MAPPING = {"user": "userId", "item": "movieId", "rating": "stars", "time": "ts"}


@pytest.mark.parametrize("name", ["r.csv", "r.tsv", "r.csv.gz", "r.tsv.gz", "r.parquet"])
def test_round_trip_with_column_mapping(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
        FRAME.to_parquet(path)
    else:
        FRAME.to_csv(path, sep="\t" if ".tsv" in name else ",", index=False)
    df = read_interactions(path, columns=MAPPING)
    assert list(df.columns) == ["user", "item", "rating", "time"]  # 'extra' is ignored
    assert [str(t) for t in df.dtypes] == ["int64", "int64", "float32", "int64"]
    assert df["user"].tolist() == [10, 10, 11, 12]
    assert df["item"].tolist() == [5, 6, 5, 7]
    assert df["rating"].tolist() == [4.5, 3.0, 0.0, 5.0]
    assert df["time"].tolist() == [100, 200, 300, 400]


def test_default_columns_and_string_ids(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("user,item,rating\nu1,A,1\nu2,007,2\n")
    df = read_interactions(path)
    assert list(df.columns) == ["user", "item", "rating"]
    assert df["user"].tolist() == ["u1", "u2"]
    assert df["item"].tolist() == ["A", "007"]  # string ids stay strings, leading zeros kept


def test_optional_column_can_be_skipped(tmp_path):
    path = tmp_path / "r.csv"
    FRAME.to_csv(path, index=False)
    df = read_interactions(path, columns={"user": "userId", "item": "movieId", "rating": None})
    assert list(df.columns) == ["user", "item"]


def test_validate_converts_integral_floats_and_datetimes():
    df = pd.DataFrame({"item": [1.0, 2.0], "user": [3.0, 4.0], "x": [0, 0],
                       "time": pd.to_datetime(["1970-01-01 00:00:10", "2000-01-01 00:00:00"])})
    out = validate_interactions(df, "frame")
    assert list(out.columns) == ["user", "item", "time"]
    assert out["user"].dtype == np.int64 and out["item"].tolist() == [1, 2]
    assert out["time"].tolist() == [10, 946684800]


@pytest.mark.parametrize(
    "text,has_time",
    [("1::10::5\n2::20::3\n", False), ("1::10::5::99\n2::20::3::98", True),
     ("1\t10\t5\t99\n2\t20\t3\t98\n", True)],
)
@pytest.mark.parametrize("gz", [False, True])
def test_read_movielens_layouts(tmp_path, text, has_time, gz):
    path = tmp_path / ("r.dat.gz" if gz else "r.dat")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    df = read_movielens(path)
    assert df["user"].tolist() == [1, 2] and df["item"].tolist() == [10, 20]
    assert df["rating"].tolist() == [5.0, 3.0]
    assert ("time" in df) == has_time
    if has_time:
        assert df["time"].tolist() == [99, 98]


def test_xc_small_file_with_empty_label_field(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("3 4 3\n0,2 0:1 3:0.5\n 1:2\n1\n")
    X, Y = read_xc(path)
    assert X.toarray().tolist() == [[1, 0, 0, 0.5], [0, 2, 0, 0], [0, 0, 0, 0]]
    assert Y.toarray().tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]


# --------------------------------------------------------------------------- bad inputs
def write(tmp_path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_missing_file(tmp_path):
    raises_data_error(read_interactions, tmp_path / "nope.csv", match=("does not exist",))
    raises_data_error(read_movielens, tmp_path / "ratings.dat")
    raises_data_error(read_xc, tmp_path / "xc.txt")


def test_missing_column_lists_existing_columns(tmp_path):
    path = write(tmp_path, "ratings.csv", "userId,itemId\n1,2\n")
    raises_data_error(read_interactions, path, columns={"user": "userId", "item": "movieId"},
                      match=("movieId", "'userId', 'itemId'"))


def test_nan_id(tmp_path):
    path = write(tmp_path, "ratings.csv", "user,item\n1,2\n,3\n4,5\n")
    raises_data_error(read_interactions, path, match=("'user'", "1 missing", "row 1"))


def test_empty_string_id(tmp_path):
    path = write(tmp_path, "ratings.csv", "user,item\na,2\n  ,3\n")
    raises_data_error(read_interactions, path, match=("'user'", "row 1"))


def test_negative_rating(tmp_path):
    path = write(tmp_path, "ratings.csv", "user,item,rating\n1,2,3\n1,3,-1\n")
    raises_data_error(read_interactions, path, match=("negative",))


def test_nan_rating(tmp_path):
    path = write(tmp_path, "ratings.csv", "user,item,rating\n1,2,3\n1,3,\n2,2,1\n")
    raises_data_error(read_interactions, path, match=("'rating'", "NaN", "row 1"))


def test_non_numeric_rating(tmp_path):
    path = write(tmp_path, "ratings.csv", "user,item,rating\n1,2,3\n1,3,good\n")
    raises_data_error(read_interactions, path, match=("non-numeric", "'good'"))


DUPES = "user,item,rating\n1,2,3\n1,3,4\n1,2,5\n2,2,1\n1,3,2\n"


def test_duplicate_rows_raise(tmp_path):
    path = write(tmp_path, "ratings.csv", DUPES)
    raises_data_error(read_interactions, path, match=("2 duplicate", "dedupe", "drop_duplicates"))


@pytest.mark.parametrize("keep,ratings", [("last", [5.0, 2.0, 1.0]), ("first", [3.0, 4.0, 1.0])])
def test_dedupe_keeps_one(tmp_path, keep, ratings):
    path = write(tmp_path, "ratings.csv", DUPES)
    df = read_interactions(path, dedupe=keep)
    assert len(df) == 3
    assert df.sort_values(["user", "item"])["rating"].tolist() == ratings


def test_same_pair_at_different_times_is_not_a_duplicate(tmp_path):
    path = write(tmp_path, "ratings.csv", "user,item,time\n1,2,10\n1,2,20\n")
    assert len(read_interactions(path)) == 2


def test_empty_file(tmp_path):
    raises_data_error(read_interactions, write(tmp_path, "empty.csv", ""), match=("empty",))
    raises_data_error(read_movielens, write(tmp_path, "empty.dat", ""))


def test_header_only_file_has_zero_rows(tmp_path):
    path = write(tmp_path, "header.csv", "user,item,rating\n")
    raises_data_error(read_interactions, path, match=("zero",))


def test_parquet_read_as_csv(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "data.csv"
    FRAME.to_parquet(path)
    raises_data_error(read_interactions, path, match=("Parquet", "format='parquet'"))


def test_csv_named_parquet(tmp_path):
    path = write(tmp_path, "data.parquet", "user,item\n1,2\n")
    raises_data_error(read_interactions, path, match=("not a Parquet file",))


def test_truncated_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "data.parquet"
    FRAME.to_parquet(path)
    path.write_bytes(path.read_bytes()[:-40])
    raises_data_error(read_interactions, path, match=("not a valid Parquet",))


def test_wrong_separator_single_column(tmp_path):
    path = write(tmp_path, "semi.csv", "user;item;rating\n1;2;3\n")
    raises_data_error(read_interactions, path, match=("single column", "sep=';'"))


def test_binary_file_read_as_csv(tmp_path):
    path = tmp_path / "noise.csv"
    path.write_bytes(bytes(range(128, 256)) * 4)
    raises_data_error(read_interactions, path, match=("not a text",))


def test_unknown_suffix(tmp_path):
    path = write(tmp_path, "ratings.xlsx", "user,item\n1,2\n")
    raises_data_error(read_interactions, path, match=("format=",))


def cut_gzip(tmp_path, name: str, text: str) -> Path:
    """A real gzip file with its second half cut off."""
    blob = gzip.compress(text.encode())
    path = tmp_path / name
    path.write_bytes(blob[: len(blob) // 2])
    return path


def test_truncated_gzip(tmp_path):
    rows = "".join(f"{u},{u * 7 % 101},{u % 5}\n" for u in range(5000))
    path = cut_gzip(tmp_path, "ratings.csv.gz", "user,item,rating\n" + rows)
    raises_data_error(read_interactions, path, match=("truncated or corrupt", "re-download"))
    path = cut_gzip(tmp_path, "ratings.dat.gz", rows.replace(",", "::"))
    raises_data_error(read_movielens, path, match=("truncated or corrupt",))
    xc = "5000 3 2\n" + "0 1:1\n" * 5000
    raises_data_error(read_xc, cut_gzip(tmp_path, "xc.txt.gz", xc), match=("truncated",))


def test_movielens_inconsistent_fields(tmp_path):
    path = write(tmp_path, "ratings.dat", "1::2::3\n1::3::4::5\n")
    raises_data_error(read_movielens, path, match=("line 2",))


def test_movielens_not_a_ratings_file(tmp_path):
    path = write(tmp_path, "ratings.dat", "user,item,rating\n1,2,3\n")
    raises_data_error(read_movielens, path, match=("read_interactions",))


def test_side_file_wrong_field_count(tmp_path):
    path = write(tmp_path, "movies.dat", "1::Toy Story (1995)\n")
    raises_data_error(read_ml1m_movies, path, match=("fields",))


@pytest.mark.parametrize(
    "text,fragments",
    [
        ("2 4 3\n0 0:1\n1,x 1:1\n", ("line 3", "'1,x'")),  # bad label
        ("2 4 3\n0 0:1\n1 1-1\n", ("line 3", "'1-1'")),  # token without ':'
        ("2 4 3\n0 0:1\n1 1:abc\n", ("line 3", "'1:abc'")),  # bad value
        ("2 4 3\n0 0:1\n1 4:1\n", ("line 3", "feature index 4", "[0, 4)")),
        ("2 4 3\n0 0:1\n3 1:1\n", ("line 3", "label index 3")),
        ("3 4 3\n0 0:1\n1 1:1\n", ("header says 3 rows", "has 2")),
        ("2 4\n0 0:1\n1 1:1\n", ("line 1", "header")),
        ("rows feats labels\n0 0:1\n", ("line 1",)),
    ],
)
def test_xc_malformed(tmp_path, text, fragments):
    raises_data_error(read_xc, write(tmp_path, "bad_xc.txt", text), match=fragments)


# ---------------------------------------------------------------------------- download
def test_download_offline_fails_at_once_with_hint(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(dl.urllib.request, "urlopen", offline)
    msg = raises_data_error(dl.download, "ml-100k", tmp_path, match=("u.data", "u.item"))
    assert str(tmp_path / "ml-100k") in msg
    assert not list(tmp_path.glob("*.part"))


def test_download_checksum_mismatch(tmp_path, monkeypatch):
    monkeypatch.setattr(dl.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"not a zip"))
    raises_data_error(dl.download, "ml-1m", tmp_path, match=("checksum mismatch",))
    assert not (tmp_path / "ml-1m.zip").exists() and not list(tmp_path.glob("*.part"))


def test_download_verifies_and_unzips(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("tiny/ratings.dat", "1::2::3\n")
    blob = buf.getvalue()
    spec = {"url": "https://example.invalid/tiny.zip", "folder": "tiny", "files": ("ratings.dat",),
            "sha256": hashlib.sha256(blob).hexdigest(), "md5": hashlib.md5(blob).hexdigest()}
    monkeypatch.setitem(dl.DATASETS, "tiny", spec)
    calls = []
    monkeypatch.setattr(dl.urllib.request, "urlopen",
                        lambda url, timeout: calls.append(timeout) or io.BytesIO(blob))
    folder = dl.download("tiny", tmp_path)
    assert folder == tmp_path / "tiny"
    assert read_movielens(folder / "ratings.dat")["item"].tolist() == [2]
    assert calls == [dl.TIMEOUT_S]
    dl.download("tiny", tmp_path)  # files present: no second fetch
    assert len(calls) == 1


def test_download_registry_has_official_archives():
    for name in ("ml-100k", "ml-1m"):
        spec = dl.DATASETS[name]
        assert spec["url"] == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert len(spec["sha256"]) == 64 and len(spec["md5"]) == 32
    hint = dl.files_hint("ml-1m", "/data")
    assert "/data/ml-1m" in hint and "ratings.dat" in hint and "movies.dat" in hint
    assert not hint.startswith("Fix:")  # callers write "Fix: {hint}"
    assert "xc_train.txt" in dl.files_hint("bibtex", "/data")  # placed by hand, no URL


def test_huge_or_infinite_float_ids_are_rejected(tmp_path):
    # found by the fuzz test: '1e101' parses as an integral float that int64 cannot hold
    for bad in ("1e101", "1e1001"):
        p = tmp_path / "ratings.dat"
        p.write_text(f"{bad}::10::5::100\n1::11::3::200\n")
        msg = raises_data_error(read_movielens, p, match=("beyond",))
        assert bad in msg or "inf" in msg


def test_read_adjacency_pairs_empty_users_and_errors(tmp_path):
    from recsys.data.formats import read_adjacency

    p = tmp_path / "train.txt"
    p.write_text("0 3 1 3\n1 2\n2 \n3\n\n4 0 5\n")  # user 2 and 3 have no items; 3 repeats once for user 0
    u, i = read_adjacency(p)
    assert u.tolist() == [0, 0, 1, 4, 4] and i.tolist() == [1, 3, 2, 0, 5]
    gz = tmp_path / "train.txt.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert [x.tolist() for x in read_adjacency(gz)] == [u.tolist(), i.tolist()]
    bad = tmp_path / "bad.txt"
    bad.write_text("0 1 2\n1 x 3\n")
    raises_data_error(read_adjacency, bad, match=("line 2", "integer"))
    neg = tmp_path / "neg.txt"
    neg.write_text("0 1 -2\n")
    raises_data_error(read_adjacency, neg, match=("negative",))
    none = tmp_path / "none.txt"
    none.write_text("0\n1 \n")
    raises_data_error(read_adjacency, none, match=("no (user, item) pairs",))


def test_columns_auto_takes_the_usual_names_and_names_what_is_missing(tmp_path):
    p = tmp_path / "events.csv"
    p.write_text("customer_id,movieId,weight,ts,extra\na,1,2.0,100,x\nb,2,1.0,200,y\n")
    df = read_interactions(p, columns="auto")
    assert list(df.columns) == ["user", "item", "rating", "time"]
    assert df["user"].tolist() == ["a", "b"] and df["item"].tolist() == [1, 2] and df["rating"].tolist() == [2.0, 1.0]
    bad = tmp_path / "bad.csv"
    bad.write_text("who,movieId\na,1\n")
    msg = raises_data_error(read_interactions, bad, columns="auto", match=("no user column", "user_id"))
    assert "who" in msg  # the columns that exist are listed
