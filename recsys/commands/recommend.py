"""``recsys recommend (--ckpt PATH | --model DIR) (--user ID | --history I1,I2 | --users FILE|all)``

- ``--user RAW_ID -k 10``: the best unseen items for one known user (train and validation
  items excluded), from a checkpoint or an export folder. ``--temperature T`` > 0 samples k
  distinct items from softmax(score / T) instead (Gumbel top-k); ``--seed`` makes the draw
  reproducible.
- ``--history i1,i2,i3``: for a user the model has never seen, from the raw ids of the items
  they interacted with (the query tower's item bag; those items are excluded).
- ``--users FILE|all --out recs.parquet``: batch recommendations for the users listed in
  FILE (one raw id per line, or a CSV / Parquet with a user column) or for every user,
  written as (user, rank, item, score) rows in chunks (``--chunk`` users at a time) with a
  progress bar, through the retriever evaluation uses (``--index``). ``.csv`` output works too.
- ``--beam B`` (any of the three, a model trained with the TreeSoftmax head): the model's own
  beam search over its item tree, B prefixes per level, instead of exact top-k; the score is
  the tree's log-probability (a head trained with ``rerank``: the exact score of the beam's
  survivors, which it ranks by). With ``--temperature T`` > 0 the beam is stochastic (Gumbel
  noise times T at each level: the diversity knob).
"""

from __future__ import annotations

import argparse
import json

from recsys.errors import ConfigError


def recommender(ckpt=None, model=None, data_root=None):
    """A ``Recommender`` from a checkpoint or an export folder (exactly one of them)."""
    from recsys.artifacts.recommender import Recommender

    if (ckpt is None) == (model is None):
        raise ConfigError("pass exactly one of --ckpt (a `recsys fit` checkpoint) and --model (a "
                          "`recsys export` folder). Fix: e.g. --ckpt runs/recsys/version_0/checkpoints/last.ckpt.")
    return Recommender.from_checkpoint(ckpt, data_root) if ckpt else Recommender.from_export(model)


def format_rows(rows: list[dict]) -> str:
    """Aligned text table: rank, item, score, title (and the item's features, when known)."""
    cells = [("rank", "item", "score", "title")] + [
        (str(r["rank"]), str(r["item"]), f"{r['score']:.4f}",
         " ".join(x for x in (r["title"] or "", f"[{r['features']}]" if r.get("features") else "") if x))
        for r in rows]
    w = [max(len(c[j]) for c in cells) for j in range(3)]
    return "\n".join(f"{c[0]:>{w[0]}}  {c[1]:<{w[1]}}  {c[2]:>{w[2]}}  {c[3]}".rstrip() for c in cells)


def read_user_list(path) -> list:
    """Raw user ids of a file: one per line (a header line ``user`` is skipped), or a CSV /
    Parquet table with a user column under a usual name."""
    from pathlib import Path

    from recsys.data.io import data_error, require_file

    p = require_file(path)
    if p.suffix.lower() in (".csv", ".tsv", ".parquet", ".pq") or p.name.lower().endswith((".csv.gz", ".tsv.gz")):
        from recsys.data.formats.table import ALIASES, read_table

        _, df = read_table(p)
        col = next((a for a in ALIASES["user"] if a in df.columns), None)
        if col is None:
            raise data_error(p, f"has no user column under a usual name ({', '.join(ALIASES['user'])}); columns "
                             f"present: {list(df.columns)}", "name the column user (or user_id)")
        return df[col].tolist()
    ids = [line.strip() for line in Path(p).read_text().splitlines() if line.strip()]
    return ids[1:] if ids and ids[0].lower() in ("user", "user_id", "userid") else ids


def write_batch(rec, users, out, k: int, chunk: int = 4096, index: str = "exact", progress: bool = True,
                beam: int | None = None) -> int:
    """Write (user, rank, item, score) rows of ``rec.recommend_many`` to ``out`` (.parquet or
    .csv) chunk by chunk, into ``out.tmp`` then moved into place; returns the row count."""
    import os
    from pathlib import Path

    from tqdm import tqdm

    out = Path(out)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise ConfigError(f"--out {str(out)!r}: need a .parquet or .csv file. Fix: e.g. --out recs.parquet.")
    tmp = out.with_name(out.name + ".tmp")
    n_users = len(rec.user_vocab) if users is None else len(users)
    rows, writer = 0, None
    try:
        with tqdm(total=n_users, unit="user", disable=not progress, desc="recommend") as bar:
            for frame in rec.recommend_many(users, k, chunk, index, beam):
                if out.suffix.lower() == ".csv":
                    frame.to_csv(tmp, mode="a", header=rows == 0, index=False)
                else:
                    import pyarrow as pa
                    import pyarrow.parquet as pq

                    table = pa.Table.from_pandas(frame, preserve_index=False)
                    writer = writer or pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
                rows += len(frame)
                bar.update(frame["user"].nunique() if len(frame) else 0)
        if writer is not None:
            writer.close()
            writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    return rows


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="recsys recommend", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint written by `recsys fit`")
    src.add_argument("--model", help="export folder written by `recsys export`")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="raw user id, as in the dataset")
    who.add_argument("--history", help="comma-separated raw item ids of a new user's interactions")
    who.add_argument("--users", help="a file of raw user ids, or 'all': batch recommendations (needs --out)")
    p.add_argument("-k", "--k", type=int, default=10, help="number of items (default 10)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: plain top-k (default); > 0: sample from softmax(score / T)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling")
    p.add_argument("--out", default=None, help="with --users: the .parquet / .csv file to write")
    p.add_argument("--chunk", type=int, default=4096, help="with --users: users per chunk (default 4096)")
    p.add_argument("--index", default="exact", choices=["exact", "flat", "ivf", "hnsw"],
                   help="with --users: retriever (default exact)")
    p.add_argument("--beam", type=int, default=None,
                   help="a TreeSoftmax model: its beam search with B prefixes per level instead of exact top-k")
    p.add_argument("--data-root", default=None, help="data folder for --ckpt (default: the fit config's)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    a = p.parse_args(argv)
    if a.temperature < 0:
        raise ConfigError(f"--temperature {a.temperature} < 0: need T >= 0. Fix: 0 for top-k, e.g. 1.0 to sample.")
    if a.users is not None and a.out is None:
        raise ConfigError(f"--users {a.users!r} without --out: batch recommendations are written to a file. "
                          "Fix: add --out recs.parquet.")
    if a.beam is not None and a.beam < 1:
        raise ConfigError(f"--beam {a.beam}: need B >= 1 prefixes per level. Fix: e.g. --beam 16.")
    if a.users is not None and a.temperature > 0:
        raise ConfigError("--users with --temperature: batch recommendations are plain top-k. Fix: drop "
                          "--temperature, or sample per user with --user.")
    rec = recommender(a.ckpt, a.model, a.data_root)
    if a.users is not None:
        users = None if a.users == "all" else read_user_list(a.users)
        n = write_batch(rec, users, a.out, a.k, a.chunk, a.index, beam=a.beam)
        print(f"wrote {n:,} rows (user, rank, item, score) to {a.out}")
        return
    if a.history is not None:
        items = [x.strip() for x in a.history.split(",") if x.strip()]
        if not items:
            raise ConfigError(f"--history {a.history!r}: no item ids. Fix: e.g. --history 1193,661,914.")
        rows = rec.recommend_history(items, a.k, a.temperature, a.seed, beam=a.beam)
    else:
        rows = rec.recommend(a.user, a.k, a.temperature, a.seed, beam=a.beam)
    print(json.dumps(rows, indent=2) if a.json else format_rows(rows))
