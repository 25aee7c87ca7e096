"""Training throughput (examples / s) of every head against catalogue size N, through the
``recsys fit`` path (Lightning) and a bare PyTorch loop over the same towers and head.

    python -m bench.train_throughput            # N = 2k, 10k, 100k, 1M, and 10M for the O(1) heads
    python -m bench.train_throughput --quick    # N = 10k, 100k, few steps

One subprocess builds synthetic catalogues of every size N whose training pairs spread
over the catalogue (100k users, ~10 positives each, Zipf 0.5: ~600k distinct items at
N = 1M), then for each head and size, taking turns window by window:

* bare loop: pre-built batches (torch tensors from ``PairDataset.__getitems__``), the
  module's towers and head, ``configure_optimizers()`` (Adam + SparseAdam), plain
  forward / backward / step; no Lightning, no DataLoader;
* fit path: ``Trainer.fit(TwoTowerModule, InteractionDataModule)`` with logger,
  checkpointing, progress bar and validation off; each window is one short fit whose
  callback times a fixed number of steps after 2 warm-up steps (the window includes the
  DataLoader building each batch, Lightning's hooks and logging);
* sizes alternate window by window (order reversed every round), so a change in machine
  load hits every size alike and the ratios between sizes stay fair.

Throughput is B * steps / seconds per window; the median window is the headline figure and
the best window is reported beside it (contention only ever slows a window down).
"""

from __future__ import annotations

import gc
import math
import time

import numpy as np

from bench import common as C

O_N_HEADS = ("full", "sigmoid")  # heads whose step scores the whole catalogue
FLAT_HEADS = ("sampled", "inbatch", "hard")  # the heads of the flatness target
ALL_HEADS = ("full", "sigmoid", "sigmoid_sampled", "sampled", "inbatch", "hard")


def plan(head: str, N: int, quick: bool) -> dict:
    """Warm-up steps, steps per window and fit warm-up for one (head, N)."""
    if head in O_N_HEADS and N >= 300_000:
        return {"warmup": 1, "steps": 1, "fit_warmup": 1}
    if head in O_N_HEADS and N >= 30_000:
        return {"warmup": 1, "steps": 2, "fit_warmup": 1}
    return {"warmup": 2, "steps": 3, "fit_warmup": 2} if quick else {"warmup": 3, "steps": 8, "fit_warmup": 2}


def bare_step(module, opt, batches):
    """One closure = one step of the plain loop: forward, loss, zero_grad, backward, step."""
    it = [0]
    qt, itw, head = module.query_tower, module.item_tower, module.head

    def step():
        b = batches[it[0] % len(batches)]
        it[0] += 1
        out = head(qt(b), b, itw)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


def fit_window(module, dm, warmup: int, steps: int) -> float:
    """Seconds of ``steps`` optimizer steps of ``Trainer.fit`` after ``warmup`` steps (the
    ``recsys fit`` path without logger, checkpoints, progress bar or validation)."""
    import lightning as L

    class WindowTimer(L.Callback):
        marks: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step in (warmup, warmup + steps):
                self.marks.append(time.perf_counter())

    timer = WindowTimer()
    timer.marks = []
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=warmup + steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[timer],
    )
    miner = getattr(module.head, "miner", None)
    if miner is not None and miner.built():
        miner.steps_since_refresh = 0  # the window stays inside one refresh interval
    trainer.fit(module, datamodule=dm)
    module.trainer = None  # drop the trainer (and its optimizer state) before the next window
    return timer.marks[1] - timer.marks[0]


