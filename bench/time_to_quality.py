"""Time to quality on ML-1M: wall time from the start of ``Trainer.fit`` until validation
NDCG@10 first reaches that of EASE and of ALS, for each head's shipped config.

    python -m bench.time_to_quality            # the five heads, probe every K = 100 steps
    python -m bench.time_to_quality --quick    # in-batch only, capped at one epoch

Each head runs in its own process, built exactly as ``recsys compare`` builds a run:
``configs/ml-1m/base.yaml`` + ``configs/ml-1m/<head>.yaml`` + compare's run overrides
(``recsys.commands.compare.run_overrides``: seed 0, CSV logger, checkpoints, no progress
bar), through ``make_cli``. Before the clock starts, the process fits EASE and ALS on the same
``RecData`` with the settings compare uses (``make_baseline('ease')``, ``make_baseline('als',
seed=0)``: their defaults) and scores them on ``valid`` with ``recsys.eval.evaluate.evaluate``;
their validation NDCG@10 are the two levels.

The shipped configs validate once per epoch (658 steps). To resolve below an epoch a callback
evaluates validation NDCG@10 every K steps (``--every``, default 100 steps ~ 1/6.6 epoch)
exactly as the fit's own validation computes ``val/ndcg@10``: the query tower on the
validation queries, the item tower with every weight of the popularity-prior grid, the best
NDCG@10 over the grid (``TwoTowerModule._log_eval``; checked against the fit's value at every
epoch end; that check repeats the fit's own validation, so its time is on no clock: wall
time minus the checks is the wall time of a fit that validated every K steps). The probe
draws no random numbers and changes no state, so training follows the shipped fit step for
step. Three clocks per evaluation point:

* ``incl_s``: wall time from the start of fit to the end of the evaluation that shows the
  level, every evaluation included (the probe's and the per-epoch validation): what a user
  validating every K steps waits;
* ``excl_s``: the same without the probe's evaluations, at the training state evaluated: the
  shipped fit's own clock (its per-epoch validation included);
* ``train_s``: without any evaluation, pure training (data loading and Lightning included).

A head's run stops once both levels are reached, at the shipped ``max_epochs`` (8), at early
stopping (patience 2), or at the cap (``--cap-minutes``, 15); a level not reached by then is
recorded as not reached.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common as C
from bench.train_throughput import wait_quiet

HEADS = ("full", "sigmoid", "sampled", "inbatch", "hard")
BASE = "configs/ml-1m/base.yaml"
EVERY = 100  # probe interval in training steps
CAP_MINUTES = 15.0
TARGETS = {"ease": 60.0, "als": 30.0}  # in-batch: seconds to each level


def val_ndcg(model, dm) -> float:
    """Validation NDCG@10 as the fit's validation computes ``val/ndcg@10``
    (``TwoTowerModule.score_queries``: the best over the popularity-prior grid, the stored
    weight without a grid), full catalogue, seen items excluded; the model's state unchanged."""
    from recsys.eval.evaluate import embed_queries

    was = model.training
    model.eval()
    try:
        users, xq = embed_queries(model.query_tower, dm.eval_dataloader("valid"))
        res, _ = model.score_queries(users, xq, dm.data, "valid", choose_prior=True)
        return res.metrics["ndcg@10"]
    finally:
        model.train(was)


