"""Comparison plots (matplotlib, Agg canvas; no pyplot global state).

Both functions take the ``aggregate`` block of ``recsys compare``'s results.json:

    {model: {"test": {"recall@10": {"mean": m, "std": s}, ...},
             "train_seconds": {"mean": m, "std": s}, ...}}
"""

from __future__ import annotations

import math
from pathlib import Path

from recsys.errors import missing_dependency


def _figure(width: float = 6.4, height: float = 4.4):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise missing_dependency("matplotlib", "plots") from e
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _ks(metrics: dict, name: str) -> list[int]:
    return sorted(int(key.split("@")[1]) for key in metrics if key.startswith(f"{name}@"))


def metric_vs_k(aggregate: dict, path: str | Path, metric: str = "recall", split: str = "test") -> Path:
    """One line per model: mean ``metric@k`` against k, shaded +-1 std over seeds."""
    fig = _figure()
    ax = fig.subplots()
    for model, agg in aggregate.items():
        m = agg.get(split, {})
        ks = _ks(m, metric)
        if not ks:
            continue
        mean = [m[f"{metric}@{k}"]["mean"] for k in ks]
        std = [m[f"{metric}@{k}"]["std"] for k in ks]
        (line,) = ax.plot(ks, mean, marker=".", label=model)
        ax.fill_between(ks, [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("k")
    ax.set_ylabel(f"{metric}@k ({split}, mean over seeds)")
    ax.set_title(f"{metric.capitalize()}@k, full catalogue, seen items excluded")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def quality_vs_time(aggregate: dict, path: str | Path, metric: str = "ndcg@10", split: str = "test") -> Path:
    """Each model at (mean train seconds, mean ``metric``), error bars +-1 std; log x."""
    fig = _figure()
    ax = fig.subplots()
    positive = []
    for model, agg in aggregate.items():
        q = agg.get(split, {}).get(metric)
        t = agg.get("train_seconds")
        if q is None or t is None or not math.isfinite(q["mean"]):
            continue
        x = max(t["mean"], 1e-3)  # popularity fits in microseconds: keep it on a log axis
        positive.append(x)
        xerr = [[min(t["std"], 0.9 * x)], [t["std"]]]  # keep the bar above 0 on the log axis
        ax.errorbar([x], [q["mean"]], xerr=xerr, yerr=[q["std"]], fmt="o", capsize=3, label=model)
        ax.annotate(model, (x, q["mean"]), textcoords="offset points", xytext=(5, 5), fontsize="small")
    if positive:
        ax.set_xscale("log")
    ax.set_xlabel("train wall time (s, log; heads incl. per-epoch validation; < 1 ms drawn at 1 ms)")
    ax.set_ylabel(f"{metric} ({split})")
    ax.set_title(f"Quality vs training time ({metric})")
    ax.grid(alpha=0.3, which="both")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
