"""``recsys compare``: train every head on identical data, towers and seeds; add baselines.

    recsys compare --config configs/ml-1m/base.yaml --heads full,sigmoid,sampled,inbatch,hard \\
        --seeds 3 --baselines pop,ease,als --out runs/compare/ml-1m

Each run is composed as ``recsys fit`` composes configs, with repeated ``--config``:
``BASE``, then the head file ``<--head-configs or BASE's folder>/<head>.yaml`` (so
``configs/<dataset>/<head>.yaml``, which holds the ``model.head`` block), then the run's own
overrides (seed, output folders; ``OUT/configs/<head>_seed<s>.run.yaml``). Without a head
file the head's class runs with its defaults. Every run must load the same data (checked).
The resolved config of each run is written to ``OUT/configs/<head>_seed<s>.yaml``. Seeds are
``seed_everything`` values 0..S-1 (or a comma list); the split (``data.seed``) stays that of
``BASE``, so every run sees the same train / valid / test.

Every (head, seed) is trained, its best checkpoint (validation NDCG@10) reloaded and scored
on test and validation over the whole catalogue; baselines (``recsys.eval.baselines``) are fitted
once per seed on the same ``RecData``, after their main settings are tuned on validation NDCG@10
over ``BASELINE_GRIDS`` (the heads' tuning budget is their configs; ``--no-tune-baselines``
keeps the defaults, a ``--baseline-param`` value is fixed and leaves that setting out of the
grid). The grid, every validation score and the chosen values go into ``results.json`` and
``results.md``; test is never looked at while choosing. Writes ``OUT/results.json`` (every run + mean / std
over seeds), ``OUT/results.md`` (table), ``OUT/recall_at_k.png``, ``OUT/ndcg10_vs_time.png``.
Arguments after ``--`` go to every run's LightningCLI, e.g. ``-- --data.batch_size=256``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import resource
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil
import yaml

from recsys.data.datasets import shared_cache
from recsys.errors import ConfigError, MissingDependency
from recsys.reporting import json_safe, machine, markdown_table

logger = logging.getLogger(__name__)

# taken from a head file's model block: the head, its optimizers and how its checkpoint is chosen
# (eval_index / eval_beam: a tree head validated by its own beam); test is scored the same for every head
HEAD_KEYS = ("head", "dense_optimizer", "sparse_optimizer", "lr_scheduler", "eval_index", "eval_beam")
# the validation grid of each baseline's main settings (the product of the lists)
BASELINE_GRIDS = {
    "ease": {"lambda_": [50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0]},
    "als": {"factors": [64, 128], "regularization": [5.0, 50.0, 200.0], "alpha": [1.0, 3.0, 10.0]},
    "ovr": {"C": [0.25, 1.0, 4.0, 16.0], "tfidf": [True, False]},
}
TABLE = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
XMC_TABLE = ("precision@1", "precision@3", "precision@5", "psp@1", "psp@3", "psp@5")  # multi-label documents


# ---- configs -------------------------------------------------------------------------
def head_source(head: str, folder: Path) -> tuple[list[str], str]:
    """CLI arguments that add ``head`` to the base config, and where the head came from:
    ``--config folder/<head>.yaml`` when that file exists, else ``--model.head=<class>`` of a
    built-in head with its defaults."""
    from recsys.model.heads import HEADS

    path = folder / f"{head}.yaml"
    if path.exists():
        spec = yaml.safe_load(path.read_text()) or {}
        model = spec.get("model") or {}
        if "head" not in model:
            raise ConfigError(f"{path} has no model.head block: a head file names its head. Fix: add "
                              "model: {head: {class_path: recsys.model.heads.<Head>, init_args: {...}}}.")
        other = sorted({k for k in spec if k not in ("model", "trainer")} | {f"model.{k}" for k in model
                                                                             if k not in HEAD_KEYS})
        if other:  # identical data, towers and seeds for every head: only the base sets them
            raise ConfigError(f"{path} sets {other}: a head file of `recsys compare` may set only model."
                              f"{{{', '.join(HEAD_KEYS)}}} and trainer, so that every head sees the base's data, "
                              "towers and seeds. Fix: move those keys to the base config.")
        return ["--config", str(path)], str(path)
    if head not in HEADS:
        raise ConfigError(f"head '{head}': no {path} and not a built-in head {sorted(HEADS)}. Fix: write "
                          f"{path} with a model.head block or pick a built-in head.")
    cls = HEADS[head]
    logger.warning("head '%s': no %s, using %s with its default arguments", head, path, cls.__name__)
    return [f"--model.head={cls.__module__}.{cls.__name__}"], f"default {cls.__name__}"


def run_overrides(seed: int, run_dir: Path, max_epochs: int | None) -> dict:
    """The per-run config composed last: seed, output folders, quiet trainer, epochs."""
    trainer = {"default_root_dir": str(run_dir), "enable_progress_bar": False, "enable_model_summary": False,
               "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                          "init_args": {"save_dir": str(run_dir), "name": "logs", "version": ""}}}
    if max_epochs is not None:
        trainer["max_epochs"] = max_epochs
    return {"seed_everything": seed, "trainer": trainer, "checkpoint": {"dirpath": str(run_dir / "checkpoints")}}


def refit_overrides(seed: int, run_dir: Path, rec: dict) -> dict:
    """The run config of a refit (``--refit``): the validated run's seed and best epoch count,
    train + validation as training data, no validation, its chosen prior weight."""
    over = run_overrides(seed, run_dir, int(rec["best_epoch"]) + 1)
    over["trainer"]["limit_val_batches"] = 0
    over["data"] = {"refit": True}
    if rec.get("prior_weight") is not None:
        over["model"] = {"prior_weight": float(rec["prior_weight"])}
    return over


def merge_refit(rec: dict, refit: dict) -> dict:
    """A validated run's record with its refit's test metrics as ``test`` (the validated
    run's kept as ``test_validated``) and the refit's cost under ``refit``."""
    cost = {k: refit.get(k) for k in ("train_seconds", "epochs", "peak_rss_mb", "ru_maxrss_mb",
                                      "epoch_train_seconds", "examples_per_second")}
    extra = {k: v for k, v in refit.items() if k.startswith("test_") and k != "test_validated"}
    return {**rec, "test_validated": rec["test"], "test": refit["test"], **extra, "refit": cost}


# ---- resource meters ----------------------------------------------------------------------
class PeakRSS:
    """Peak resident memory of this process during a block, sampled with psutil every ``dt`` s.

    ``peak_mb``: highest sampled RSS (absolute, so it includes the loaded data and whatever
    earlier runs left allocated); ``start_mb``: RSS when the block began; ``maxrss_mb``:
    ``getrusage(RUSAGE_SELF).ru_maxrss``, the process's high-water mark since it started.
    ``gpu_peak_mb``: ``torch.cuda.max_memory_allocated`` in the block when CUDA is used.
    """

    def __init__(self, dt: float = 0.05):
        self.dt, self.proc = dt, psutil.Process()
        self.peak_mb = self.start_mb = self.maxrss_mb = float("nan")
        self.gpu_peak_mb = None

    def _sample(self) -> None:
        while not self._stop.wait(self.dt):
            self.peak_mb = max(self.peak_mb, self.proc.memory_info().rss / 2**20)

    def __enter__(self):
        import torch

        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        self.start_mb = self.peak_mb = self.proc.memory_info().rss / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.proc.memory_info().rss / 2**20)
        self.maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        if self._cuda:
            self.gpu_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        return False

    def as_dict(self) -> dict:
        return {"peak_rss_mb": self.peak_mb, "start_rss_mb": self.start_mb, "ru_maxrss_mb": self.maxrss_mb,
                "gpu_peak_mb": self.gpu_peak_mb}


# ---- one run -------------------------------------------------------------------------
def make_cli(args: list[str]):
    """``RecsysCLI(run=False)`` on composed configs (repeated ``--config``, as ``recsys fit``):
    model, data and trainer built."""
    from recsys.train.cli import RecsysCLI

    with warnings.catch_warnings():  # `recsys compare`'s own argv is not meant for this CLI
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return RecsysCLI(args=args, run=False)


def train_head(args: list[str], ks_req: list[int], resolved: Path, run_dir: Path | None = None,
               resume: bool = False, splits: tuple[str, ...] = ("test", "valid"),
               beam: int = 16) -> tuple[dict, object]:
    """Fit one config, reload its best checkpoint (a fit without validation, e.g. a refit:
    its last state), score ``splits`` at ``curve_ks`` of ``ks_req``; returns (record, the
    run's RecData). A head with an item tree (``TreeSoftmax``) is also scored on test by its own
    beam search of width ``beam`` (``test_beam``). The record is also written to
    ``run_dir/record.json``. ``resume``: a run with a record is taken as it is; one with a
    ``last.ckpt`` continues from it (Lightning restores the loops, optimizer and callbacks, the
    ``EpochClock`` included), or, when that checkpoint's fit had ended (max_epochs or early
    stopping), is only scored; its peak RSS then covers the scoring only."""
    import torch

    from recsys.eval.evaluate import evaluate

    record = run_dir / "record.json" if run_dir is not None else None
    if resume and record is not None and record.is_file():
        cli = make_cli(args)
        _say(f"compare: reusing {record}")
        return json.loads(record.read_text()), cli.datamodule.data
    with PeakRSS() as mem:
        cli = make_cli(args)
        resolved.write_text(cli.model.recsys_config or "")  # the composed config of this run
        last = run_dir / "checkpoints" / "last.ckpt" if run_dir is not None else None
        state = (torch.load(last, map_location="cpu", weights_only=True)
                 if resume and last is not None and last.is_file() else None)
        t = time.perf_counter()
        if state is not None and _fit_ended(state, cli.trainer):  # only score it
            for cb in cli.trainer.callbacks:
                if cb.state_key in state.get("callbacks", {}):
                    cb.load_state_dict(state["callbacks"][cb.state_key])
            _say(f"compare: {last} ended its fit; scoring it")
        else:
            cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(last) if state is not None else None)
        secs = time.perf_counter() - t
        ck = cli.trainer.checkpoint_callback
        best, best_epoch = (ck.best_model_path if ck else ""), None
        if best:
            best_state = torch.load(best, map_location="cpu", weights_only=True)
            cli.model.bind(cli.datamodule.data)
            cli.model.load_state_dict(best_state["state_dict"])
            best_epoch = int(best_state.get("epoch", -1))
        cli.model.cpu()
        ks = curve_ks(ks_req, cli.datamodule.data.n_items)
        res = {s: evaluate(cli.model, cli.datamodule, s, ks).metrics for s in splits}
        res.update(calibration_record(cli.model, cli.datamodule, splits))
        if hasattr(cli.model.head, "beam_topk") and "test" in splits:  # the tree's own retrieval
            res["test_beam"] = evaluate(cli.model, cli.datamodule, "test", ks, index="beam",
                                        index_params={"beam": beam}).metrics
            res["beam"] = beam
    score = ck.best_model_score if ck is not None else None
    clock = clock_record(cli.trainer, best_epoch)
    if state is not None and clock.get("epoch_clock"):  # resumed: the fit's time is the clock's
        secs = clock["epoch_clock"][-1]["elapsed_s"]
    rec = {"train_seconds": secs, "epochs": int(clock["epoch_clock"][-1]["epoch"]) + 1 if clock.get("epoch_clock")
           else int(cli.trainer.current_epoch), "best_epoch": best_epoch, "resumed": state is not None,
           **clock,
           "checkpoint": best or None,
           "prior_weight": cli.model.served_prior_weight,
           "best_val_ndcg@10": None if score is None else float(score),
           **mem.as_dict(), **res}
    if record is not None:
        record.write_text(json.dumps(json_safe(rec), indent=1))
    return rec, cli.datamodule.data


def calibration_record(model, data, splits) -> dict:
    """``{"test_calibration": {ece, brier, ...}}`` for multi-label document data (the data
    sets ``propensity_ab``) and a model that defines probabilities, else empty."""
    from recsys.eval.evaluate import calibration

    d = getattr(data, "data", data)
    if d.propensity_ab is None or "test" not in splits:
        return {}
    c = calibration(model, data, "test")
    return {} if c is None else {"test_calibration": c}


def _fit_ended(state: dict, trainer) -> bool:
    """Whether the fit that wrote checkpoint ``state`` had ended: its last epoch was the
    trainer's ``max_epochs`` or early stopping had run out of patience."""
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
    if max_epochs >= 0 and int(state.get("epoch", -1)) + 1 >= max_epochs:
        return True
    for key, cb in state.get("callbacks", {}).items():
        if key.startswith("EarlyStopping") and cb.get("wait_count", 0) >= cb.get("patience", 1 << 30):
            return True
    return False


def clock_record(trainer, best_epoch: int | None) -> dict:
    """From the fit's ``EpochClock``: the per-epoch clock, the wall time to the end of the
    best epoch's validation (``seconds_to_best``), the mean training seconds per epoch and the
    training examples per second (validation excluded)."""
    from recsys.train.callbacks import EpochClock

    clock = next((c for c in trainer.callbacks if isinstance(c, EpochClock)), None)
    if clock is None or not clock.epochs:
        return {}
    ep = clock.epochs
    best = next((e for e in ep if e["epoch"] == best_epoch), None)
    last = ep[-1]
    return {"epoch_clock": ep, "seconds_to_best": best and best["elapsed_s"],
            "epoch_train_seconds": last["train_s"] / len(ep),
            "examples_per_second": last["examples"] / last["train_s"] if last["train_s"] > 0 else None}


def tune_baseline(name: str, fixed: dict, seed: int, data, metric: str = "ndcg@10",
                  grid: dict | None = None) -> tuple[dict, object, dict]:
    """Fit ``name`` at every point of its grid (``grid``, else ``BASELINE_GRIDS[name]``; settings
    in ``fixed`` held) on train and score validation only. Returns ({grid, trials [(params,
    score, fit seconds)], chosen, metric}, the fitted model of the chosen point, its PeakRSS
    dict): only the best model so far is kept, so an N x N model is held at most twice."""
    import itertools

    from recsys.eval.baselines import BASELINES, make_baseline
    from recsys.eval.evaluate import evaluate

    grid = {k: v for k, v in (grid if grid is not None else BASELINE_GRIDS.get(name, {})).items() if k not in fixed}
    if not grid:
        return {"grid": {}, "trials": [], "chosen": dict(fixed), "metric": metric}, None, {}
    trials, best = [], (None, None, {})  # (score, model, mem)
    for values in itertools.product(*grid.values()):
        kw = {**fixed, **dict(zip(grid, values))}
        if "seed" in inspect.signature(BASELINES[name]).parameters:
            kw.setdefault("seed", seed)
        with PeakRSS() as mem:
            model = make_baseline(name, **kw).fit(data)
            score = evaluate(model, data, "valid", (10,)).metrics[metric]
        trials.append({"params": dict(zip(grid, values)), metric: score, "fit_seconds": model.fit_seconds})
        _say(f"compare: tune {name} {dict(zip(grid, values))}: valid {metric} {score:.4f} "
             f"(fit {model.fit_seconds:.1f}s)")
        if best[0] is None or score > best[0]:  # first of equal scores: grid order
            best = (score, model, mem.as_dict())
        del model
    top = max(trials, key=lambda t: t[metric])
    return ({"grid": grid, "trials": trials, "chosen": {**fixed, **top["params"]}, "metric": metric},
            best[1], best[2])


def fit_baseline(name: str, params: dict, seed: int, data, ks: tuple[int, ...], model=None,
                 mem: dict | None = None, splits: tuple[str, ...] = ("test", "valid")) -> dict:
    """Fit one baseline on ``data.train`` (or take ``model``, already fitted with these settings
    and seed while tuning, and its PeakRSS dict ``mem``) and score ``splits``."""
    from recsys.eval.baselines import BASELINES, make_baseline
    from recsys.eval.evaluate import evaluate

    kw = dict(params)
    if "seed" in inspect.signature(BASELINES[name]).parameters:
        kw.setdefault("seed", seed)
    with PeakRSS() as meter:
        model = model if model is not None else make_baseline(name, **kw).fit(data)
        res = {s: evaluate(model, data, s, ks).metrics for s in splits}
        res.update(calibration_record(model, data, splits))
    m = meter.as_dict()
    if mem:  # the fit ran while tuning: its memory is the larger of the two blocks
        m = {k: max(v, mem.get(k, v)) if isinstance(v, float) and math.isfinite(v) else v for k, v in m.items()}
    return {"train_seconds": model.fit_seconds, "epochs": None, "params": {**kw, "repr": repr(model)}, **m, **res}


# ---- aggregation and output ---------------------------------------------------------------
def _stat(values: list) -> dict | None:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def aggregate(runs: list[dict]) -> dict:
    """Mean and sample std (ddof=1; 0 for one seed) over seeds of every number, per model."""
    out: dict = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        rs = [r for r in runs if r["model"] == model]
        agg = {"kind": rs[0]["kind"], "seeds": [r["seed"] for r in rs]}
        for split in ("test", "valid", "test_validated", "test_calibration", "test_beam"):
            if split in rs[0]:
                agg[split] = {k: s for k in rs[0][split] if (s := _stat([r.get(split, {}).get(k) for r in rs]))}
        for k in ("train_seconds", "epochs", "peak_rss_mb", "ru_maxrss_mb", "gpu_peak_mb", "best_val_ndcg@10",
                  "prior_weight", "seconds_to_best", "epoch_train_seconds", "examples_per_second"):
            if (s := _stat([r.get(k) for r in rs])) is not None:
                agg[k] = s
        out[model] = agg
        if "test_beam" in agg:  # the tree head served by its beam search: a row of its own
            out[f"{model} (beam {rs[0]['beam']})"] = {**agg, "test": agg["test_beam"]}
    return out


def results_table(agg: dict, metrics: tuple[str, ...] = TABLE) -> str:
    """model | ``metrics`` (mean±std over seeds; default R@10 | N@10 | R@20 | N@20) | ECE (where
    the runs measured calibration) | train s | s to best | s / epoch | ex / s | epochs | peak MB
    | prior w.

    ``s to best``: wall time from the start of the fit to the end of the best epoch's
    validation; ``s / epoch`` and ``ex / s``: training only (validation excluded);
    ``prior w``: the popularity-prior weight chosen on validation (``prior_grid``); all means
    over seeds.
    """
    def ms(s, digits):
        return None if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

    rows = []
    ece = any("test_calibration" in a for a in agg.values())
    for model, a in agg.items():
        row = {"model": model, **{m: ms(a["test"].get(m), 4) for m in metrics}}
        if ece:
            row["ECE"] = ms(a.get("test_calibration", {}).get("ece"), 4)
        t, ep, mb, pw = (a.get(k) for k in ("train_seconds", "epochs", "peak_rss_mb", "prior_weight"))
        tb, es, xs = (a.get(k) for k in ("seconds_to_best", "epoch_train_seconds", "examples_per_second"))
        row.update({"train s": ms(t, 1), "s to best": tb and f"{tb['mean']:.0f}",
                    "s / epoch": es and f"{es['mean']:.1f}", "ex / s": xs and f"{xs['mean']:,.0f}",
                    "epochs": ep and f"{ep['mean']:.1f}",
                    "peak RSS MB": mb and f"{mb['mean']:.0f}", "prior w": pw and f"{pw['mean']:.2g}"})
        rows.append(row)
    return markdown_table(rows, ["model", *metrics, *(["ECE"] if ece else []), "train s", "s to best", "s / epoch",
                                 "ex / s", "epochs", "peak RSS MB", "prior w"])


def curve_ks(ks: list[int], n_items: int) -> tuple[int, ...]:
    """The requested cut-offs plus a grid (1..10, then every 5) up to max(ks), all <= N."""
    top = min(max(ks), n_items)
    grid = set(range(1, min(10, top) + 1)) | set(range(15, top + 1, 5)) | {k for k in ks if k <= top}
    return tuple(sorted(grid))


def _say(msg: str) -> None:
    print(msg, flush=True)


def _parse_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip() and s.strip().lower() != "none"]