def run_sizes(case: dict) -> dict:
    """Every head over every size in ``case["sizes"]``, interleaved (runs in its own process).

    For each head the sizes take turns window by window (bare, then fit, then the next
    size; the order reverses every round), so a change in machine load hits every size
    alike and the ratios between sizes stay fair.
    """
    import torch

    from recsys.data.batches import PairDataset

    quick, B, rounds = case["quick"], C.BATCH, case["rounds"]
    tower_kw = case.get("tower_kw", {})
    low_mem = case.get("low_memory", False)
    H = 0 if tower_kw.get("q_use_bag") is False else 50
    sizes, datas, dms, batches, stats = case["sizes"], {}, {}, {}, []
    for N in sizes:
        t = time.perf_counter()
        data = C.synthetic_data(N, n_users=case["users"], per_user=case["per_user"], zipf=case["zipf"],
                                n_clusters=min(64, max(2, N // 100)))
        stats.append({"N": N, "users": data.n_users, "train_pairs": int(data.train.nnz),
                      "distinct_train_items": int((data.item_counts() > 0).sum()),
                      "data_seconds": round(time.perf_counter() - t, 1)})
        ds = PairDataset(data, H, seed=0)
        perm = np.random.default_rng(0).permutation(len(ds))
        batches[N] = [ds.__getitems__(perm[i * B:(i + 1) * B]) for i in range(min(64, len(ds) // B))]
        datas[N], dms[N] = data, C.make_datamodule(data, batch_size=B, max_history=H)
    rows = []
    for h in case["heads"]:
        mods, bare, fit, loads, t0 = {}, {N: [] for N in sizes}, {N: [] for N in sizes}, [C.load()], time.perf_counter()
        for N in sizes:
            torch.manual_seed(0)
            mods[N] = [C.make_module(datas[N], h, **tower_kw), None, None]
        extra = {}
        for r in range(rounds):
            for N in (sizes if r % 2 == 0 else sizes[::-1]):
                p, mod = plan(h, N, quick), mods[N]
                if mod[1] is None:  # bare optimizer and its warm-up (once, or per window in low-memory mode)
                    mod[1] = mod[0].configure_optimizers()
                    mod[2] = bare_step(mod[0], mod[1], batches[N])
                    mod[0].train()
                    C.time_windows(mod[2], 0, 0, warmup=p["warmup"])
                bare[N] += C.time_windows(mod[2], 1, p["steps"])
                if low_mem:
                    mod[1] = mod[2] = None
                    gc.collect()
                fit[N].append(fit_window(mod[0], dms[N], p["fit_warmup"], p["steps"]))
                gc.collect()
                print(f"{h} N={N:,} round {r}: bare {B * p['steps'] / bare[N][-1]:.0f} ex/s, "
                      f"fit {B * p['steps'] / fit[N][-1]:.0f} ex/s, load {C.load()}", flush=True)
        loads.append(C.load())
        for N in sizes:
            p = plan(h, N, quick)
            rb, rf = C.rate_summary(bare[N], B * p["steps"]), C.rate_summary(fit[N], B * p["steps"])
            row = {"N": N, "head": h, "fit_ex_s": rf["median"], "bare_ex_s": rb["median"],
                   "fit_over_bare": rf["median"] / rb["median"], "fit_best": rf["best"], "bare_best": rb["best"],
                   "fit_over_bare_best": rf["best"] / rb["best"], "steps_per_window": p["steps"],
                   "windows": len(bare[N]), "windows_fit": rf["windows"], "windows_bare": rb["windows"],
                   "load_start": loads[0], "load_end": loads[1], **extra}
            if h == "hard":  # one index rebuild, amortised over the default refresh interval
                head = mods[N][0].head
                t1 = time.perf_counter()
                head.miner.refresh_from(mods[N][0].item_tower)
                row["refresh_s"] = time.perf_counter() - t1
                row["index"] = type(head.miner.retriever).__name__
                row["fit_ex_s_with_refresh"] = B * head.miner.refresh_every / (
                    B * head.miner.refresh_every / rf["median"] + row["refresh_s"])
            rows.append(row)
        print(f"{h}: {time.perf_counter() - t0:.0f} s", flush=True)
        del mods
        gc.collect()
    for s in stats:
        s["peak_rss_gib_process"] = round(C.peak_rss_bytes() / 2**30, 2)
    return {"stats": stats, "rows": rows, "threads": C.threads()}


def crossover(rows: list[dict], fast: str, key: str = "fit_ex_s") -> float | None:
    """Catalogue size where ``fast`` overtakes full softmax: log-log interpolation of the
    throughput ratio between measured sizes (None if full is never faster / never slower)."""
    by = {}
    for r in rows:
        by.setdefault(r["N"], {})[r["head"]] = r[key]
    pts = sorted((n, math.log(v[fast] / v["full"])) for n, v in by.items() if "full" in v and fast in v)
    if not pts:
        return None
    if pts[0][1] > 0:
        return -float(pts[0][0])  # already faster at the smallest size measured: "< N"
    for (n0, r0), (n1, r1) in zip(pts, pts[1:]):
        if r0 <= 0 < r1:
            f = -r0 / (r1 - r0)
            return float(math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0))))
    return None


def main(argv=None) -> None:
    args = C.parser(__doc__.splitlines()[0]).parse_args(argv)
    C.set_threads(args.threads)
    quick = args.quick
    base = {"quick": quick, "users": 100_000, "per_user": 10.0, "zipf": 0.5, "threads": args.threads,
            "rounds": 2}
    # smallest size 2k: the sampled heads' 1024 negatives must stay below N; 2 rounds of
    # windows (3 took over 20 minutes on the shared 2-core machine)
    sizes = [10_000, 100_000] if quick else [2_000, 10_000, 100_000, 1_000_000]
    rep = C.Report("train_throughput", quick, C.command_line(), __doc__.split("\n\n")[0])
    rows, stats = [], []
    out = C.run_case("bench.train_throughput", {**base, "sizes": sizes, "heads": list(ALL_HEADS)})
    if "error" in out:
        rep.note(f"default towers: failed: {out['error']}")
        print(out.get("stderr_tail", ""))
    else:
        rows += out["rows"]
        stats += [{**s, "tower": "default"} for s in out["stats"]]
    if not quick:  # 10M: constant-cost heads with the lean towers (see notes), 1M lean beside it
        out = C.run_case("bench.train_throughput", {**base, "sizes": [1_000_000, 10_000_000], "rounds": 2,
                                                    "heads": ["sampled", "inbatch"], "low_memory": True,
                                                    "tower_kw": {"q_use_bag": False}})
        if "error" in out:
            rep.note(f"10M (no history bag): failed: {out['error']}")
        else:
            for r in out["rows"]:
                r["head"] += " (no bag)"
            rows += out["rows"]
            stats += [{**s, "tower": "no history bag"} for s in out["stats"]]
        rep.note("10M: the default query tower's history bag is a second N x D table; with SparseAdam's two "
                 "moments that is 6 N x D float32 tables (15 GiB at 10M), more than this shared machine can "
                 "hold, so 10M (and a 1M reference) run with the query tower's bag off (use_bag=False). The "
                 "full-catalogue heads are not run at 10M (one step is ~10x the 1M step).")
    rep.data = {"rows": rows, "stats": stats}
    _targets(rep, rows, quick)
    cols = ["N", "head", "fit_ex_s", "bare_ex_s", "fit_over_bare", "fit_best", "bare_best", "fit_over_bare_best",
            "steps_per_window", "windows", "load_start", "load_end"]
    rep.table("Throughput (examples / s, median window; best window beside it)", rows, cols,
              note="fit = Trainer.fit on InteractionDataModule + TwoTowerModule (data loading included); "
                   "bare = plain loop over pre-built batches with the same towers, head and MultiOptimizer. "
                   "Sizes take turns window by window, so load changes hit all sizes alike.")
    hard = [r for r in rows if r["head"] == "hard"]
    if hard:
        rep.table("Hard negatives: index rebuild amortised over refresh_every = 500 steps", hard,
                  ["N", "index", "fit_ex_s", "refresh_s", "fit_ex_s_with_refresh"])
    rep.table("Data per catalogue size", stats)
    jp, mp = rep.write(args.out)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")


def _targets(rep, rows, quick: bool) -> None:
    def get(N, h, key="fit_ex_s"):
        return next((r[key] for r in rows if r["N"] == N and r["head"] == h), None)

    big = 100_000 if quick else 1_000_000
    for h in FLAT_HEADS:
        a, b = get(10_000, h), get(big, h)
        if a and b:
            ab, bb = get(10_000, h, "fit_best"), get(big, h, "fit_best")
            rep.target(f"{h}: throughput at N={big:,} / N=10k (fit path)", round(b / a, 3), ">= 0.9",
                       None if quick else b / a >= 0.9, f"{b:.0f} vs {a:.0f} ex/s (best windows: {bb / ab:.3f})")
    flat = [r for r in rows if r["head"] not in O_N_HEADS]
    if flat:
        worst = min(flat, key=lambda r: r["fit_over_bare"])
        rep.target("fit path / bare loop (worst constant-cost head and N)", round(worst["fit_over_bare"], 3),
                   ">= 0.8", None if quick else worst["fit_over_bare"] >= 0.8,
                   f"{worst['head']} at N={worst['N']:,}; all: " + ", ".join(
                       f"{r['head']}@{r['N']:,}={r['fit_over_bare']:.2f}" for r in flat))
    for h in ("sampled", "inbatch", "sigmoid_sampled"):
        x = crossover(rows, h)
        if x is not None:
            txt = f"< {-x:,.0f} (faster at every size measured)" if x < 0 else f"{x:,.0f}"
            rep.target(f"catalogue size where {h} overtakes full softmax", txt, "report", None,
                       "full softmax per N: " + ", ".join(f"{r['N']:,}: {r['fit_ex_s']:.0f}" for r in rows
                                                         if r["head"] == "full"))


if __name__ == "__main__":
    if not C.case_main(run_sizes):
        main()
