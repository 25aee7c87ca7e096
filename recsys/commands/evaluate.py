"""``recsys evaluate --ckpt PATH``: full-catalogue metrics of a checkpoint on valid / test.

Writes ``<out>/eval_<split>.json`` (metrics, k list, index, index_recall for approximate
indexes, checkpoint path) and ``<out>/eval_<split>.md`` (Markdown table) and prints the
table. ``<out>`` defaults to the checkpoint's run folder (``runs/recsys/version_N``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recsys.errors import ConfigError, require

RANK_COLUMNS = ("recall", "ndcg", "mrr", "hit", "coverage")


def parse_json_arg(text: str | None, flag: str) -> dict:
    """A JSON object given on the command line (``{}`` when absent)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{flag} {text!r} is not valid JSON ({e}). Fix: e.g. {flag} "
                          "'{\"nprobe\": 32}'.") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} {text!r}: need a JSON object. Fix: e.g. {flag} '{{\"nprobe\": 32}}'.")
    return value


def evaluate_checkpoint(ckpt, split: str = "test", ks=(10, 20, 50), index: str = "exact",
                        index_params: dict | None = None, out=None, data_root=None) -> tuple[dict, str]:
    """Evaluate ``ckpt``, write ``eval_<split>.json`` / ``.md`` into ``out``; return (report, table)."""
    from recsys.artifacts.checkpoint import load_checkpoint
    from recsys.eval.evaluate import evaluate
    from recsys.reporting import json_safe, metric_table

    ks = sorted({int(k) for k in ks})
    if split not in ("valid", "test", "cold_items"):
        raise ConfigError(f"--split {split!r}: need 'valid', 'test' or 'cold_items'. Fix: pass one of them.")
    model, dm, meta = load_checkpoint(ckpt, data_root)
    res = evaluate(model, dm, split, ks=tuple(ks), index=index, index_params=index_params)
    metrics = json_safe(res.metrics)
    report = {
        "checkpoint": str(Path(ckpt).resolve()), "dataset": meta.dataset, "split": split, "k": ks,
        "index": index, "index_params": index_params or {}, "n_queries": int(len(res.users)),
        "metrics": metrics, "epoch": meta.epoch,
        "prior_weight": model.served_prior_weight,
    }
    if "index_recall" in metrics:
        report["index_recall"] = metrics["index_recall"]
    cols = [f"{m}@{k}" for k in ks for m in RANK_COLUMNS] + (["index_recall"] if "index_recall" in metrics else [])
    name = f"{meta.dataset} {meta.run_dir.name}/{Path(ckpt).stem} ({index}, {split})"
    table = metric_table({name: {c: metrics.get(c) for c in cols}}, cols)
    out = Path(out) if out is not None else meta.run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / f"eval_{split}.json").write_text(json.dumps(report, indent=2))
    (out / f"eval_{split}.md").write_text(
        f"# {meta.dataset}: {split} metrics, full catalogue\n\ncheckpoint: `{report['checkpoint']}`\n\n{table}\n")
    return report, table


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="recsys evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by `recsys fit`")
    p.add_argument("--k", type=int, nargs="+", default=[10, 20, 50], help="cut-offs (default 10 20 50)")
    p.add_argument("--index", default="exact", choices=["exact", "flat", "ivf", "hnsw", "beam"],
                   help="retriever (default exact); beam: beam search over a TreeSoftmax head's item tree")
    p.add_argument("--beam", type=int, default=None, help="with --index beam: prefixes kept per level (default 16)")
    p.add_argument("--index-params", default=None, help="retriever parameters as JSON, e.g. '{\"nprobe\": 32}'")
    p.add_argument("--split", default="test", choices=["test", "valid", "cold_items"],
                   help="test (default), valid, or cold_items: the test items absent from train and validation, "
                        "ranked among themselves (hold them out with split kind 'items')")
    p.add_argument("--out", default=None, help="output folder (default: the checkpoint's run folder)")
    p.add_argument("--data-root", default=None, help="data folder (default: the fit config's, else $RECSYS_DATA)")
    a = p.parse_args(argv)
    params = parse_json_arg(a.index_params, "--index-params")
    if a.beam is not None:
        require(a.index == "beam", f"--beam {a.beam} with --index {a.index}: the beam width applies to --index beam. "
                "Fix: add --index beam, or drop --beam.")
        params = {**(params or {}), "beam": a.beam}
    _, table = evaluate_checkpoint(a.ckpt, a.split, a.k, a.index, params, a.out, a.data_root)
    print(table)