def _parse_seeds(text: str) -> list[int]:
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    if int(text) < 1:
        raise ConfigError(f"--seeds {text}: need a count >= 1 or a comma list. Fix: e.g. --seeds 3 or --seeds 0,1,2.")
    return list(range(int(text)))


def best_by_validation(runs: list[dict], metric: str = "ndcg@10") -> str:
    """The head whose runs have the highest mean validation ``metric`` (test never looked at)."""
    heads: dict[str, list[float]] = {}
    for r in runs:
        if r["kind"] == "head":
            heads.setdefault(r["model"], []).append(r["valid"][metric])
    return max(heads, key=lambda h: float(np.mean(heads[h])))


def _parse_grids(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for it in items:
        key, sep, value = it.partition("=")
        name, dot, arg = key.partition(".")
        values = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        if not (sep and dot and name and arg and values):
            raise ConfigError(f"--baseline-grid {it!r}: need NAME.ARG=V1,V2,... Fix: e.g. ease.lambda_=250,1000,4000.")
        out.setdefault(name, {})[arg] = values
    return out


def _parse_params(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for it in items:
        key, sep, value = it.partition("=")
        name, dot, arg = key.partition(".")
        if not (sep and dot and name and arg):
            raise ConfigError(f"--baseline-param {it!r}: need NAME.ARG=VALUE. Fix: e.g. ease.lambda_=1000.")
        out.setdefault(name, {})[arg] = yaml.safe_load(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="base YAML (data, towers, trainer), e.g. configs/ml-1m/base.yaml")
    p.add_argument("--heads", default="full,sigmoid,sampled,inbatch,hard", help="comma list of head names")
    p.add_argument("--seeds", default="3", help="number of seeds (0..S-1) or a comma list (default 3)")
    p.add_argument("--baselines", default="pop,ease,als",
                   help="comma list of pop,ease,als,ovr or 'none' (ovr: one-vs-rest logistic regression, "
                        "for documents with features)")
    p.add_argument("--baseline-param", nargs="*", default=[], metavar="NAME.ARG=VALUE",
                   help="baseline arguments, e.g. ease.lambda_=1000 als.alpha=5 (fixed: not tuned)")
    p.add_argument("--baseline-grid", nargs="*", default=[], metavar="NAME.ARG=V1,V2,...",
                   help="replace a baseline's validation grid for one setting, e.g. ease.lambda_=250,1000,4000 "
                        "(default grids: recsys.commands.compare.BASELINE_GRIDS)")
    p.add_argument("--best-head-seeds", type=int, default=None, metavar="S",
                   help="after every head ran on --seeds, train the head with the best mean validation "
                        "NDCG@10 on seeds 0..S-1 too (e.g. --seeds 1 --best-head-seeds 3)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out: heads with a record.json are reused, one with a "
                        "last.ckpt continues from it (baselines are fitted again)")
    p.add_argument("--refit", nargs="?", const="all", default=None, metavar="HEADS",
                   help="after choosing on validation, refit every head (its best epoch count; or only the comma "
                        "list HEADS) and every baseline (its chosen settings) on train + validation and report "
                        "that fit's test metrics")
    p.add_argument("--beam", type=int, default=16,
                   help="beam width of a tree head's own retrieval (TreeSoftmax), reported as '<head> (beam B)' "
                        "beside its exact two-tower scoring (default 16)")
    p.add_argument("--no-tune-baselines", action="store_true",
                   help="keep the baselines' default settings instead of tuning them on validation")
    p.add_argument("--out", default=None, help="output folder (default runs/compare/<timestamp>)")
    p.add_argument("--k", type=int, nargs="+", default=[10, 20, 50], help="cut-offs (default 10 20 50)")
    p.add_argument("--max-epochs", type=int, default=None, help="override trainer.max_epochs")
    p.add_argument("--head-configs", default=None, help="folder of <head>.yaml files (default: BASE's folder)")
    return p


def run_heads(heads, seeds, base_path, folder, out, max_epochs, extra, ks_req, runs,
              data=None, resume: bool = False, refit: frozenset | set = frozenset(), beam: int = 16
              ) -> tuple[dict, object]:
    """Train every (head, seed) on ``base + head file + run overrides``; append records to
    ``runs``; return (head config sources, data). ``data``: the RecData earlier runs loaded
    (every run must load that same one). ``refit``: the heads whose validated runs are each
    followed by a refit on train + validation for their best epoch count (``refit_overrides``),
    whose test metrics the record reports."""
    sources = {}
    for head in heads:
        head_args, sources[head] = head_source(head, folder)
        for seed in seeds:
            run = out / "configs" / f"{head}_seed{seed}.run.yaml"
            run.write_text(yaml.safe_dump(run_overrides(seed, out / "runs" / head / f"seed{seed}", max_epochs),
                                          sort_keys=False))
            args = ["--config", str(base_path), *head_args, "--config", str(run), *extra]
            _say(f"compare: {head} seed {seed} ({sources[head]})")
            rec, d = train_head(args, ks_req, out / "configs" / f"{head}_seed{seed}.yaml",
                                out / "runs" / head / f"seed{seed}", resume, beam=beam)
            if data is not None and d is not data:
                raise ConfigError(f"run {head} seed {seed} loaded other data than the first run: compare needs "
                                  "one dataset. Fix: keep the data settings in the base config only.")
            data = d
            if head in refit and rec.get("best_epoch") is not None:
                rdir = out / "runs" / head / f"seed{seed}-refit"
                rrun = out / "configs" / f"{head}_seed{seed}.refit.run.yaml"
                rrun.write_text(yaml.safe_dump(refit_overrides(seed, rdir, rec), sort_keys=False))
                _say(f"compare: {head} seed {seed}: refit on train + validation for {rec['best_epoch'] + 1} epochs")
                r, _ = train_head(["--config", str(base_path), *head_args, "--config", str(rrun), *extra], ks_req,
                                  out / "configs" / f"{head}_seed{seed}.refit.yaml", rdir, resume, splits=("test",),
                                  beam=beam)
                rec = merge_refit(rec, r)
            elif head in refit:
                logger.warning("compare: %s seed %d has no validation-best epoch: not refitted", head, seed)
            runs.append({"model": head, "kind": "head", "seed": seed, "config": str(run),
                         "head_config": sources[head], **rec})
            _say(f"compare: {head} seed {seed}: {rec['train_seconds']:.1f}s, {rec['epochs']} epochs, "
                 f"test ndcg@10 {rec['test']['ndcg@10']:.4f}")
    return sources, data


def run_baselines(baselines, seeds, params, data, ks_req, runs, tune: bool = True, tuning: dict | None = None,
                  grids: dict | None = None, refit_data=None) -> dict:
    """Tune (on validation, seed ``seeds[0]``; ``grids`` replaces ``BASELINE_GRIDS`` per name) and
    fit every (baseline, seed) on ``data``; append records to ``runs`` and the tuning to
    ``tuning``; return skipped ones. A baseline without a seed (pop, EASE) is deterministic: it
    is fitted once. The chosen point's tuning fit is reused for ``seeds[0]``. ``refit_data``
    (train + validation, ``--refit``): the chosen settings are fitted on it once more and
    its test metrics reported, as for the heads."""
    from recsys.eval.baselines import BASELINES

    skipped = {}
    for name in baselines:
        chosen, model, mem = params.get(name, {}), None, {}
        if tune:
            try:
                t, model, mem = tune_baseline(name, dict(chosen), seeds[0], data, grid=(grids or {}).get(name))
            except (ConfigError, MissingDependency) as e:
                logger.warning("compare: skipping baseline %s: %s", name, e)
                skipped[name] = str(e)
                continue
            chosen = t["chosen"]
            if tuning is not None and t["grid"]:
                tuning[name] = t
        seeded = "seed" in inspect.signature(BASELINES[name]).parameters
        for seed in seeds if seeded else seeds[:1]:
            try:
                rec = fit_baseline(name, chosen, seed, data, curve_ks(ks_req, data.n_items),
                                   *((model, mem) if seed == seeds[0] else (None, None)))
                if refit_data is not None:
                    model = None  # free the validated fit before the refit (EASE: N x N)
                    rec = merge_refit(rec, fit_baseline(name, chosen, seed, refit_data,
                                                        curve_ks(ks_req, data.n_items), splits=("test",)))
            except (ConfigError, MissingDependency) as e:  # e.g. implicit missing, EASE over max_items
                logger.warning("compare: skipping baseline %s: %s", name, e)
                skipped[name] = str(e)
                break
            runs.append({"model": name, "kind": "baseline", "seed": seed, **rec})
            _say(f"compare: {rec['params']['repr']} seed {seed}: {rec['train_seconds']:.1f}s, "
                 f"test ndcg@10 {rec['test']['ndcg@10']:.4f}")
        model = None
    return skipped


def tuning_md(tuning: dict) -> str:
    """The baselines' validation grids, scores and chosen settings as Markdown."""
    if not tuning:
        return ""
    parts = ["\n## Baselines tuned on validation\n"]
    for name, t in tuning.items():
        metric = t["metric"]
        rows = [{**tr["params"], f"valid {metric}": f"{tr[metric]:.4f}",
                 "fit s": f"{tr['fit_seconds']:.1f}" if tr.get("fit_seconds") is not None else None,
                 "chosen": "yes" if all(t["chosen"].get(k) == v for k, v in tr["params"].items()) else ""}
                for tr in t["trials"]]
        parts.append(f"\n`{name}`: grid {t['grid']}; chosen {t['chosen']}\n\n"
                     + markdown_table(rows, [*t["grid"], f"valid {metric}", "fit s", "chosen"]) + "\n")
    return "".join(parts)


def write_report(out: Path, report: dict, data) -> str:
    """results.json, results.md and the two plots; returns the Markdown table."""
    from recsys import plots

    agg = report["aggregate"]
    table = results_table(agg, XMC_TABLE if data.propensity_ab is not None else TABLE)
    (out / "results.json").write_text(json.dumps(json_safe(report), indent=2))
    st = data.stats()
    (out / "results.md").write_text(
        f"# recsys compare: {st['dataset']} ({st['users']:,} users, {st['items']:,} items)\n\n"
        f"Base config `{report['config']}`; seeds {report['seeds']}; full-catalogue test metrics, seen items "
        "excluded, best checkpoint by validation NDCG@10; mean ± sample std over seeds. "
        + (f"Refit (`--refit`): the heads {', '.join(report['refit'])} and every baseline, as chosen on "
           "validation, were fitted again on train + validation (heads for their best epoch count), and their "
           "test is that fit's; train s, s / epoch and ex / s are the validated run's. "
           if report.get("refit") else "")
        + ("ECE: expected calibration error of the label probabilities over every (test document, label) pair "
           "(log-spaced bins). " if "ECE" in table.splitlines()[0] else "")
        + "Train s: trainer.fit "
        "wall time incl. per-epoch validation (baselines: fit). Peak RSS: highest in-process RSS sampled "
        f"during the run (psutil).\n\n{table}\n" + tuning_md(report.get("baseline_tuning") or {})
        + (f"\nSkipped: {report['skipped']}\n" if report["skipped"] else ""))
    plots.metric_vs_k(agg, out / "recall_at_k.png", "recall")
    plots.quality_vs_time(agg, out / "ndcg10_vs_time.png", "ndcg@10")
    return table


def main(argv: list[str]) -> None:
    """Run the comparison and print the table."""
    argv = list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    a = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    base_path = Path(a.config)
    if not base_path.exists():
        raise ConfigError(f"--config {base_path}: file not found. Fix: e.g. --config configs/ml-1m/base.yaml.")
    base = yaml.safe_load(base_path.read_text()) or {}
    if "data" not in base or "head" in (base.get("model") or {}):
        raise ConfigError(f"--config {base_path}: a compare base sets the data and no model.head (the heads come "
                          "from the head files beside it). Fix: pass the dataset's base, e.g. --config "
                          "configs/ml-1m/base.yaml.")
    heads, baselines, seeds = _parse_list(a.heads), _parse_list(a.baselines), _parse_seeds(a.seeds)
    from recsys.eval.baselines import BASELINES

    if bad := [b for b in baselines if b not in BASELINES]:
        raise ConfigError(f"--baselines {a.baselines!r}: {bad} unknown; valid: {list(BASELINES)}. "
                          "Fix: e.g. --baselines pop,ease,als (or none).")
    if not (heads or baselines):
        raise ConfigError("--heads and --baselines are both empty: nothing to compare. Fix: e.g. --heads inbatch.")
    params = _parse_params(a.baseline_param)
    out = Path(a.out or Path("runs/compare") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    (out / "configs").mkdir(parents=True, exist_ok=True)
    folder = Path(a.head_configs) if a.head_configs else base_path.parent
    ks_req = sorted({*a.k, 10, 20})
    runs: list[dict] = []
    t_all = time.perf_counter()
    with shared_cache() as cache:  # every run's DataModule gets the same RecData
        refit_heads = set(heads if a.refit == "all" else _parse_list(a.refit or ""))
        if bad := refit_heads - set(heads):
            raise ConfigError(f"--refit {a.refit}: {sorted(bad)} not among --heads {heads}. Fix: name heads that run, "
                              "or give --refit alone for all of them.")
        sources, data = run_heads(heads, seeds, base_path, folder, out, a.max_epochs, extra, ks_req, runs,
                                  resume=a.resume, refit=refit_heads, beam=a.beam)
        best_head = None
        if a.best_head_seeds and heads:
            best_head = best_by_validation(runs)
            more = [s for s in range(a.best_head_seeds) if s not in seeds]
            _say(f"compare: best head on validation NDCG@10: {best_head}; more seeds {more}")
            run_heads([best_head], more, base_path, folder, out, a.max_epochs, extra, ks_req, runs, data, a.resume,
                      refit_heads, a.beam)
        if data is None:  # baselines only: the data of the base config
            run = out / "configs" / "data.run.yaml"
            run.write_text(yaml.safe_dump(run_overrides(seeds[0], out / "runs" / "data", None), sort_keys=False))
            data = make_cli(["--config", str(base_path), "--config", str(run), *extra]).datamodule.data
        tuning: dict = {}
        skipped = run_baselines(baselines, seeds, params, data, ks_req, runs, not a.no_tune_baselines, tuning,
                                _parse_grids(a.baseline_grid), data.with_valid_in_train() if a.refit else None)
        n_loads = len(cache)

    report = {
        "config": str(base_path), "heads": heads, "head_configs": sources, "baselines": baselines,
        "baseline_params": params, "baseline_grids": _parse_grids(a.baseline_grid), "baseline_tuning": tuning,
        "best_head": best_head, "best_head_seeds": a.best_head_seeds, "skipped": skipped, "seeds": seeds,
        "refit": sorted(refit_heads) if a.refit else False,
        "ks": list(curve_ks(ks_req, data.n_items)),
        "extra_args": extra, "max_epochs": a.max_epochs, "dataset": data.stats(), "dataset_loads": n_loads,
        "wall_seconds": time.perf_counter() - t_all,
        "environment": machine(),
        "notes": {"peak_rss_mb": "highest psutil RSS sampled every 0.05 s during the run (absolute, in-process)",
                  "ru_maxrss_mb": "getrusage ru_maxrss: process high-water mark since start",
                  "train_seconds": "heads: trainer.fit wall time incl. per-epoch validation; baselines: fit",
                  "std": "sample std over seeds (ddof=1)"},
        "runs": runs, "aggregate": aggregate(runs),
    }
    table = write_report(out, report, data)
    print(table)
    print(f"\nwrote {out}/results.json, results.md, recall_at_k.png, ndcg10_vs_time.png")
