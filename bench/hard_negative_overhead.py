"""Hard-negative mining overhead: the share of training time spent rebuilding the FAISS
index and mining, against the refresh interval, and the quality effect of the interval.

    python -m bench.hard_negative_overhead            # N = 1M synthetic; ml-100k quality
    python -m bench.hard_negative_overhead --quick    # N = 100k, short runs

Part 1 (cost, synthetic N = 1M, default towers and ``HardNegativeSoftmax()`` defaults):
``Trainer.fit`` (the ``recsys fit`` path: the head's ``MinerRefresh`` callback rebuilds
the index before the first step and every ``refresh_every`` steps) runs two full refresh
cycles at the default interval (500 steps) and three at a short one (100), with the
rebuild (``item_tower.embed_all`` + the index build) and the mining timed inside by the
miner itself (``HardNegativeMiner`` timings). share = (rebuild + mining) / training time.
The first rebuild of a run trains the IVF cells (k-means), later ones reuse them
(``retrain_every``, default 10) and only
re-assign the embeddings, so a run of two cycles pays one trained and one reused rebuild:
pessimistic for a long run, which trains once per ``retrain_every`` cycles. Other intervals
and the long run follow from the measured parts: with T_build = (T_train + (r - 1) T_reuse) / r
per rebuild (r = retrain_every), share(R) = (T_build / R + t_mine) / (T_build / R + t_mine + t_rest).

Part 2 (quality, MovieLens-100k, docs/protocol.md): the ml-100k config's model
(configs/ml-100k/base.yaml + hard.yaml: batch 256, dense Adam) trained for a fixed number of epochs
with several refresh intervals, and in-batch softmax (no hard negatives) as the
reference; test Recall@10 / NDCG@10 over the full catalogue, seen items excluded.
"""

from __future__ import annotations

import gc
import time
from functools import partial

from bench import common as C

INTERVALS = (50, 100, 200, 500, 1000, 2000)


def cost_case(case: dict) -> dict:
    """One training run of ``steps`` steps with ``refresh_every`` (in its own process)."""
    import lightning as L
    import torch

    N, R, S = case["N"], case["refresh_every"], case["steps"]
    data = C.synthetic_data(N, n_clusters=64)
    dm = C.make_datamodule(data)
    torch.manual_seed(0)
    module = C.make_module(data, "hard")
    miner = module.head.miner
    miner.refresh_every = R

    class StepClock(L.Callback):
        t0 = t1 = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.t0 is None:  # before the callback's first rebuild (callbacks run in order)
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.t1 = time.perf_counter()

    clock = StepClock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=S, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[clock])
    l0 = C.load()
    trainer.fit(module, datamodule=dm)
    total = clock.t1 - clock.t0
    builds = [b for b, _ in miner.build_log]
    rebuild = miner.refresh_seconds + miner.embed_seconds
    tr = [b for b, t in miner.build_log if t]
    ru = [b for b, t in miner.build_log if not t]
    mine_s = miner.mine_seconds
    return {"N": N, "refresh_every": R, "steps": S, "total_s": total, "rebuilds": len(builds),
            "rebuild_s": rebuild, "build_s_each": miner.refresh_seconds / max(1, len(builds)),
            "embed_s_each": miner.embed_seconds / max(1, len(builds)),
            "build_trained_s": sum(tr) / len(tr) if tr else None, "build_reused_s": sum(ru) / len(ru) if ru else None,
            "trained_builds": len(tr), "retrain_every": miner.retrain_every,
            "nlist": getattr(miner.retriever.index, "nlist", None),
            "nprobe": getattr(miner.retriever.index, "nprobe", None),
            "mine_s": mine_s, "mine_ms_per_step": 1000 * mine_s / S,
            "rest_ms_per_step": 1000 * (total - rebuild - mine_s) / S,
            "share": (rebuild + mine_s) / total, "share_rebuild": rebuild / total, "share_mine": mine_s / total,
            "index": type(miner.retriever).__name__, "load_start": l0, "load_end": C.load(),
            "peak_rss_gib": round(C.peak_rss_bytes() / 2**30, 2), "threads": C.threads()}


