"""Serving from an export folder: a fresh `recsys recommend` process, warm per-user and batch
latency, and the `--help` start-up times.

    python -m bench.serving            # ML-1M export when $RECSYS_DATA has it, else synthetic
    python -m bench.serving --quick

One `recsys fit` (1 epoch, the shipped ML-1M in-batch config when the data is there, else the
embedded synthetic data) and one `recsys export` build the folder; then, each timed over
several runs in fresh processes (`farm-bench`-style median, min, max):

- `recsys recommend --model EXPORT --user U -k 10` (numpy + FAISS + JSON; no torch, no
  Lightning) and `recsys recommend --model EXPORT --history ...` (reads the query tower);
- `recsys --help`, `recsys fit --help`, `recsys recommend --help`, `recsys compare --help`.

In one process, ``Recommender.from_export`` once, then ``recommend(user)`` for 1,000 users one
at a time (ms per user, warm) and ``recommend_many`` over every user (ms per user, batched).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common as C

ROOT = Path(__file__).resolve().parent.parent


def _recsys(*args: str) -> list[str]:
    return [sys.executable, "-m", "recsys.commands.console", *args]


def wall(cmd: list[str], runs: int) -> dict:
    """Median / min / max wall seconds of ``cmd`` in fresh processes (one untimed warm-up run,
    so the page cache holds the files)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": runs}


def build_export(work: Path, quick: bool) -> tuple[Path, str]:
    """Fit one epoch and export it; returns (export folder, dataset name)."""
    from recsys.data.datasets import data_root

    ml1m = (Path(data_root(None)) / "ml-1m").is_dir() and not quick
    cfg = (["--config", "configs/ml-1m/base.yaml", "--config", "configs/ml-1m/inbatch.yaml"] if ml1m else
           ["--config", "configs/synthetic/base.yaml", "--config", "configs/synthetic/inbatch.yaml"])
    run = work / "run"
    subprocess.run(_recsys("fit", *cfg, "--trainer.max_epochs=1", f"--trainer.default_root_dir={run}",
                           "--trainer.enable_progress_bar=false"), check=True, capture_output=True, cwd=ROOT)
    ckpt = next(run.rglob("last.ckpt"))
    out = work / "export"
    subprocess.run(_recsys("export", "--ckpt", str(ckpt), "--out", str(out)), check=True, capture_output=True,
                   cwd=ROOT)
    return out, "ml-1m" if ml1m else "synthetic"


def main(argv=None) -> None:
    args = C.parser(__doc__.splitlines()[0]).parse_args(argv)
    C.set_threads(args.threads)
    runs = 3 if args.quick else 7
    rep = C.Report("serving", args.quick, C.command_line(), __doc__.split("\n\n")[0])
    with tempfile.TemporaryDirectory() as tmp:
        export, dataset = build_export(Path(tmp), args.quick)
        from recsys.artifacts.recommender import Recommender

        rec = Recommender.from_export(export)
        raw_users = rec.user_vocab.raw.to_numpy()
        user = str(raw_users[0])
        hist = [str(x) for x in rec.item_vocab.raw.to_numpy()[:20]]
        fresh = {
            "recommend --user": wall(_recsys("recommend", "--model", str(export), "--user", user, "-k", "10"), runs),
            "recommend --history": wall(_recsys("recommend", "--model", str(export), "--history", ",".join(hist),
                                                "-k", "10"), runs),
            "recsys --help": wall(_recsys("--help"), runs),
        }
        for sub in ("fit", "recommend", "compare", "evaluate", "export", "data"):
            fresh[f"recsys {sub} --help"] = wall(_recsys(sub, "--help"), runs)
        # warm, one user at a time
        sample = raw_users[np.random.default_rng(0).permutation(len(raw_users))[:1000]]
        rec.recommend(sample[0], k=10)
        t = time.perf_counter()
        for u in sample:
            rec.recommend(u, k=10)
        per_user_ms = (time.perf_counter() - t) / len(sample) * 1e3
        t = time.perf_counter()
        for _ in rec.recommend_many(None, k=10):  # a generator of per-chunk frames
            pass
        many_ms = (time.perf_counter() - t) / len(raw_users) * 1e3
        n_items = int(rec.xb.shape[0])
    rows = [{"command": k, **v} for k, v in fresh.items()]
    rep.table(f"Fresh processes (wall seconds, {dataset} export)", rows,
              ["command", "median_s", "min_s", "max_s", "runs"],
              note="python -m recsys.commands.console ARGS (the `recsys` script's entry), one untimed warm-up "
                   "run first; OMP_NUM_THREADS=2.")
    rep.table("Warm latency (one process)", [
        {"call": "Recommender.recommend(user, k=10), 1,000 users one at a time", "ms_per_user": per_user_ms},
        {"call": f"Recommender.recommend_many(all {len(raw_users):,} users, k=10)", "ms_per_user": many_ms}],
        ["call", "ms_per_user"])
    rep.data = {"dataset": dataset, "n_users": len(raw_users), "n_items": n_items, "fresh": fresh,
                "warm_ms_per_user": per_user_ms, "batch_ms_per_user": many_ms}
    r = fresh["recommend --user"]
    rep.target("`recsys recommend --model EXPORT --user U` in a fresh process", f"{r['median_s']:.2f} s",
               "<= 1.0 s", r["median_s"] <= 1.0, f"min {r['min_s']:.2f} s, max {r['max_s']:.2f} s")
    rep.target("warm recommend, one user at a time", f"{per_user_ms:.2f} ms/user", "<= 5 ms",
               per_user_ms <= 5.0, f"batched recommend_many: {many_ms:.3f} ms/user")
    h = fresh["recsys --help"]
    rep.target("`recsys --help`", f"{h['median_s']:.2f} s", "<= 2 s", h["median_s"] <= 2.0)
    slow = {k: v["median_s"] for k, v in fresh.items() if k.endswith("--help") and k != "recsys --help"}
    worst = max(slow, key=slow.get)
    rep.target("every subcommand's `--help`", f"slowest {worst}: {slow[worst]:.2f} s", "<= 2 s",
               slow[worst] <= 2.0, ", ".join(f"{k.split()[1]} {v:.2f} s" for k, v in slow.items()))
    jp, mp = rep.write(args.out)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
