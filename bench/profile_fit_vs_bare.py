"""Profile of the one unmet train_throughput point: fit path vs bare loop, in-batch softmax,
N = 1M, towers without the history bag, 40-step windows (the benchmark uses 8).

    .venv/bin/py-spy record -r 100 -f raw -o fit.txt -- python -m bench.profile_fit_vs_bare
"""

from __future__ import annotations

import numpy as np
import torch

from bench import common as C
from bench.train_throughput import bare_step, fit_window
from recsys.data.batches import PairDataset


def main() -> None:
    C.set_threads(2)
    data = C.synthetic_data(1_000_000, n_users=100_000, per_user=10.0, zipf=0.5, n_clusters=64)
    dm = C.make_datamodule(data, batch_size=C.BATCH, max_history=0)
    ds = PairDataset(data, 0, seed=0)
    perm = np.random.default_rng(0).permutation(len(ds))
    batches = [ds.__getitems__(perm[i * C.BATCH:(i + 1) * C.BATCH]) for i in range(32)]
    torch.manual_seed(0)
    m = C.make_module(data, "inbatch", q_use_bag=False)
    for r in range(2):
        opt = m.configure_optimizers()
        step = bare_step(m, opt, batches)
        m.train()
        C.time_windows(step, 0, 0, warmup=3)
        bare = C.time_windows(step, 1, 40)[0]
        del opt, step
        fit = fit_window(m, dm, 2, 40)
        print(f"round {r}: bare {40 * C.BATCH / bare:.0f} ex/s, fit {40 * C.BATCH / fit:.0f} ex/s, "
              f"fit/bare {bare / fit:.3f}", flush=True)


if __name__ == "__main__":
    main()
