"""Preference fine-tuning on ML-1M: DPO-style stages from the shipped in-batch checkpoint,
against the not-to-recommend and BPR losses on the same pairs, with the collapse diagnostics.

    python -m bench.preference_ml1m            # ML-1M: reference + 16 stages, ~35 min on 2 cores
    python -m bench.preference_ml1m --quick    # 40 batches per stage, 4 variants (a smoke run)

The reference is `configs/ml-1m/base.yaml` + `inbatch.yaml` trained as shipped (best validation
epoch kept). Every stage is `configs/ml-1m/preference.yaml` with one change (rows below), started
from that checkpoint (every stage but 'no rating correction' with the shipped explicit-rating
correction, `TwoTowerModule.rating_grid`: an ALS rating model fitted when the stage starts, its
weight chosen at each validation), trained for at most the shipped one epoch and validated every quarter epoch
(the diagnostics over training); with four validations, base.yaml's early stopping (patience 2 on
validation NDCG@10) ends a stage whose NDCG@10 fell twice, after 3/4 of the epoch (column steps).
Data: the protocol's positives (ratings >= 3, 10-core, per-user
8:1:1, seed 0) unchanged; the pairs rated <= 2 of the same users and movies split per user 8:1:1
beside them (`data.dislike_threshold: 2`); chosen items: train items rated >= 4. Metrics are
full-catalogue, seen items excluded: NDCG@10 / Recall@10 on the positives, disliked@10 (the share
of the top-10 that are the user's held-out dislikes), coverage@10, and the diagnostics of
`recsys.model.preference.collapse_diagnostics` plus repetition@10. The setting reported against
the targets is chosen on validation only: the lowest validation disliked@10 among the DPO stages
whose validation NDCG@10 is at least 99% of the reference's. Each stage runs in its own process;
finished stages are kept in `--out`/preference_runs/ and reused with `--resume`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench import common as C

REPO = Path(__file__).resolve().parents[1]
H = "model.head.init_args."
# name -> (group, overrides of configs/ml-1m/preference.yaml); "default" is the shipped file
VARIANTS = {
    "default": ("shipped: DPO beta 0.1, alpha 1, mixed, masks on, rating correction", {}),
    "nll only": ("control: the reference + the rating correction", {H + "objective": "nll"}),
    "no rating correction": ("rating correction off (the DPO stage alone)",
                             {"model.rating_grid": "null", "model.query_tower.init_args.rating_dim": 0,
                              "model.item_tower.init_args.rating_dim": 0}),
    "beta 0.5": ("beta (alpha 1)", {H + "beta": 0.5}),
    "beta 1": ("beta (alpha 1)", {H + "beta": 1.0}),
    "pure DPO beta 0.1": ("alpha 0", {H + "alpha": 0.0, H + "beta": 0.1}),
    "pure DPO beta 0.5": ("alpha 0", {H + "alpha": 0.0, H + "beta": 0.5}),
    "pure DPO beta 1": ("alpha 0", {H + "alpha": 0.0, H + "beta": 1.0}),
    "DPO-positive beta 0.1": ("DPO-positive (alpha 0, lambda 1)", {H + "alpha": 0.0, H + "dpo_positive": 1.0,
                                                                  H + "beta": 0.1}),
    "DPO-positive beta 0.5": ("DPO-positive (alpha 0, lambda 1)", {H + "alpha": 0.0, H + "dpo_positive": 1.0,
                                                                  H + "beta": 0.5}),
    "DPO-positive beta 1": ("DPO-positive (alpha 0, lambda 1)", {H + "alpha": 0.0, H + "dpo_positive": 1.0,
                                                                H + "beta": 1.0}),
    "explicit only": ("rejected items", {H + "rejected": "explicit"}),
    "on-policy only": ("rejected items", {H + "rejected": "on_policy"}),
    "shared mask off": ("masks", {H + "mask_shared": False}),
    "not-to-recommend": ("baselines (alpha 1, same pairs)", {H + "objective": "ntr"}),
    "BPR": ("baselines (alpha 1, same pairs)", {H + "objective": "bpr"}),
    "BPR explicit": ("baselines (alpha 1, same pairs)", {H + "objective": "bpr", H + "rejected": "explicit"}),
}
QUICK_VARIANTS = ("default", "nll only", "no rating correction", "pure DPO beta 0.5", "BPR")
DPO = [n for n, (_, o) in VARIANTS.items() if o.get(H + "objective", "dpo") == "dpo"]
COLS = ["ndcg@10", "recall@10", "disliked@10", "coverage@10", "chosen_margin", "chosen_logp_margin", "kl_top100",
        "repetition@10"]


def _cli(config: list[str], extra: list[str], root_dir: str):
    from recsys.train.cli import RecsysCLI

    args = [a for c in config for a in ("--config", str(REPO / "configs" / "ml-1m" / c))]
    args += [f"--trainer.default_root_dir={root_dir}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
             f"--checkpoint.dirpath={root_dir}", *extra]
    return RecsysCLI(args=args, run=False)


class _Clock:
    """Lightning callback: training seconds without validation, and every validation's metrics."""

    def __new__(cls):
        import lightning as L

        class Clock(L.Callback):
            def __init__(self):
                self.val_s, self.points, self._t = 0.0, [], 0.0

            def on_validation_start(self, trainer, pl_module):
                self._t = time.perf_counter()

            def on_validation_end(self, trainer, pl_module):
                self.val_s += time.perf_counter() - self._t
                m = {k[4:]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
                self.points.append({"step": trainer.global_step, "epoch": trainer.current_epoch, **m})

        return Clock()


def _scores(model, dm, split: str) -> dict:
    """Metrics (+ diagnostics when the model has a reference) of ``model`` on ``split``."""
    from recsys.eval.evaluate import evaluate
    from recsys.eval.metrics import repetition

    res = evaluate(model, dm, split, ks=(10, 20))
    out = {k: res.metrics[k] for k in ("ndcg@10", "recall@10", "disliked@10", "coverage@10", "ndcg@20", "recall@20")}
    out["repetition@10"] = repetition(res.I, 10)
    if model.reference is not None:
        out.update(model.preference_diagnostics(dm, split, res.I))
    return out


def run_reference(case: dict) -> dict:
    """Train the shipped in-batch config; its checkpoint, cost and scores."""
    from recsys.artifacts.checkpoint import load_checkpoint
    from recsys.train.cli import fit_best

    extra = ["--trainer.limit_train_batches=40", "--trainer.max_epochs=1"] if case["quick"] else []
    clock = _Clock()
    cli = _cli(["base.yaml", "inbatch.yaml"], extra, case["dir"])
    cli.trainer.callbacks.append(clock)
    secs, best = fit_best(cli)
    epochs = cli.trainer.current_epoch
    model, dm, _ = load_checkpoint(best, data_overrides={"dislike_threshold": 2})
    return {"checkpoint": best, "fit_s": secs, "train_s": secs - clock.val_s, "epochs": epochs,
            "train_s_per_epoch": (secs - clock.val_s) / max(epochs, 1), "points": clock.points,
            "valid": _scores(model, dm, "valid"), "test": _scores(model, dm, "test")}


def run_stage(case: dict) -> dict:
    """One preference stage from the reference checkpoint."""
    extra = [f"--model.reference={case['reference']}", f"--trainer.val_check_interval={case['val_every']}"]
    extra += [f"--{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in case["overrides"].items()]
    if case["quick"]:
        extra += ["--trainer.limit_train_batches=40", "--trainer.max_epochs=1"]
    clock = _Clock()
    cli = _cli(["base.yaml", "preference.yaml"], extra, case["dir"])
    cli.trainer.callbacks.append(clock)
    t = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)  # the stage's last weights (a fixed-length stage)
    secs = time.perf_counter() - t
    model, dm = cli.model.eval(), cli.datamodule
    return {"fit_s": secs, "train_s": secs - clock.val_s, "epochs": cli.trainer.current_epoch,
            "steps": cli.trainer.global_step, "steps_per_epoch": cli.trainer.num_training_batches,
            "points": clock.points,
            "valid": _scores(model, dm, "valid"), "test": _scores(model, dm, "test")}


GAMMAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def run_item_prior(case: dict) -> dict:
    """The non-learned baseline: the reference re-ranked by each movie's train dislike rate,
    score + gamma * T * (-log p(dislike | rated)), p from train counts (add-one); gamma chosen
    on validation by the same rule as the stages."""
    import numpy as np

    from recsys.artifacts.checkpoint import load_checkpoint
    from recsys.eval.evaluate import _eval_queries, evaluate_embeddings

    model, dm, _ = load_checkpoint(case["reference"], data_overrides={"dislike_threshold": 2})
    d = dm.data
    liked, disliked = np.asarray(d.train.sum(0)).ravel(), np.asarray(d.dislikes["train"].sum(0)).ravel()
    log_bad = np.log((disliked + 1) / (liked + disliked + 2))  # (N,) log p(dislike | rated), train only
    xb = model.item_embeddings().float().numpy()
    T = float(model.head.temperature())
    out = {}
    for split in ("valid", "test"):
        users, xq = _eval_queries(model, dm, split)
        xq1 = np.hstack([xq, np.ones((len(xq), 1), np.float32)])
        out[split] = {}
        for g in GAMMAS:
            xb1 = np.hstack([xb, (-g * T * log_bad)[:, None]]).astype(np.float32)
            m = evaluate_embeddings(xq1, users, xb1, d, split, (10,)).metrics
            out[split][str(g)] = {k: m[k] for k in ("ndcg@10", "recall@10", "disliked@10", "coverage@10")}
    return out


def _case(case: dict) -> dict:
    if case["part"] == "item_prior":
        return run_item_prior(case)
    return run_reference(case) if case["part"] == "reference" else run_stage(case)


def _plots(runs: dict, ref: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    groups = [("beta 0.5", "alpha 1"), ("pure DPO beta 0.5", "pure DPO (alpha 0)"),
              ("DPO-positive beta 0.5", "DPO-positive (alpha 0, lambda 1)"), ("nll only", "NLL only")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for name, label in groups:
        r = runs.get(name)
        if not r or "error" in r:
            continue
        pts = [{"step": 0, "ndcg@10": ref["valid"]["ndcg@10"], "chosen_logp_margin": 0.0, "chosen_margin": 0.0,
                "repetition@10": ref["valid"]["repetition@10"], "coverage@10": ref["valid"]["coverage@10"]},
               *r["points"]]
        x = [p["step"] for p in pts]
        for ax, key in zip(axes, ("chosen_logp_margin", "chosen_margin", "ndcg@10", "coverage@10")):
            ax.plot(x, [p.get(key, float("nan")) for p in pts], marker="o", label=label)
            ax.set_title(f"validation {key}")
            ax.set_xlabel("training step")
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[2].axhline(0.99 * ref["valid"]["ndcg@10"], color="grey", ls="--", lw=0.8, label="99% of the reference")
    axes[2].legend(fontsize=7)
    fig.suptitle("beta 0.5: pure DPO against alpha 1 and DPO-positive (ML-1M validation, every quarter epoch)")
    files.append(C.save_figure(fig, out, "preference_collapse.png"))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([ref["test"]["disliked@10"]], [ref["test"]["ndcg@10"]], marker="*", s=160, color="k",
               label="reference")
    for name, r in runs.items():
        if "error" in r:
            continue
        ax.scatter(r["test"]["disliked@10"], r["test"]["ndcg@10"], s=20)
        ax.annotate(name, (r["test"]["disliked@10"], r["test"]["ndcg@10"]), fontsize=6)
    ax.axhline(0.99 * ref["test"]["ndcg@10"], color="grey", ls="--", lw=0.8)
    ax.axvline(0.7 * ref["test"]["disliked@10"], color="grey", ls=":", lw=0.8)
    ax.set_xlabel("test disliked@10 (lower is better)")
    ax.set_ylabel("test NDCG@10")
    ax.set_title("ML-1M: every stage against the reference\n(dashed: -1% NDCG; dotted: -30% disliked)")
    ax.legend(fontsize=7)
    files.append(C.save_figure(fig, out, "preference_tradeoff.png"))
    plt.close("all")
    return files


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--resume", action="store_true", help="reuse the finished runs in --out/preference_runs")
    p.add_argument("--only", default=None, help="comma list of variants (default: all; --quick: four)")
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    quick = args.quick
    out = Path(args.out)
    store = out / ("preference_runs_quick" if quick else "preference_runs")
    store.mkdir(parents=True, exist_ok=True)
    rep = C.Report("preference_ml1m", quick, C.command_line(), __doc__.split("\n\n")[0])
    work = Path(tempfile.mkdtemp(prefix="recsys-pref-"))

    def cached(name: str, case: dict) -> dict:
        f = store / (name.replace(" ", "_") + ".json")
        if args.resume and f.exists():
            return json.loads(f.read_text())
        r = C.run_case("bench.preference_ml1m", case, timeout=7200)
        if "error" not in r:
            f.write_text(json.dumps(C.json_safe(r), indent=1))
        return r

    ref = cached("reference", {"part": "reference", "quick": quick, "dir": str(work / "reference"),
                               "threads": args.threads})
    if "error" in ref:
        rep.note(f"reference failed: {ref['error']}")
        print(rep.markdown())
        rep.write(out)
        return
    if not Path(ref["checkpoint"]).exists():  # a resumed reference whose checkpoint is gone: train it again
        ref = C.run_case("bench.preference_ml1m", {"part": "reference", "quick": quick, "dir": str(work / "reference"),
                                                   "threads": args.threads}, timeout=7200)
        (store / "reference.json").write_text(json.dumps(C.json_safe(ref), indent=1))
    names = args.only.split(",") if args.only else list(QUICK_VARIANTS if quick else VARIANTS)
    runs = {}
    for name in names:
        group, overrides = VARIANTS[name]
        runs[name] = cached(name, {"part": "stage", "quick": quick, "reference": ref["checkpoint"],
                                   "overrides": overrides, "val_every": 1.0 if quick else 0.25,
                                   "dir": str(work / name.replace(" ", "_")), "threads": args.threads})
        print(name, {k: runs[name].get("test", {}).get(k) for k in ("ndcg@10", "disliked@10")}, flush=True)
    prior = cached("item_prior", {"part": "item_prior", "reference": ref["checkpoint"], "threads": args.threads})
    rep.data.update(reference=ref, runs=runs, item_prior=prior)

    def row(name, r, group=""):
        if "error" in r:
            return {"stage": name, "group": group, "error": r["error"]}
        return {"stage": name, "group": group, **{f"test {k}": r["test"].get(k) for k in COLS},
                "valid ndcg@10": r["valid"]["ndcg@10"], "valid disliked@10": r["valid"]["disliked@10"],
                "train s": round(r["train_s"], 1), "steps": r.get("steps")}

    rows = [row("reference (in-batch)", ref)] + [row(n, r, VARIANTS[n][0]) for n, r in runs.items()]
    if "error" not in prior:  # gamma by the stages' rule: lowest validation disliked@10 within 99% NDCG@10
        ok_g = [g for g, m in prior["valid"].items() if m["ndcg@10"] >= 0.99 * ref["valid"]["ndcg@10"]]
        g = min(ok_g, key=lambda g: prior["valid"][g]["disliked@10"])
        rows.append({"stage": f"item dislike-rate prior (gamma {g}, on validation)", "group": "baseline (no training)",
                     **{f"test {k}": prior["test"][g][k] for k in ("ndcg@10", "recall@10", "disliked@10",
                                                                   "coverage@10")},
                     "valid ndcg@10": prior["valid"][g]["ndcg@10"],
                     "valid disliked@10": prior["valid"][g]["disliked@10"]})
        rep.table("Item dislike-rate prior over the reference, every gamma", [
            {"gamma": g, **{f"{s} {k}": prior[s][g][k] for s in ("valid", "test") for k in ("ndcg@10", "disliked@10")}}
            for g in prior["valid"]])
    rep.table("Test metrics after each stage (full catalogue, seen items excluded)", rows,
              ["stage", "group", *[f"test {k}" for k in COLS], "valid ndcg@10", "valid disliked@10", "train s",
               "steps"],
              note="chosen_margin / chosen_logp_margin: mean s(u,w) - s_ref(u,w) and log p(w|u) - log p_ref(w|u) "
                   "over held-out items rated >= 4; kl_top100: KL(p || p_ref) renormalised over the model's top "
                   "100; repetition@10: share of users whose top-10 is the most common top-10.")
    for name in ("default", "beta 0.5", "pure DPO beta 0.5", "DPO-positive beta 0.5"):
        r = runs.get(name)
        if r and "error" not in r:
            rep.table(f"Validation over training: {name}", r["points"],
                      ["step", "epoch", "ndcg@10", "disliked@10", "chosen_margin", "chosen_logp_margin", "kl_top100",
                       "repetition@10", "coverage@10", "prior_weight"])
    ok = {n: r for n, r in runs.items() if "error" not in r}
    rv, rt = ref["valid"], ref["test"]
    eligible = [n for n in ok if n in DPO and ok[n]["valid"]["ndcg@10"] >= 0.99 * rv["ndcg@10"]]
    chosen = min(eligible, key=lambda n: ok[n]["valid"]["disliked@10"], default=None)
    if chosen is None:
        rep.target("disliked@10 -30% with NDCG@10 within -1% (setting chosen on validation)", None,
                   "a DPO stage with validation NDCG@10 >= 99% of the reference's", False if not quick else None,
                   "no DPO stage kept 99% of the reference's validation NDCG@10")
    else:
        t = ok[chosen]["test"]
        d_rel, n_rel = t["disliked@10"] / rt["disliked@10"] - 1, t["ndcg@10"] / rt["ndcg@10"] - 1
        rep.target(f"test disliked@10 at least 30% below the reference's ({chosen!r}, chosen on validation)",
                   round(d_rel, 4), "<= -0.30", None if quick else d_rel <= -0.30,
                   f"{t['disliked@10']:.5f} vs {rt['disliked@10']:.5f}")
        rep.target(f"test NDCG@10 within 1% of the reference's ({chosen!r})", round(n_rel, 4), ">= -0.01",
                   None if quick else n_rel >= -0.01, f"{t['ndcg@10']:.4f} vs {rt['ndcg@10']:.4f}")
    best = min((n for n in ok if ok[n]["test"]["ndcg@10"] >= 0.99 * rt["ndcg@10"]),
               key=lambda n: ok[n]["test"]["disliked@10"], default=None)
    if best is not None:
        rep.note(f"for reference only (selection on test, not a result): the lowest test disliked@10 among stages "
                 f"within -1% test NDCG@10 is {best!r}, "
                 f"{ok[best]['test']['disliked@10'] / rt['disliked@10'] - 1:+.1%} disliked@10.")
    pure = [n for n in ok if n.startswith("pure DPO")]
    fail = [n for n in pure if ok[n]["test"]["ndcg@10"] < 0.99 * rt["ndcg@10"]
            or ok[n]["test"]["chosen_logp_margin"] < 0 or ok[n]["test"]["repetition@10"] > 2 * rt["repetition@10"]]
    same_beta = {"0.1": ("default", "DPO-positive beta 0.1"), "0.5": ("beta 0.5", "DPO-positive beta 0.5"),
                 "1": ("beta 1", "DPO-positive beta 1")}
    cured = [n for n in fail if any(m in ok and ok[m]["test"]["ndcg@10"] >= 0.99 * rt["ndcg@10"]
                                    for m in same_beta[n.rsplit(" ", 1)[1]])]
    rep.target("failure mode shown: pure DPO (alpha 0) loses NDCG@10 / the chosen log-probability / repetition",
               ", ".join(fail) or None, "some beta", None if quick else bool(fail))
    rep.target("and cured: alpha 1 or DPO-positive at the same beta keeps NDCG@10 within 1%", ", ".join(cured) or None,
               "every failing beta", None if quick else bool(fail) and len(cured) == len(fail))
    d = ok.get("default")
    if d:  # per full stage epoch: with validation every quarter epoch, early stopping may end a stage sooner
        per_epoch = d.get("steps_per_epoch") or max(r["steps"] for r in ok.values())
        stage_s = d["train_s"] / d["steps"] * per_epoch
        ratio = stage_s / ref["train_s_per_epoch"]
        rep.target("the stage costs at most two epochs of the base training (training seconds, validation excluded)",
                   round(ratio, 2), "<= 2.0 base epochs", None if quick else ratio <= 2.0,
                   f"stage {d['train_s']:.0f} s for {d['steps']} steps = {stage_s:.0f} s per {per_epoch}-step epoch "
                   f"vs base {ref['train_s_per_epoch']:.0f} s/epoch")
    out.mkdir(parents=True, exist_ok=True)
    if not quick:
        rep.note(f"plots: {', '.join(_plots(ok, ref, out))}")
    rep.note(f"reference: {ref['epochs']} epochs, {ref['fit_s']:.0f} s fit; chosen on validation: {chosen!r} "
             f"(eligible: {eligible})")
    jp, mp = rep.write(out)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    if not C.case_main(_case):
        main()
