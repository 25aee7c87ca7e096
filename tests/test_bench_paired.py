"""bench.paired_ml1m.paired: the per-user paired comparison behind the README's intervals."""

from __future__ import annotations

import numpy as np
import scipy.stats

from bench.paired_ml1m import paired


def test_paired_difference_interval_and_p_value():
    rng = np.random.default_rng(0)
    b = rng.random(2000)
    a = b + 0.01 + rng.normal(0, 0.05, 2000)  # a better by 0.01 per user, plus noise
    r = paired(a, b)
    assert r["diff"] == np.mean(a - b) and r["model"] == a.mean() and r["baseline"] == b.mean()
    lo, hi = r["ci95"]
    se = np.std(a - b, ddof=1) / np.sqrt(len(a))
    assert lo < r["diff"] < hi and abs((hi - lo) - 2 * 1.96 * se) < 0.2 * (hi - lo)  # ~ normal interval
    assert lo > 0 and r["p_ttest"] == scipy.stats.ttest_rel(a, b).pvalue < 1e-6
    tie = paired(b + rng.normal(0, 0.05, 2000), b)  # no true difference: the interval holds 0
    assert tie["ci95"][0] < 0 < tie["ci95"][1] and tie["p_ttest"] > 0.01
