"""Paired per-user test of a two-tower checkpoint against EASE and ALS on its own split.

``python -m bench.paired_ml1m --ckpt bench/results/compare-ml-1m-final/runs/inbatch/seed0/checkpoints/best-*.ckpt``

One `recsys compare` run gives one number per model; whether a gap of 0.001-0.005 NDCG@10
means anything depends on how much the users disagree. This scores the checkpoint and the
two baselines (fitted on the same train matrix, the compare settings) on the same test
users and reports, per metric, the mean per-user difference (model - baseline), a 95%
bootstrap interval over users (10,000 resamples) and the paired t-test p-value.
Writes ``bench/results/paired_ml1m.json`` and ``.md``.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.stats

from bench import common as C  # thread environment first

METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def paired(a: np.ndarray, b: np.ndarray, seed: int = 0, n_boot: int = 10_000) -> dict:
    """Mean of a - b over users, its 95% bootstrap interval and the paired t-test p-value."""
    d = a - b  # (U,)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)  # (n_boot,)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"model": float(a.mean()), "baseline": float(b.mean()), "diff": float(d.mean()),
            "ci95": [float(lo), float(hi)], "p_ttest": float(scipy.stats.ttest_rel(a, b).pvalue)}


def main() -> None:
    """Score, compare, write the report (JSON + Markdown)."""
    from recsys.artifacts.checkpoint import load_checkpoint
    from recsys.eval.baselines import make_baseline
    from recsys.eval.evaluate import evaluate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--ease-lambda", type=float, default=1000.0)
    a = p.parse_args()
    model, dm, meta = load_checkpoint(a.ckpt)
    data = dm.data
    ks = (10, 20)
    res = {"model": evaluate(model, dm, "test", ks)}
    res["ease"] = evaluate(make_baseline("ease", lambda_=a.ease_lambda).fit(data), data, "test", ks)
    res["als"] = evaluate(make_baseline("als").fit(data), data, "test", ks)
    def per_user(r, m):  # user id -> value, sorted by user id (rows of I are in loader order)
        uid = r.users[r.per_user["users"]]
        order = np.argsort(uid)
        return uid[order], r.per_user[m][order]

    users = per_user(res["model"], "ndcg@10")[0]
    for name in ("ease", "als"):
        if not np.array_equal(per_user(res[name], "ndcg@10")[0], users):
            raise RuntimeError(f"{name} was scored on other test users than the checkpoint")
    vs = {name: {m: paired(per_user(res["model"], m)[1], per_user(res[name], m)[1]) for m in METRICS}
          for name in ("ease", "als")}
    rep = C.Report("paired_ml1m", False, C.command_line(), __doc__.split("\n\n")[0])
    rep.data = {"checkpoint": str(a.ckpt), "dataset": meta.dataset, "n_users": int(len(users)),
                "prior_weight": model.served_prior_weight, "vs": vs}
    rep.table(f"In-batch minus baseline, {meta.dataset} test split ({len(users):,} users)", [
        {"vs": name, "metric": m, "two-tower": f"{r['model']:.4f}", "baseline": f"{r['baseline']:.4f}",
         "diff": f"{r['diff']:+.4f}",
         "95% bootstrap CI": f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]", "paired t p": f"{r['p_ttest']:.3f}"}
        for name, rows in vs.items() for m, r in rows.items()], note=f"checkpoint: `{a.ckpt}`")
    rep.write()
    print(rep.markdown())

if __name__ == "__main__":
    main()