class QualityProbe:
    """Callback state: evaluation points, the three clocks, the stop rule."""

    def __init__(self, model, dm, every: int, levels: dict, cap_s: float):
        self.m, self.dm, self.every, self.levels, self.cap_s = model, dm, every, levels, cap_s
        self.t0 = None
        self.probe_s = 0.0  # time spent in this probe's evaluations every K steps
        self.check_s = 0.0  # time spent in the epoch-end checks (on no clock: not an evaluation a user runs)
        self.val_s = 0.0  # time spent in the fit's own per-epoch validation
        self.points: list[dict] = []
        self.checks: list[dict] = []  # probe vs the fit's own val/ndcg@10 at epoch ends
        self.reached: dict[str, dict] = {}
        self.stop_reason = None
        self._val_start = None

    def _record(self, trainer, source: str, ndcg: float, incl: float, excl: float, train: float) -> None:
        pt = {"step": int(trainer.global_step), "epoch": int(trainer.current_epoch), "source": source,
              "ndcg@10": float(ndcg), "incl_s": incl, "excl_s": excl, "train_s": train, "load": C.load()}
        self.points.append(pt)
        for name, level in self.levels.items():
            if name not in self.reached and ndcg >= level:
                self.reached[name] = pt
        print(f"  step {pt['step']} ({source}): ndcg@10 {ndcg:.4f}, incl {incl:.1f} s, excl {excl:.1f} s, "
              f"train {train:.1f} s, load {pt['load']}", flush=True)
        if len(self.reached) == len(self.levels):
            self.stop_reason = "both levels reached"
            trainer.should_stop = True
        elif incl > self.cap_s:
            self.stop_reason = f"cap ({self.cap_s / 60:.0f} min)"
            trainer.should_stop = True

    def _wall(self, t: float) -> float:
        """Seconds from the start of fit to ``t`` without the epoch-end checks: the wall clock
        of a fit that validated every K steps (``incl_s``)."""
        return t - self.t0 - self.check_s

    def on_train_batch_end(self, trainer) -> None:
        if trainer.global_step % self.every or trainer.should_stop:
            return
        t = time.perf_counter()
        ndcg = val_ndcg(self.m, self.dm)
        t1 = time.perf_counter()
        excl = self._wall(t) - self.probe_s
        self.probe_s += t1 - t
        self._record(trainer, "probe", ndcg, self._wall(t1), excl, excl - self.val_s)

    def on_validation_start(self, trainer) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer) -> None:
        t1 = time.perf_counter()
        ndcg = float(trainer.callback_metrics.get("val/ndcg@10", float("nan")))
        train = self._wall(self._val_start) - self.probe_s - self.val_s
        self.val_s += t1 - self._val_start
        incl = self._wall(t1)
        excl = incl - self.probe_s
        t = time.perf_counter()
        mine = val_ndcg(self.m, self.dm)  # the probe's number for the same state (not on any clock)
        self.check_s += time.perf_counter() - t
        self.checks.append({"epoch": int(trainer.current_epoch), "fit_val_ndcg@10": ndcg, "probe_ndcg@10": mine,
                            "equal": ndcg == mine or abs(ndcg - mine) < 1e-6})
        self._record(trainer, "epoch validation", ndcg, incl, excl, train)

    def callback(self):
        import lightning as L

        probe = self

        class Probe(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                probe.on_train_batch_end(trainer)

            def on_validation_start(self, trainer, pl_module):
                if not trainer.sanity_checking:
                    probe.on_validation_start(trainer)

            def on_validation_end(self, trainer, pl_module):
                if not trainer.sanity_checking:
                    probe.on_validation_end(trainer)

        return Probe()


def run_head(case: dict) -> dict:
    """One head (its own process): baselines, then the fit with the probe."""
    import yaml

    from recsys.commands.compare import make_cli, run_overrides
    from recsys.eval.baselines import make_baseline
    from recsys.eval.evaluate import evaluate

    head = case["head"]
    root = Path(tempfile.mkdtemp(prefix="recsys-bench-ttq-"))
    try:
        run = root / "run.yaml"
        run.write_text(yaml.safe_dump(run_overrides(0, root / "run", case.get("max_epochs")), sort_keys=False))
        t = time.perf_counter()
        cli = make_cli(["--config", BASE, "--config", f"configs/ml-1m/{head}.yaml", "--config", str(run)])
        cli_s = time.perf_counter() - t
        model, dm, trainer = cli.model, cli.datamodule, cli.trainer
        data = dm.data
        baselines = {}
        for name, kw in (("ease", {}), ("als", {"seed": 0})):
            t = time.perf_counter()
            b = make_baseline(name, **kw).fit(data)
            ndcg = evaluate(b, data, "valid", ks=(10, 20)).metrics["ndcg@10"]
            baselines[name] = {"repr": repr(b), "val_ndcg@10": float(ndcg), "fit_s": b.fit_seconds,
                               "fit_and_eval_s": time.perf_counter() - t}
            print(f"  {name}: val ndcg@10 {ndcg:.4f} (fit {b.fit_seconds:.1f} s)", flush=True)
        levels = {k: v["val_ndcg@10"] for k, v in baselines.items()}
        probe = QualityProbe(model, dm, case["every"], levels, case["cap_minutes"] * 60)
        trainer.callbacks.append(probe.callback())
        load0 = C.load()
        probe.t0 = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        wall = time.perf_counter() - probe.t0
        if probe.stop_reason is None:
            es = next((c for c in trainer.callbacks if type(c).__name__ == "EarlyStopping"), None)
            probe.stop_reason = ("early stopping" if es is not None and es.stopped_epoch > 0
                                 else f"max_epochs ({trainer.max_epochs})" if case.get("max_epochs") is None
                                 else f"epoch cap ({case['max_epochs']})")
        cfg = yaml.safe_load(model.recsys_config or "{}") or {}
        steps_per_epoch = int(np.ceil(data.train.nnz / dm.batch_size))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"head": head, "head_class": type(model.head).__name__, "baselines": baselines, "levels": levels,
            "points": probe.points, "reached": probe.reached, "checks": probe.checks,
            "stop_reason": probe.stop_reason, "fit_wall_s": wall, "probe_s": probe.probe_s,
            "check_s": probe.check_s, "val_s": probe.val_s,
            "probe_evals": sum(p["source"] == "probe" for p in probe.points), "steps": int(trainer.global_step),
            "epochs_run": int(trainer.current_epoch), "steps_per_epoch": steps_per_epoch, "every": case["every"],
            "cli_s": cli_s, "load_start": load0, "load_end": C.load(), "head_config": cfg.get("model", {}).get("head"),
            "threads": C.threads()}


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--heads", default=None, help="comma list (default: all five; --quick: inbatch)")
    p.add_argument("--every", type=int, default=EVERY, help=f"probe interval in steps (default {EVERY})")
    p.add_argument("--cap-minutes", type=float, default=CAP_MINUTES, help="wall cap per head (incl. clock)")
    p.add_argument("--wait-load", type=float, default=None,
                   help="before each head wait (up to 20 min) until the 1-minute load is below this (default 1.2; "
                        "--quick 0 = no wait)")
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    quick = args.quick
    heads = [h for h in (args.heads or ("inbatch" if quick else ",".join(HEADS))).split(",") if h]
    if bad := sorted(set(heads) - set(HEADS)):
        raise SystemExit(f"--heads {bad}: the ML-1M heads are {list(HEADS)}")
    rep = C.Report("time_to_quality", quick, C.command_line(), __doc__.split("\n\n")[0].replace("\n", " "))
    results = {}
    threshold = args.wait_load if args.wait_load is not None else (0.0 if quick else 1.2)
    for h in heads:
        wait = wait_quiet(threshold)
        print(f"== {h} (load {C.load()}, waited {wait['waited_s']} s)", flush=True)
        case = {"head": h, "every": args.every, "cap_minutes": 3.0 if quick else args.cap_minutes,
                "max_epochs": 1 if quick else None, "threads": args.threads}
        out = C.run_case("bench.time_to_quality", case, timeout=3 * 3600, as_user=True)
        if "error" in out:
            rep.note(f"{h}: failed: {out['error']}")
            print(out.get("stderr_tail", ""))
            continue
        results[h] = {**out, "wait": wait}
    rep.data = {"results": results, "every": args.every, "cap_minutes": args.cap_minutes}
    _report(rep, results, args, quick)
    jp, mp = rep.write(args.out)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")


