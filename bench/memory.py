"""Peak resident memory of training: sparse id tables with SparseAdam or row-wise AdaGrad
at N = 10M, bytes per item, and full softmax at N = 1M (chunked log-sum-exp).

    python -m bench.memory            # 1M and 10M items, full softmax at 1M
    python -m bench.memory --quick    # 100k and 1M items, full softmax at 100k

Every case runs ``Trainer.fit`` for a few steps in its own process. Peak RSS is the
kernel's high-water mark (VmHWM): ``peak_process`` over the whole process (data generation
included) and ``peak_training`` with the mark reset (``/proc/self/clear_refs``) once the
data is built, i.e. model + optimizer state + training steps on top of the data.
Bytes per item = the difference of training peaks between two catalogue sizes divided by
the difference of N (the marginal cost of one more item), next to the analytic count.

Towers: ``ids`` = query tower with user id + user features (no history bag), item tower
with the item id only: one N x D table (``InBatchSoftmax``, the module's default head).
``default`` = the default towers (item id + genres; user id + history bag + features),
whose history bag is a second N x D table (``SampledSoftmax``).

Sparse optimiser (``opt``): ``adam`` = ``recsys.model.optim.SparseAdam`` (the module default; two
dense N x D moments per table), ``rowwise`` = ``recsys.model.optim.RowWiseAdagrad`` (one float per
row), ``rowadam`` = ``recsys.model.optim.RowWiseAdam`` (the full first moment + one float per row),
``rowadam_nom`` = ``RowWiseAdam(momentum=False)`` (one float per row).
"""

from __future__ import annotations

import time

from bench import common as C

OPTS = ("adam", "rowwise", "rowadam", "rowadam_nom")
ANALYTIC = {"adam": 3 * C.D * 4, "rowwise": (C.D + 1) * 4, "rowadam": (2 * C.D + 1) * 4,
            "rowadam_nom": (C.D + 1) * 4}  # bytes per row of an N x D table: weights + optimizer state


def run_case(case: dict) -> dict:
    import lightning as L
    import torch

    N, steps = case["N"], case["steps"]
    rss0 = C.rss_bytes()
    t = time.perf_counter()
    ids = case["tower"] == "ids"
    data = C.synthetic_data(N, n_clusters=64, item_features=not ids)
    data_s = time.perf_counter() - t
    peak_data = C.peak_rss_bytes()
    rss_data = C.rss_bytes()
    reset = C.reset_peak_rss()
    tower_kw = {"q_use_bag": False, "i_use_features": False} if ids else {}
    H = 0 if ids else 50
    dm = C.make_datamodule(data, max_history=H)
    torch.manual_seed(0)
    module = C.make_module(data, case["head"], **tower_kw)
    opt_name = case.get("opt", "adam")
    if opt_name == "rowwise":
        from recsys.model.optim import RowWiseAdagrad

        module.sparse_optimizer = lambda params: RowWiseAdagrad(params, lr=0.05)
    elif opt_name in ("rowadam", "rowadam_nom"):
        from recsys.model.optim import RowWiseAdam

        module.sparse_optimizer = lambda params: RowWiseAdam(params, lr=0.01, momentum=opt_name == "rowadam")
    rss_model = C.rss_bytes()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0)
    t = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - t
    sparse_rows = sum(p.shape[0] for m in module.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
                      and m.sparse and N <= m.weight.shape[0] <= N + 1 for p in [m.weight])
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    state = 0
    opt = trainer.optimizers[0]
    for o in getattr(opt, "optimizers", [opt]):
        for s in o.state.values():
            state += sum(v.numel() * v.element_size() for v in s.values() if torch.is_tensor(v))
    gib = 2**30
    return {**case, "rss_start_gib": rss0 / gib, "data_s": data_s, "rss_after_data_gib": rss_data / gib,
            "peak_data_build_gib": peak_data / gib, "rss_after_model_gib": rss_model / gib,
            "peak_training_gib": C.peak_rss_bytes() / gib if reset else None,
            "peak_process_gib": max(peak_data, C.peak_rss_bytes()) / gib, "hwm_reset": reset,
            "param_gib": params / gib, "optimizer_state_gib": state / gib, "n_by_d_tables": sparse_rows // N,
            "fit_s": fit_s, "steps": steps, "load": C.load(), "threads": C.threads()}