def quality_case(case: dict) -> dict:
    """Train on a real dataset with one head setting and evaluate on test (own process)."""
    import lightning as L
    import torch

    from recsys.data.datamodule import InteractionDataModule
    from recsys.eval.evaluate import evaluate
    from recsys.model.heads import HardNegativeSoftmax, InBatchSoftmax
    from recsys.model.module import TwoTowerModule
    from recsys.model.towers import ItemTower, QueryTower

    L.seed_everything(0, verbose=False)
    dm = InteractionDataModule(dataset=case["dataset"], batch_size=256, max_history=50)
    R = case["refresh_every"]
    head = InBatchSoftmax() if R is None else HardNegativeSoftmax(num_hard=16, refresh_every=R)
    module = TwoTowerModule(schema=dm.schema, query_tower=partial(QueryTower, dim=C.D, sparse=False),
                            item_tower=partial(ItemTower, dim=C.D, sparse=False), head=head,
                            dense_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=case["epochs"], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    t = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_s = time.perf_counter() - t
    res = evaluate(module, dm, split="test", ks=(10, 20))
    m = res.metrics
    return {"head": "inbatch" if R is None else "hard", "refresh_every": R if R is not None else "-",
            "epochs": case["epochs"], "steps": trainer.global_step, "train_s": train_s,
            "rebuilds": 0 if R is None else head.miner.refresh_count,
            "overhead_share": 0.0 if R is None else (head.miner.mine_seconds + head.miner.refresh_seconds) / train_s,
            "recall@10": m.get("recall@10"), "ndcg@10": m.get("ndcg@10"), "recall@20": m.get("recall@20"),
            "ndcg@20": m.get("ndcg@20"), "load": C.load()}


def run_case(case: dict) -> dict:
    return cost_case(case) if case["part"] == "cost" else quality_case(case)


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-100k", help="real dataset of the quality part (default ml-100k)")
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    quick = args.quick
    rep = C.Report("hard_negative_overhead", quick, C.command_line(), __doc__.split("\n\n")[0])
    N = 100_000 if quick else 1_000_000
    runs = [(500, 1000), (100, 300)] if not quick else [(100, 200)]
    cost = []
    for R, S in runs:
        out = C.run_case("bench.hard_negative_overhead", {"part": "cost", "N": N, "refresh_every": R, "steps": S,
                                                          "threads": args.threads})
        if "error" in out:
            rep.note(f"cost run R={R}: failed: {out['error']}")
            print(out.get("stderr_tail", ""))
            continue
        cost.append(out)
        print(out, flush=True)
    rep.table(f"Measured runs (synthetic N={N:,}, Trainer.fit, default HardNegativeSoftmax)", cost,
              ["N", "refresh_every", "steps", "rebuilds", "index", "nlist", "nprobe", "total_s", "rebuild_s",
               "build_trained_s", "build_reused_s", "embed_s_each", "mine_ms_per_step", "rest_ms_per_step", "share",
               "share_rebuild", "share_mine",
               "load_start", "load_end"])
    if cost:
        # model per interval from the pooled parts (build per rebuild, mine and rest per step):
        # a long run trains the cells once per retrain_every rebuilds
        T_e = sum(c["embed_s_each"] * c["rebuilds"] for c in cost) / sum(c["rebuilds"] for c in cost)
        tr = [c["build_trained_s"] for c in cost if c["build_trained_s"] is not None]
        ru = [c["build_reused_s"] for c in cost if c["build_reused_s"] is not None]
        T_tr = sum(tr) / len(tr)
        T_ru = sum(ru) / len(ru) if ru else T_tr
        r = cost[0]["retrain_every"]
        T_b = T_e + (T_tr + (r - 1) * T_ru) / r
        t_m = sum(c["mine_s"] for c in cost) / sum(c["steps"] for c in cost)
        t_r = sum(c["total_s"] - c["rebuild_s"] - c["mine_s"] for c in cost) / sum(c["steps"] for c in cost)
        model = [{"refresh_every": R, "rebuild_share": (T_b / R) / (T_b / R + t_m + t_r),
                  "mine_share": t_m / (T_b / R + t_m + t_r), "share": (T_b / R + t_m) / (T_b / R + t_m + t_r),
                  "ex_per_s": C.BATCH / (T_b / R + t_m + t_r)} for R in INTERVALS]
        rep.table("Share of training time per refresh interval (from the measured parts)", model,
                  note=f"T_build = {T_b:.1f} s per rebuild in a long run (embed all items {T_e:.1f} s + index: "
                       f"trained {T_tr:.1f} s once per retrain_every = {r} rebuilds, reused cells {T_ru:.1f} s "
                       f"otherwise), t_mine = {1000 * t_m:.0f} ms / step, t_rest = {1000 * t_r:.0f} ms / step.")
        rep.data["model"] = {"T_build_s": T_b, "T_embed_s": T_e, "T_trained_s": T_tr, "T_reused_s": T_ru,
                             "retrain_every": r, "t_mine_s": t_m, "t_rest_s": t_r, "rows": model}
        default = next((c for c in cost if c["refresh_every"] == 500), None)
        if default is not None:
            rep.target(f"rebuild + mining share at N={N:,}, refresh_every=500 (measured)", round(default["share"], 3),
                       "<= 0.25", None if quick else default["share"] <= 0.25,
                       f"rebuild {default['share_rebuild']:.1%} ({default['rebuild_s']:.1f} s), mining "
                       f"{default['share_mine']:.1%} ({default['mine_ms_per_step']:.0f} ms of "
                       f"{1000 * default['total_s'] / default['steps']:.0f} ms per step); {default['rebuilds']} "
                       f"rebuilds in {default['steps']} steps, {default['trained_builds']} with k-means; long run "
                       f"(cells retrained every {r} rebuilds): "
                       f"{next(m['share'] for m in model if m['refresh_every'] == 500):.3f}")
        else:
            m5 = next(r for r in model if r["refresh_every"] == 500)
            rep.target(f"rebuild + mining share at N={N:,}, refresh_every=500 (modelled)", round(m5["share"], 3),
                       "<= 0.25", None, "quick mode: from the measured parts of a shorter run")
    # quality on a real dataset
    epochs = 1 if quick else 10
    quality = []
    for R in ([None, 50] if quick else [None, 10, 50, 200, 1000]):
        out = C.run_case("bench.hard_negative_overhead", {"part": "quality", "dataset": args.dataset,
                                                          "refresh_every": R, "epochs": epochs,
                                                          "threads": args.threads})
        if "error" in out:
            rep.note(f"quality run R={R}: failed: {out['error']}")
            print(out.get("stderr_tail", ""))
            continue
        quality.append(out)
        print(out, flush=True)
    rep.table(f"Quality effect on {args.dataset} (test, full catalogue, {epochs} epochs, batch 256)", quality,
              ["head", "refresh_every", "epochs", "steps", "rebuilds", "train_s", "overhead_share", "recall@10",
               "ndcg@10", "recall@20", "ndcg@20", "load"],
              note="hard = HardNegativeSoftmax(num_hard=16) on top of in-batch negatives with logQ; inbatch = "
                   "the same without hard negatives. Dense Adam (lr 1e-3) as in configs/ml-100k/base.yaml.")
    rep.data.update({"cost": cost, "quality": quality})
    jp, mp = rep.write(args.out)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")
    gc.collect()


if __name__ == "__main__":
    if not C.case_main(run_case):
        main()
