"""Does the two-tower model's popularity prior also help the baselines? (ML-1M)

``python -m bench.baseline_prior``: fits EASE (lambda 1000) and ALS (tuned defaults) on the
ML-1M train split and scores validation and test with score + w log p_j (p_j the add-one
smoothed train frequency, ``recsys.model.corrections.log_frequency``, as
``TwoTowerModule(prior_grid=...)`` uses) for w in a grid on the baselines' score scale.
Writes ``bench/results/baseline_prior.json`` and ``.md``. A baseline that is best at w = 0
on validation gains nothing from the prior.
"""

from __future__ import annotations

import os

import numpy as np

from bench import common as C  # thread environment first

GRID = (0.0, 0.005, 0.01, 0.02, 0.04)


def main() -> None:
    """Score every (baseline, split, w); write the report (JSON + Markdown)."""
    from recsys.data import load_dataset
    from recsys.eval.baselines import make_baseline
    from recsys.eval.evaluate import evaluate_embeddings
    from recsys.model.corrections import log_frequency

    data = load_dataset("ml-1m", os.environ["RECSYS_DATA"])
    logp = log_frequency(data.item_counts())[:, None].astype(np.float32)  # (N, 1)
    rows = []
    for name, kw in (("ease", {"lambda_": 1000.0}), ("als", {})):
        m = make_baseline(name, **kw).fit(data)
        for split in ("valid", "test"):
            users = data.eval_users(split)
            xq = np.hstack([m.query_vectors(users), np.ones((len(users), 1), np.float32)])  # (Q, D + 1)
            for w in GRID:
                r = evaluate_embeddings(xq, users, np.hstack([m.xb, w * logp]), data, split, (10,)).metrics
                rows.append({"baseline": name, "split": split, "w": w,
                             "recall@10": r["recall@10"], "ndcg@10": r["ndcg@10"]})
    rep = C.Report("baseline_prior", False, C.command_line(), __doc__.split("\n\n")[0])
    rep.data = {"rows": rows}
    rep.table("Baselines scored with the popularity prior", [
        {**r, "recall@10": f"{r['recall@10']:.4f}", "ndcg@10": f"{r['ndcg@10']:.4f}"} for r in rows])
    rep.write()
    print(rep.markdown())

if __name__ == "__main__":
    main()