def _fmt_reached(r: dict | None, clock: str) -> str:
    return "not reached" if r is None else f"{r[clock]:.1f}"


def _report(rep, results: dict, args, quick: bool) -> None:
    rows = []
    for h, out in results.items():
        for name in ("ease", "als"):
            r = out["reached"].get(name)
            rows.append({"head": h, "level": name, "level_ndcg@10": out["levels"][name],
                         "incl_s": _fmt_reached(r, "incl_s"), "excl_s": _fmt_reached(r, "excl_s"),
                         "train_s": _fmt_reached(r, "train_s"), "step": "-" if r is None else r["step"],
                         "epoch": "-" if r is None else r["epoch"], "seen_at": "-" if r is None else r["source"],
                         "best_ndcg@10": max((p["ndcg@10"] for p in out["points"]), default=float("nan")),
                         "stop": out["stop_reason"], "steps_run": out["steps"]})
    if "inbatch" in results:
        out = results["inbatch"]
        for name, limit in TARGETS.items():
            r = out["reached"].get(name)
            for clock, label in (("incl_s", f"every evaluation on the clock, probe every {out['every']} steps"),
                                 ("excl_s", "the shipped fit's clock, probe evaluations excluded")):
                rep.target(f"inbatch: time to {name.upper()}-level validation NDCG@10 ({out['levels'][name]:.4f}), "
                           f"{label}", "not reached" if r is None else round(r[clock], 1), f"<= {limit:.0f} s",
                           None if quick else (r is not None and r[clock] <= limit),
                           "not reached by the end of the run (" + out["stop_reason"] + ")" if r is None else
                           f"incl. {r['incl_s']:.1f} s / excl. probe {r['excl_s']:.1f} s / training only "
                           f"{r['train_s']:.1f} s; step {r['step']} (epoch {r['epoch']}, {r['source']}); load "
                           f"{out['load_start']} -> {out['load_end']}")
    for h, out in results.items():
        if h == "inbatch":
            continue
        for name in ("ease", "als"):
            r = out["reached"].get(name)
            rep.target(f"{h}: time to {name.upper()}-level validation NDCG@10", "not reached" if r is None
                       else round(r["incl_s"], 1), "record", None,
                       f"not reached ({out['stop_reason']}; best {max(p['ndcg@10'] for p in out['points']):.4f})"
                       if r is None else f"excl. probe {r['excl_s']:.1f} s, training only {r['train_s']:.1f} s, "
                       f"step {r['step']}")
    rep.table("Time to EASE / ALS level (seconds from the start of fit)", rows,
              note="incl_s: every evaluation on the clock (the probe every K steps and the per-epoch validation); "
                   "excl_s: without the probe's evaluations (the shipped fit's clock); train_s: no evaluation at "
                   "all. seen_at: the evaluation that first showed the level.")
    base_rows = []
    for h, out in results.items():
        for b in out["baselines"].values():
            base_rows.append({"head run": h, "baseline": b["repr"], "val_ndcg@10": b["val_ndcg@10"],
                              "fit_s": b["fit_s"], "fit_and_eval_s": b["fit_and_eval_s"]})
    rep.table("Baselines (fitted in each head's process on the same RecData)", base_rows)
    run_rows = [{"head": h, "steps": out["steps"], "epochs_run": out["epochs_run"], "fit_wall_s": out["fit_wall_s"],
                 "probe_evals": out["probe_evals"], "probe_s": out["probe_s"], "check_s": out["check_s"],
                 "probe_s_per_eval": out["probe_s"] / max(1, out["probe_evals"]),
                 "epoch_val_s": out["val_s"], "stop": out["stop_reason"], "waited_s": out["wait"]["waited_s"],
                 "load_start": out["load_start"], "load_end": out["load_end"],
                 "probe_equals_fit_val": all(c["equal"] for c in out["checks"]) if out["checks"] else "n/a"}
                for h, out in results.items()]
    rep.table("Runs", run_rows, note="probe_equals_fit_val: at every epoch end the probe's NDCG@10 equals the "
                                     "fit's own val/ndcg@10 for the same weights (the probe measures the same thing).")
    for h, out in results.items():
        rep.table(f"{h}: validation NDCG@10 against time", [
            {k: p[k] for k in ("step", "epoch", "source", "ndcg@10", "incl_s", "excl_s", "train_s", "load")}
            for p in out["points"]])
    stops = ("one epoch, in-batch only" if quick else
             f"cap {args.cap_minutes:.0f} min per head, shipped max_epochs 8, early stopping patience 2")
    rep.note(f"Probe every K = {args.every} steps ({stops}); a head stops as soon as both levels are reached. "
             "Before each head the run waits (up to 20 min) for the 1-minute load average to fall below "
             f"{results and next(iter(results.values()))['wait']['threshold']} (waited_s); the machine is shared, so "
             "the load during a head's run is in every curve row.")
    rep.note("The levels are validation NDCG@10 of EASE (lambda 500, make_baseline's default, as compare without "
             "--baseline-param) and ALS (64 factors, reg 50, alpha 3, 15 iterations, seed 0), on the split the "
             "shipped data config makes (seed 0). ALS reaches its level in its own fit time (fit_s above).")


if __name__ == "__main__":
    if not C.case_main(run_head):
        main()
