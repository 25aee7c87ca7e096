"""Training throughput (examples / s) of every head against catalogue size N, through the
``recsys fit`` path (Lightning) and a bare PyTorch loop over the same towers and head.

    python -m bench.train_throughput            # N = 2k, 10k, 100k, 1M, and 10M for the O(1) heads
    python -m bench.train_throughput --quick    # N = 10k, 100k, few steps
    python -m bench.train_throughput --shipped  # the five ML-1M configs as shipped (see shipped_main)
    python -m bench.train_throughput --shipped --dataset gowalla  # the Gowalla configs (41k items), shorter windows

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
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--shipped", action="store_true",
                   help="the five ML-1M configs exactly as shipped: fit vs bare loop and a per-step profile")
    p.add_argument("--heads", default=",".join(SHIPPED_HEADS), help="--shipped: comma list of heads")
    p.add_argument("--dataset", default="ml-1m", choices=SHIPPED_DATASETS,
                   help="--shipped: whose configs (default ml-1m, where the targets are; gowalla: records)")
    p.add_argument("--wait-load", type=float, default=None,
                   help="--shipped: before each head wait (up to 20 min) until the 1-minute load is below this "
                        "(default 1.2; --quick 0 = no wait)")
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    if args.shipped:
        return shipped_main(args)
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


# ---- the five ML-1M configs as shipped ---------------------------------------------------------
SHIPPED_HEADS = ("full", "sigmoid", "sampled", "inbatch", "hard")
SHIPPED_DATASETS = ("ml-1m", "gowalla")  # configs/<dataset>/base.yaml + <head>.yaml; the targets are ML-1M's
# Gowalla: shorter windows (its full-softmax step takes ~0.7 s)
SHIPPED_PLAN_GOWALLA = {"warmup": 5, "steps": 15, "rounds": 4, "profile_steps": 15, "bare_warmup": 2}
SHIPPED_PLAN = {  # fit warm-up steps, steps per window, rounds (one fit + one bare window each), profiled steps
    False: {"warmup": 10, "steps": 30, "rounds": 8, "profile_steps": 30, "bare_warmup": 3},
    True: {"warmup": 5, "steps": 10, "rounds": 2, "profile_steps": 10, "bare_warmup": 2},
}
# the per-step breakdown's parts, in report order: exclusive wall time from public hooks only (Lightning
# callbacks, nn.Module forward hooks, tensor gradient hooks, optimizer step hooks); a nested part (the
# item tower inside the head) is paused in its caller's
BETWEEN = "between steps: next batch (DataLoader, PairDataset.__getitems__, pad_rows) + loop"
PARTS = (BETWEEN, "query tower forward", "item tower forward", "head forward (logits, masks, KnownPositives, loss)",
         "backward: head", "backward: towers", "optimizer step")
OTHER = "other (training_step checks and logging, zero_grad, Lightning hooks)"
# cumulative cProfile times (ms / step) of these functions, by (file suffix, function name)
NAMED = {
    ("heads/base.py", "contains"): "KnownPositives.contains", ("heads/base.py", "pairs"): "KnownPositives.pairs",
    ("heads/base.py", "rows"): "KnownPositives.rows", ("data/batches.py", "__getitems__"): "PairDataset.__getitems__",
    ("data/batches.py", "pad_rows"): "pad_rows", ("heads/base.py", "softmax_loss"): "Head.softmax_loss",
    ("heads/base.py", "_get"): "LazyLogs (diagnostics, when read)",
    ("model/mining.py", "mine"): "HardNegativeMiner.mine",
    ("model/mining.py", "refresh_from"): "HardNegativeMiner.refresh_from",
    ("model/module.py", "training_step"): "TwoTowerModule.training_step",
    ("model/optim.py", "zero_grad"): "MultiOptimizer.zero_grad",
    ("autograd/__init__.py", "backward"): "torch.autograd.backward",
}
KNOWN = ("KnownPositives.contains", "KnownPositives.pairs", "KnownPositives.rows")


def wait_quiet(threshold: float, max_wait_s: float = 1200.0, poll_s: float = 30.0) -> dict:
    """Before a measurement on a shared machine: poll until the 1-minute load average is below
    ``threshold`` (0: no wait), at most ``max_wait_s``; returns the wait and the load then."""
    t = time.perf_counter()
    while threshold > 0 and C.load() >= threshold and time.perf_counter() - t < max_wait_s:
        time.sleep(poll_s)
    return {"waited_s": round(time.perf_counter() - t, 1), "load": C.load(), "threshold": threshold}


def shipped_args(head: str, root: str, max_steps: int, dataset: str = "ml-1m") -> list[str]:
    """``recsys fit`` arguments of the shipped config of ``head`` on ``dataset`` (base + head file,
    nothing re-typed), with logger, checkpointing, progress bar and validation off and ``max_steps``."""
    return ["--config", f"configs/{dataset}/base.yaml", "--config", f"configs/{dataset}/{head}.yaml",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
            "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0", f"--trainer.max_steps={max_steps}",
            f"--trainer.default_root_dir={root}"]


class StepClock:
    """Exclusive wall time per part while ``on``: ``enter(part)`` / ``exit()`` (called from hooks)
    charge the time since the last event to the part on top of a stack, so the parts and the rest
    of the step add up to the step."""

    def __init__(self):
        self.on, self.stack, self.t0 = False, [], 0.0
        self.acc: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.handles: list = []

    def _charge(self) -> None:
        t = time.perf_counter()
        if self.stack:
            self.acc[self.stack[-1]] = self.acc.get(self.stack[-1], 0.0) + t - self.t0
        self.t0 = t

    def enter(self, part: str) -> None:
        if self.on:
            self._charge()
            self.stack.append(part)
            self.calls[part] = self.calls.get(part, 0) + 1

    def exit(self) -> None:
        if self.on and self.stack:
            self._charge()
            self.stack.pop()

    def switch(self, old: str, new: str) -> None:
        """Replace ``old`` on top of the stack by ``new`` (the backward pass reaching the towers)."""
        if self.on and self.stack and self.stack[-1] == old:
            self._charge()
            self.stack[-1] = new
            self.calls[new] = self.calls.get(new, 0) + 1

    def install(self, module, trainer) -> None:
        """Forward hooks on the towers and the head (the towers' outputs get a gradient hook: the
        first gradient to reach a tower ends the head's part of the backward pass, as autograd
        runs nodes in reverse creation order), step hooks on the optimizers inside the
        ``MultiOptimizer``. The backward pass and the gap between steps are timed by the
        callback (``ShippedProbe``)."""
        import torch

        def tower_grad(grad):
            self.switch(PARTS[4], PARTS[5])

        def post(part):
            def hook(mod, args, out):
                self.exit()
                if self.on and part != PARTS[3] and torch.is_grad_enabled() and getattr(out, "requires_grad", False):
                    out.register_hook(tower_grad)

            return hook

        for mod, part in ((module.query_tower, PARTS[1]), (module.item_tower, PARTS[2]), (module.head, PARTS[3])):
            self.handles.append(mod.register_forward_pre_hook(lambda m, a, part=part: self.enter(part)))
            self.handles.append(mod.register_forward_hook(post(part)))
        opt = trainer.optimizers[0]
        for o in getattr(opt, "optimizers", [opt]):  # MultiOptimizer.step runs the closure, then these
            self.handles.append(o.register_step_pre_hook(lambda o, a, k: self.enter(PARTS[6])))
            self.handles.append(o.register_step_post_hook(lambda o, a, k: self.exit()))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class ShippedProbe:
    """Lightning callback driving one shipped-config fit: ``warmup`` steps, then ``rounds`` of
    (a fit window of ``steps`` steps, timed between ``on_train_batch_end`` marks; a bare window
    of ``steps`` steps of the plain loop, run from the callback so both share the process, the
    module and the machine's state), then three profiles of ``profile_steps`` fit steps each:
    the ``StepClock`` breakdown, cProfile and torch.profiler."""

    def __init__(self, module, batches, plan: dict):
        self.m, self.batches, self.p = module, batches, plan
        self.fit_s, self.bare_s, self.loads = [], [], []
        self.t_start = None
        self.bare = None
        self.clock = StepClock()
        self.step_marks: list[float] = []
        self.miner0 = None
        self.miner_delta: dict[str, float] = {}
        self.cprofile = self.torch_prof = None
        self.cprofile_s = self.torch_prof_s = None

    # the plain loop: same towers, head and configure_optimizers(), pre-built batches
    def _bare_steps(self, n: int) -> float:
        import torch

        m = self.m
        if self.bare is None:
            opt = m.configure_optimizers()
            self.bare = {"opt": opt["optimizer"] if isinstance(opt, dict) else opt, "i": 0}
        opt, miner = self.bare["opt"], getattr(m.head, "miner", None)
        t = time.perf_counter()
        with torch.enable_grad():
            for _ in range(n):
                b = self.batches[self.bare["i"] % len(self.batches)]
                self.bare["i"] += 1
                if miner is not None and miner.due():  # what MinerRefresh does in fit
                    miner.refresh_from(m.item_tower)
                out = m.head(m.query_tower(b), b, m.item_tower)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
        return time.perf_counter() - t

    def _miner_totals(self) -> dict | None:
        miner = getattr(self.m.head, "miner", None)
        if miner is None:
            return None
        return {"mine_s": miner.mine_seconds, "refresh_s": miner.refresh_seconds + miner.embed_seconds,
                "refreshes": miner.refresh_count}

    def _callback(self):
        import lightning as L

        probe, clock = self, self.clock

        class Probe(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                clock.exit()  # BETWEEN ends

            def on_before_backward(self, trainer, pl_module, loss):
                clock.enter(PARTS[4])

            def on_after_backward(self, trainer, pl_module):
                clock.exit()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                probe.on_step(trainer)

        return Probe()

    def on_step(self, trainer) -> None:
        now = time.perf_counter()
        g, p = trainer.global_step, self.p
        W, S, R, P = p["warmup"], p["steps"], p["rounds"], p["profile_steps"]
        end_windows = W + R * S
        if g == W:
            self._bare_steps(p["bare_warmup"])  # optimizer state, first-call allocations
            self.t_start = time.perf_counter()  # the first fit window starts after this callback's work
        elif W < g <= end_windows and (g - W) % S == 0:
            self.fit_s.append(now - self.t_start)
            self.bare_s.append(self._bare_steps(S))
            self.loads.append(C.load())
            print(f"  window {len(self.fit_s)}: fit {C.BATCH * S / self.fit_s[-1]:.0f} ex/s, bare "
                  f"{C.BATCH * S / self.bare_s[-1]:.0f} ex/s, load {self.loads[-1]}", flush=True)
            self.t_start = time.perf_counter()  # the next fit window starts after the bare one
        # profiles: (end, end + P] hooks, (end + P, end + 2P] cProfile, (end + 2P, end + 3P] torch.profiler
        if end_windows < g <= end_windows + P:
            self.step_marks.append(now)
        if g == end_windows:
            self.clock.install(self.m, trainer)
            self.miner0 = self._miner_totals()
            self.clock.on = True
            self.step_marks.append(time.perf_counter())  # after the last bare window
            self.clock.t0 = self.step_marks[-1]
            self.clock.enter(BETWEEN)
        elif g == end_windows + P:
            self.clock.exit()
            self.clock.on = False
            self.clock.remove()
            m1 = self._miner_totals()
            if m1 is not None:
                self.miner_delta = {k: m1[k] - self.miner0[k] for k in m1}
            import cProfile

            self.cprofile = cProfile.Profile()
            self.cprofile_s = [time.perf_counter()]
            self.cprofile.enable()
        elif g == end_windows + 2 * P:
            self.cprofile.disable()
            self.cprofile_s.append(time.perf_counter())
            from torch.profiler import ProfilerActivity, profile

            self.torch_prof = profile(activities=[ProfilerActivity.CPU])
            self.torch_prof_s = [time.perf_counter()]
            self.torch_prof.__enter__()
        elif g == end_windows + 3 * P:
            self.torch_prof.__exit__(None, None, None)
            self.torch_prof_s.append(time.perf_counter())
            trainer.should_stop = True
        elif end_windows < g < end_windows + P:
            self.clock.enter(BETWEEN)  # until the next on_train_batch_start


def _cprofile_rows(prof, steps: int, top: int = 15) -> tuple[list[dict], dict]:
    """Top functions by self time (ms / step), and the cumulative time of the ``NAMED`` ones."""
    import pstats

    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())  # sum of self times = profiled time
    rows = []
    for (fn, line, name), (_cc, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]:
        where = name if fn == "~" else f"{'/'.join(fn.split('/')[-2:])}:{line}({name})"
        rows.append({"function": where, "calls_per_step": round(nc / steps, 1), "self_ms_per_step": tt / steps * 1e3,
                     "self_share": tt / total, "cum_ms_per_step": ct / steps * 1e3})
    named = {}
    for (fn, _line, name), (*_, ct, _callers) in st.stats.items():
        key = NAMED.get(("/".join(fn.split("/")[-2:]), name))
        if key:
            named[key] = named.get(key, 0.0) + ct / steps * 1e3
    return rows, {"total_ms_per_step": total / steps * 1e3, "cum_ms_per_step": named}


def _torch_prof_rows(prof, steps: int, top: int = 15) -> tuple[list[dict], float]:
    ev = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    total = sum(e.self_cpu_time_total for e in ev)
    rows = [{"operator": e.key[:70], "calls_per_step": round(e.count / steps, 1),
             "self_ms_per_step": e.self_cpu_time_total / steps / 1e3, "self_share": e.self_cpu_time_total / total}
            for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:top]]
    return rows, total / steps / 1e3


def run_shipped(case: dict) -> dict:
    """One head's shipped ML-1M config (runs in its own process): CLI-built module, data module
    and trainer; fit and bare windows alternating, then the three profiles."""
    import shutil
    import tempfile

    import torch
    import yaml

    from recsys.commands.compare import make_cli
    from recsys.data.batches import PairDataset

    head, dataset = case["head"], case.get("dataset", "ml-1m")
    plan = SHIPPED_PLAN_GOWALLA if dataset == "gowalla" and not case["quick"] else SHIPPED_PLAN[case["quick"]]
    W, S, R, P = plan["warmup"], plan["steps"], plan["rounds"], plan["profile_steps"]
    root = tempfile.mkdtemp(prefix="recsys-bench-shipped-")
    try:
        t = time.perf_counter()
        cli = make_cli(shipped_args(head, root, W + R * S + 3 * P + 1, dataset))
        cli_s = time.perf_counter() - t
        model, dm, trainer = cli.model, cli.datamodule, cli.trainer
        data = dm.data
        B, H = dm.batch_size, dm.max_history
        ds = PairDataset(data, H, dm.seed)
        perm = np.random.default_rng(0).permutation(len(ds))
        batches = [ds.__getitems__(perm[i * B:(i + 1) * B]) for i in range(32)]
        probe = ShippedProbe(model, batches, plan)
        trainer.callbacks.append(probe._callback())
        load0 = C.load()
        t = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        fit_wall = time.perf_counter() - t
    finally:
        shutil.rmtree(root, ignore_errors=True)
    steps_per_epoch = math.ceil(len(ds) / B)
    rf, rb = C.rate_summary(probe.fit_s, B * S), C.rate_summary(probe.bare_s, B * S)
    cfg = yaml.safe_load(model.recsys_config or "{}") or {}
    mcfg = cfg.get("model", {})
    step_ms = float(np.diff(probe.step_marks).sum()) / P * 1e3  # the hooked steps, unprofiled
    parts = {k: probe.clock.acc.get(k, 0.0) / P * 1e3 for k in PARTS}
    parts[OTHER] = step_ms - sum(parts.values())
    cp_rows, cp_named = _cprofile_rows(probe.cprofile, P)
    cum = cp_named["cum_ms_per_step"]
    cp_step_ms = (probe.cprofile_s[1] - probe.cprofile_s[0]) / P * 1e3
    breakdown = [{"part": k, "ms_per_step": v, "share": v / step_ms,
                  "calls_per_step": probe.clock.calls.get(k, 0) / P if k != OTHER else None} for k, v in parts.items()]
    inner = [(f"  of which {k} (cProfile)", cum.get(k, 0.0)) for k in (*KNOWN, "LazyLogs (diagnostics, when read)")]
    inner += [(f"  of which {k} (cProfile)", cum.get(k, 0.0)) for k in ("PairDataset.__getitems__", "pad_rows")]
    if probe.miner_delta:
        inner += [("  of which hard: mining (miner timer)", probe.miner_delta["mine_s"] / P * 1e3),
                  ("  hard: index refreshes (miner timer)", probe.miner_delta["refresh_s"] / P * 1e3)]
    breakdown += [{"part": k, "ms_per_step": v, "share": v / step_ms, "calls_per_step": None} for k, v in inner]
    tp_rows, tp_total = _torch_prof_rows(probe.torch_prof, P)
    opt = trainer.optimizers[0]
    known_ms = sum(cum.get(k, 0.0) for k in KNOWN)
    row = {
        "head": head, "head_class": type(model.head).__name__, "fit_ex_s": rf["median"], "bare_ex_s": rb["median"],
        "fit_over_bare": rf["median"] / rb["median"], "fit_best": rf["best"], "bare_best": rb["best"],
        "fit_over_bare_best": rf["best"] / rb["best"], "fit_step_ms": B * 1e3 / rf["median"],
        "bare_step_ms": B * 1e3 / rb["median"], "steps_per_window": S, "windows": len(probe.fit_s),
        "windows_fit": rf["windows"], "windows_bare": rb["windows"], "load_start": load0,
        "load_end": C.load(), "loads": probe.loads,
        "hooked_step_ms": step_ms, "cprofile_step_ms": cp_step_ms,
        "torch_prof_step_ms": (probe.torch_prof_s[1] - probe.torch_prof_s[0]) / P * 1e3,
        "known_ms": known_ms, "contains_ms": cum.get("KnownPositives.contains", 0.0),
        "known_share": known_ms / step_ms, "known_share_in_cprofile": known_ms / cp_step_ms,
        "batch_ms": cum.get("PairDataset.__getitems__", 0.0), "batch_share": cum.get("PairDataset.__getitems__", 0.0)
        / step_ms, "head_fwd_share": parts[PARTS[3]] / step_ms,
        "towers_share": (parts[PARTS[1]] + parts[PARTS[2]] + parts[PARTS[5]]) / step_ms,
        "optimizer_share": parts[PARTS[6]] / step_ms,
    }
    return {
        "row": row, "breakdown": breakdown, "cprofile": cp_rows, "cprofile_named": cp_named,
        "torch_profiler": tp_rows, "torch_profiler_self_ms_per_step": tp_total, "miner": probe.miner_delta,
        "config": {"head": mcfg.get("head"), "query_tower": mcfg.get("query_tower"),
                   "item_tower": mcfg.get("item_tower"), "dense_optimizer": mcfg.get("dense_optimizer"),
                   "sparse_optimizer": mcfg.get("sparse_optimizer"), "lr_scheduler": mcfg.get("lr_scheduler"),
                   "prior_grid": mcfg.get("prior_grid"), "data": cfg.get("data"), "optimizer": repr(opt),
                   "batch_size": B, "max_history": H, "train_pairs": len(ds), "steps_per_epoch": steps_per_epoch,
                   "n_users": data.n_users, "n_items": data.n_items,
                   "trainer_callbacks": [type(c).__name__ for c in trainer.callbacks]},
        "plan": plan, "cli_seconds": cli_s, "fit_wall_seconds": fit_wall, "threads": C.threads(),
        "torch_threads": torch.get_num_threads(),
    }


def shipped_main(args) -> None:
    """``--shipped``: each head's shipped config of ``--dataset`` in its own process; writes
    train_throughput_shipped (ML-1M, with the targets) or train_throughput_shipped_<dataset>."""
    quick, dataset = args.quick, args.dataset
    heads = [h for h in args.heads.split(",") if h]
    bad = sorted(set(heads) - set(SHIPPED_HEADS))
    if bad:
        raise SystemExit(f"--heads {bad}: the shipped heads are {list(SHIPPED_HEADS)}")
    name = "train_throughput_shipped" + ("" if dataset == "ml-1m" else "_" + dataset.replace("-", "_"))
    rep = C.Report(name, quick, C.command_line(), shipped_description(dataset))
    results, rows = {}, []
    threshold = args.wait_load if args.wait_load is not None else (0.0 if quick else 1.2)
    for h in heads:
        wait = wait_quiet(threshold)
        print(f"== {h} (load {C.load()}, waited {wait['waited_s']} s)", flush=True)
        out = C.run_case("bench.train_throughput", {"shipped": True, "head": h, "quick": quick, "dataset": dataset,
                                                    "threads": args.threads}, timeout=3600, as_user=True)
        out["wait"] = wait
        if "error" in out:
            rep.note(f"{h}: failed: {out['error']}")
            print(out.get("stderr_tail", ""))
            continue
        results[h] = out
        rows.append({**out["row"], "waited_s": wait["waited_s"]})
    rep.data = results
    _shipped_targets(rep, results, record=quick or dataset != "ml-1m", dataset=dataset)
    cols = ["head", "head_class", "fit_ex_s", "bare_ex_s", "fit_over_bare", "fit_best", "bare_best",
            "fit_over_bare_best", "fit_step_ms", "bare_step_ms", "windows", "steps_per_window", "load_start",
            "load_end", "waited_s"]
    rep.table("Throughput (examples / s, median window; best window beside it)", rows, cols,
              note="fit = Trainer.fit of the CLI-built module, data module and trainer (logger, checkpointing, "
                   "progress bar and validation off), steps timed between on_train_batch_end marks after the "
                   "warm-up, DataLoader included; bare = the same module's towers, head and "
                   "configure_optimizers() over 32 pre-built batches. Fit and bare windows alternate inside one "
                   "fit (the bare window runs from the timing callback).")
    share_cols = ["head", "hooked_step_ms", "known_ms", "known_share", "contains_ms", "batch_ms", "batch_share",
                  "head_fwd_share", "towers_share", "optimizer_share", "cprofile_step_ms", "known_share_in_cprofile",
                  "torch_prof_step_ms"]
    rep.table("Per-step shares of the fit path", rows, share_cols,
              note="hooked_step_ms: mean fit step of the breakdown's steps (hooks only, no profiler); known_ms: "
                   "cumulative cProfile time of every KnownPositives call (contains, pairs, rows) per step, "
                   "known_share = known_ms / hooked_step_ms (known_share_in_cprofile: over the cProfile'd step, "
                   "which cProfile slows); contains_ms: KnownPositives.contains alone; batch_ms: "
                   "PairDataset.__getitems__ (pad_rows included); head_fwd_share: the head's forward without the "
                   "item tower (its logits, masks, KnownPositives lookups, loss); towers_share: both towers' forward "
                   "and backward; cprofile_step_ms / torch_prof_step_ms: the step under each profiler.")
    for h, out in results.items():
        P = out["plan"]["profile_steps"]
        rep.table(f"{h}: per-step breakdown of the fit path ({P} steps, exclusive wall time)",
                  out["breakdown"], ["part", "ms_per_step", "share", "calls_per_step"],
                  note="Parts timed by public hooks (Lightning callbacks, nn.Module forward hooks, tensor gradient "
                       "hooks, optimizer step hooks): a nested part (the item tower inside the head) is paused in "
                       "its caller's. backward: head = from on_before_backward until the first gradient reaches a "
                       "tower output (autograd runs the head's nodes first), backward: towers = the rest. The "
                       "'of which' rows are cumulative cProfile times (the next " + str(P) + " steps) inside the "
                       "parts above, shown against the same step.")
        rep.table(f"{h}: torch.profiler, top operators by self CPU time", out["torch_profiler"],
                  ["operator", "calls_per_step", "self_ms_per_step", "self_share"])
        rep.table(f"{h}: cProfile, top functions by self time", out["cprofile"],
                  ["function", "calls_per_step", "self_ms_per_step", "self_share", "cum_ms_per_step"],
                  note="cumulative ms / step of named functions: " + ", ".join(
                      f"{k} {v:.2f}" for k, v in out["cprofile_named"]["cum_ms_per_step"].items()))
    if results:
        any_out = next(iter(results.values()))
        rep.note(f"Data: {dataset} as configs/{dataset}/base.yaml loads it ({any_out['config']['n_users']:,} users, "
                 f"{any_out['config']['n_items']:,} items, {any_out['config']['train_pairs']:,} train pairs, "
                 f"{any_out['config']['steps_per_epoch']} steps per epoch at batch {any_out['config']['batch_size']}"
                 f", history bag {any_out['config']['max_history']}). Windows stay inside the first epoch.")
    jp, mp = rep.write(args.out)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")


def shipped_description(dataset: str) -> str:
    """The report's description for the shipped configs of ``dataset``."""
    name = {"ml-1m": "ML-1M", "gowalla": "Gowalla"}.get(dataset, dataset)
    return (
        f"Training throughput of the five {name} configs exactly as shipped (configs/{dataset}/base.yaml + "
        "full / sigmoid / sampled / inbatch / hard .yaml, built by recsys.commands.compare.make_cli: known-positive "
        "masks, history bag 100, item bias, prior grid, ExponentialLR, dense Adam): the fit path (Trainer.fit, "
        "logger / checkpointing / progress bar / validation off) against a bare PyTorch loop over pre-built batches "
        "with the same towers, head and configure_optimizers(), windows alternating; then a per-step profile of the "
        "fit path (exclusive wall time per part, torch.profiler operators, cProfile functions). Each head runs in its "
        "own process.")


def _shipped_targets(rep, results: dict, record: bool, dataset: str = "ml-1m") -> None:
    """The targets (ML-1M, full mode); ``record`` (quick mode, another dataset): the same figures, not judged."""
    for h, out in results.items():
        r = out["row"]
        rep.target(f"{h}: fit path / bare loop (shipped {dataset} config)", round(r["fit_over_bare"], 3), ">= 0.8",
                   None if record else r["fit_over_bare"] >= 0.8,
                   f"fit {r['fit_ex_s']:.0f} vs bare {r['bare_ex_s']:.0f} ex/s (best windows "
                   f"{r['fit_over_bare_best']:.3f}); load {r['load_start']} -> {r['load_end']}")
    if "inbatch" in results:
        r = results["inbatch"]["row"]
        rep.target(f"inbatch: fit path examples / s on 2 cores (shipped {dataset} config)", round(r["fit_ex_s"]),
                   ">= 40000", None if record else r["fit_ex_s"] >= 40_000,
                   f"median of {r['windows']} windows (best {r['fit_best']:.0f}, bare {r['bare_ex_s']:.0f}); "
                   f"load {r['load_start']} -> {r['load_end']}")
    for h, out in results.items():
        r = out["row"]
        use = "labels (multi-hot), not a mask" if h == "sigmoid" else "known-positive mask"
        rep.target(f"{h}: KnownPositives share of a fit step", round(r["known_share"], 4), "<= 0.10",
                   None if record else r["known_share"] <= 0.10,
                   f"{use}; {r['known_ms']:.2f} ms (contains {r['contains_ms']:.2f}) of a "
                   f"{r['hooked_step_ms']:.1f} ms step ({r['known_share_in_cprofile']:.1%} of the cProfile'd step)")


def _case(case: dict) -> dict:
    """One subprocess case: a shipped ML-1M head or the synthetic sizes."""
    return run_shipped(case) if case.get("shipped") else run_sizes(case)


if __name__ == "__main__":
    if not C.case_main(_case):
        main()
