"""Property tests (hypothesis) for the new loaders: feature files, pre-split adjacency files
and whole sources. Random valid inputs load exactly (checked against a plain-Python oracle);
random / malformed ones load correctly or raise the project's ``DataError`` / ``ConfigError``,
never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.data.features import FeatureColumns, FeatureEncoder, read_features
from recsys.data.formats import read_adjacency
from recsys.data.source import DataSource, load_source
from recsys.errors import RecsysError

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORDS = st.text("abcxyz", min_size=1, max_size=3)


@st.composite
def feature_tables(draw):
    n = draw(st.integers(1, 12))
    ids = draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True))
    brand = draw(st.lists(st.one_of(st.none(), WORDS), min_size=n, max_size=n))
    tags = draw(st.lists(st.lists(WORDS, max_size=3), min_size=n, max_size=n))
    price = draw(st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)), min_size=n, max_size=n))
    return pd.DataFrame({"item_id": ids, "brand": brand, "tags": ["|".join(t) for t in tags], "price": price})


@FUZZ
@given(feature_tables())
def test_feature_files_round_trip_against_an_oracle(df):
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "items.csv"
        df.to_csv(p, index=False)
        cols = FeatureColumns(categorical=["brand"], multi={"tags": "|"}, numeric=["price"])
        frame, _ = read_features(p, "item", cols)
    enc = FeatureEncoder.fit(frame, "item", cols)
    bag = enc.bag(frame)
    for r, row in enumerate(df.itertuples()):  # oracle: the tokens of each row, by hand
        want = set()
        if isinstance(row.brand, str) and row.brand.strip():
            want.add(f"brand={row.brand}")
        want |= {f"tags={t}" for t in str(row.tags).split("|") if isinstance(row.tags, str) and t.strip()}
        assert {enc.tokens[j] for j in bag[r].indices} == want
    num = enc.numeric(frame)
    assert num.shape == (len(df), 1) and np.isfinite(num).all()
    assert list(frame.index) == list(df["item_id"])


@st.composite
def adjacency_files(draw):
    rows = draw(st.lists(st.tuples(st.integers(0, 50), st.lists(st.integers(0, 30), max_size=6)),
                         min_size=1, max_size=15, unique_by=lambda r: r[0]))
    trailing = draw(st.booleans())
    text = "".join(f"{u} {' '.join(map(str, its))}{' ' if trailing else ''}\n".replace("  ", " ") for u, its in rows)
    return rows, text


@FUZZ
@given(adjacency_files(), st.binary(max_size=6), st.integers(0, 200))
def test_adjacency_files_load_exactly_or_raise_data_error(spec, junk, at):
    rows, text = spec
    want = sorted((u, i) for u, its in rows for i in set(its))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "train.txt"
        p.write_text(text)
        if not want:
            try:
                read_adjacency(p)
            except RecsysError:
                pass
            else:
                raise AssertionError("a file without pairs loaded")
        else:
            u, i = read_adjacency(p)
            assert sorted(zip(u.tolist(), i.tolist())) == want
        data = text.encode()
        p.write_bytes(data[:at] + junk + data[at:])  # a damaged copy
        try:
            u, i = read_adjacency(p)
            assert len(u) == len(i) and (u >= 0).all() and (i >= 0).all()
        except RecsysError:
            pass


@st.composite
def sources(draw):
    n_users, n_items = draw(st.integers(2, 8)), draw(st.integers(2, 10))
    pairs = draw(st.lists(st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1)),
                          min_size=1, max_size=60, unique=True))
    weight = draw(st.lists(st.integers(-1, 5), min_size=len(pairs), max_size=len(pairs)))
    kind = draw(st.sampled_from(["random", "leave_last_out", "time", "users", "items"]))
    k = draw(st.integers(0, 3))
    return pairs, weight, kind, k


@FUZZ
@given(sources())
def test_random_sources_load_disjoint_splits_or_raise_a_project_error(spec):
    pairs, weight, kind, k = spec
    df = pd.DataFrame({"uid": [f"u{u}" for u, _ in pairs], "sku": [f"s{i}" for _, i in pairs],
                       "qty": weight, "ts": np.arange(len(pairs)) * 10})
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "events.csv"
        df.to_csv(p, index=False)
        src = DataSource(interactions=str(p), columns={"user": "uid", "item": "sku", "weight": "qty", "time": "ts"},
                         min_weight=1, k_core=k, split={"kind": kind, "valid": 0.2, "test": 0.2})
        try:
            d = load_source(src)
        except RecsysError:
            return  # e.g. negative weights, or nothing left after the filters: a clear project error
    kept = {(f"u{u}", f"s{i}") for (u, i), w in zip(pairs, weight) if w >= 1}
    assert min(weight) >= 0  # a negative weight is refused, never silently dropped
    allm = (d.history + d.valid + d.test).tocoo()
    got = {(d.user_vocab.decode([r])[0], d.item_vocab.decode([c])[0]) for r, c in zip(allm.row, allm.col)}
    assert got <= kept and (k > 1 or got == kept or kind in ("time", "items"))
    assert d.train.multiply(d.valid).nnz == 0 and d.train.multiply(d.test).nnz == 0