def main(argv=None) -> None:
    args = C.parser(__doc__.splitlines()[0]).parse_args(argv)
    C.set_threads(args.threads)
    quick = args.quick
    rep = C.Report("memory", quick, C.command_line(), __doc__.split("\n\n")[0])
    small, big = (100_000, 1_000_000) if quick else (1_000_000, 10_000_000)
    cases = [{"N": n, "tower": "ids", "head": "inbatch", "steps": 20, "opt": o}
             for o in ("adam", "rowwise") for n in (small, big)]
    cases += [{"N": n, "tower": "ids", "head": "inbatch", "steps": 20, "opt": "rowadam"} for n in (small, big)]
    cases += [{"N": n, "tower": "default", "head": "sampled", "steps": 20, "opt": o}
              for o in ("adam", "rowwise", "rowadam", "rowadam_nom") for n in (small, 3 * small)]
    cases += [{"N": big, "tower": "default", "head": "sampled", "steps": 20, "opt": "rowadam_nom"}]
    cases += [{"N": small, "tower": "default", "head": "full", "steps": 3, "opt": "adam"}]
    rows = []
    for c in cases:
        out = C.run_case("bench.memory", {**c, "threads": args.threads})
        if "error" in out:
            rep.note(f"{c}: failed: {out['error']}")
            print(out.get("stderr_tail", ""))
            continue
        rows.append(out)
        print({k: out[k] for k in ("N", "tower", "head", "opt", "peak_training_gib", "peak_process_gib")}, flush=True)
    rep.table("Peak resident memory (GiB) per case", rows,
              ["N", "tower", "head", "opt", "steps", "n_by_d_tables", "param_gib", "optimizer_state_gib",
               "rss_after_data_gib", "peak_data_build_gib", "rss_after_model_gib", "peak_training_gib",
               "peak_process_gib", "fit_s", "load"],
              note="n_by_d_tables = sparse id tables with N rows (item ids, and the history bag in the default "
                   "towers); optimizer_state = SparseAdam exp_avg + exp_avg_sq (dense, 2 x each table) for "
                   "opt = adam, one float per row for rowwise and rowadam_nom, the first moment + one float per "
                   "row for rowadam.")

    def find(N, tower, head, opt="adam"):
        return next((r for r in rows if r["N"] == N and r["tower"] == tower and r["head"] == head
                     and r.get("opt", "adam") == opt), None)

    per_item = []
    for tower, head, n1, n2, opt in [(t, h, a, b, o) for o in OPTS for t, h, a, b in
                                     (("ids", "inbatch", small, big), ("default", "sampled", small, 3 * small))]:
        a, b = find(n1, tower, head, opt), find(n2, tower, head, opt)
        if a and b:
            bpi = (b["peak_training_gib"] - a["peak_training_gib"]) * 2**30 / (n2 - n1)
            proc = (b["peak_process_gib"] - a["peak_process_gib"]) * 2**30 / (n2 - n1)
            tables = a["n_by_d_tables"]
            per_item.append({"tower": tower, "opt": opt, "sizes": f"{n1:,} -> {n2:,}", "bytes_per_item_training": bpi,
                             "bytes_per_item_process": proc,
                             "analytic_tables_bytes": tables * ANALYTIC[opt],
                             "predicted_10M_gib": b["peak_process_gib"] + proc * (10_000_000 - n2) / 2**30})
    rep.table("Bytes per item (marginal: difference of peaks / difference of N)", per_item,
              note="analytic_tables_bytes = N x D tables x (weights + optimizer state) x 4 bytes / N: 3 x D x 4 "
                   "with SparseAdam's two moments, (D + 1) x 4 with row-wise AdaGrad or row-wise Adam without "
                   "momentum, (2 D + 1) x 4 with row-wise Adam.")
    rep.data = {"rows": rows, "per_item": per_item}
    names = {"adam": "SparseAdam", "rowwise": "row-wise AdaGrad", "rowadam": "row-wise Adam",
             "rowadam_nom": "row-wise Adam without momentum"}
    for opt in OPTS:
        ten = find(big, "ids", "inbatch", opt)
        if ten and not quick:
            rep.target(f"peak RSS training at N=10M, D=64, {names[opt]} (one N x D table, whole process)",
                       f"{ten['peak_process_gib']:.2f} GiB", "<= 8 GiB", ten["peak_process_gib"] <= 8,
                       f"training phase (HWM reset after data) {ten['peak_training_gib']:.2f} GiB; "
                       f"params {ten['param_gib']:.2f} + optimizer state {ten['optimizer_state_gib']:.2f} GiB")
        lean = next((r for r in per_item if r["tower"] == "ids" and r["opt"] == opt), None)
        if lean:
            rep.target(f"bytes per item (one N x D table, {names[opt]})", round(lean["bytes_per_item_process"]),
                       "report", None,
                       f"{lean['bytes_per_item_training']:.0f} B/item in the training phase; analytic tables "
                       f"{lean['analytic_tables_bytes']} B")
        dflt = next((r for r in per_item if r["tower"] == "default" and r["opt"] == opt), None)
        if dflt:
            rep.target(f"default towers (history bag) at N=10M, {names[opt]}, predicted",
                       f"{dflt['predicted_10M_gib']:.1f} GiB", "<= 8 GiB",
                       None if quick else dflt["predicted_10M_gib"] <= 8,
                       f"{dflt['bytes_per_item_training']:.0f} B/item measured {dflt['sizes']}; two N x D tables")
    direct = find(big, "default", "sampled", "rowadam_nom")
    if direct and not quick:
        rep.target(f"default towers (id + history bag tables) at N={big:,}, D=64, an Adam-family optimizer "
                   "(row-wise Adam, no momentum), measured", f"{direct['peak_process_gib']:.2f} GiB", "<= 8 GiB",
                   direct["peak_process_gib"] <= 8,
                   f"training phase {direct['peak_training_gib']:.2f} GiB; params {direct['param_gib']:.2f} + "
                   f"optimizer state {direct['optimizer_state_gib']:.2f} GiB")
    full = next((r for r in rows if r["head"] == "full"), None)
    if full:
        Bn = C.BATCH * full["N"] * 4 / 2**30
        rep.target(f"full softmax peak at N={full['N']:,} (chunked)", f"{full['peak_process_gib']:.2f} GiB",
                   "report (bounded)", None,
                   f"training phase {full['peak_training_gib']:.2f} GiB; unchunked (B, N) logits alone would be "
                   f"{Bn:.1f} GiB (x2 with their gradient)")
    jp, mp = rep.write(args.out)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    if not C.case_main(run_case):
        main()
