"""Beam search over a TreeSoftmax item index: recall and latency against beam width (beside FAISS
IVF's nprobe, the one-level beam), diversity against beam width and Gumbel temperature, and the
head's training throughput against catalogue size.

    python -m bench.beam_search            # ML-1M (configs/ml-1m/{base,tree}.yaml), throughput 10k / 100k / 1M
    python -m bench.beam_search --quick    # the embedded synthetic data, 1 epoch; throughput 10k / 100k
    python -m bench.beam_search --throughput-only   # throughput alone -> beam_search_throughput.{json,md}

Quality (one process): the shipped ML-1M tree config is trained (``--epochs``, best validation
epoch restored), then on the test users, with seen items excluded everywhere:

* exact: brute-force inner products of the same query and leaf (item) embeddings, top-100;
* exhaustive tree: the beam keeps every prefix (K^(L-1)), so every item is ranked by the tree
  probability prod_l p(c_l | u, prefix);
* beam b for b in 1 ... 256: recall@10 / @100 on the test items, the share of the exhaustive
  tree's recall@100 it reaches, overlap with the exact top-100, seconds per query, coverage@10,
  Gini@10 and intra-list diversity (distinct top-level codes in a top-10);
* a Gumbel beam (temperature 0.5 ... 2 at beam 16): the same, the diversity knob;
* FAISS IVF (``recsys.retrieval.faiss``, nlist sqrt(N)) at nprobe 1 ... nlist over the same
  item embeddings ranked by the exact score: recall@10 and seconds per query.

Throughput: ``bench.train_throughput.run_sizes`` (Lightning fit path and a bare loop) for the
tree head (a balanced random tree, ``common.tree_shape``: L = 2 up to 10^4 items, L = 3 above),
in-batch and sampled softmax at each N.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common as C

WIDTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TEMPERATURES = (0.0, 0.5, 1.0, 2.0)


def _train(quick: bool, epochs: int, root_dir: str):
    """The shipped tree config trained with its best validation epoch restored: (model, datamodule, fit s)."""
    from recsys.train.cli import RecsysCLI, fit_best

    repo = Path(__file__).resolve().parents[1]
    ds = "synthetic" if quick else "ml-1m"
    args = ["--config", str(repo / "configs" / ds / "base.yaml"), "--config", str(repo / "configs" / ds / "tree.yaml"),
            f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={root_dir}", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", f"--checkpoint.dirpath={root_dir}"]
    cli = RecsysCLI(args=args, run=False)
    secs, _ = fit_best(cli)
    return cli.model.eval(), cli.datamodule, secs


def _diversity(I: np.ndarray, top_codes: np.ndarray, n_items: int) -> dict:
    """coverage@10, Gini@10 of the recommended items, distinct top-level codes per top-10."""
    from recsys.eval.metrics import distinct_groups
    from recsys.numeric import gini

    top = I[:, :10]
    counts = np.bincount(top[top >= 0], minlength=n_items)
    return {"coverage@10": float((counts > 0).mean()), "gini@10": float(gini(counts)),
            "distinct_top_codes@10": distinct_groups(I, top_codes, 10)}


def run_quality(case: dict) -> dict:
    """Train, then every retrieval of the module docstring on the test users."""
    import torch

    from recsys.eval.evaluate import embed_queries, topk_metrics
    from recsys.retrieval import make_retriever, recall_vs_exact

    with tempfile.TemporaryDirectory() as tmp:
        model, dm, fit_s = _train(case["quick"], case["epochs"], tmp)
    data, head = dm.data, model.head
    users, xq = embed_queries(model.query_tower, dm.eval_dataloader("test"))
    with torch.no_grad():
        xb = model.item_embeddings().float().cpu().numpy()  # (N, D) as served: with the chosen prior
    prior = model.beam_leaf_prior()  # (N,) that prior, which the beam adds after the leaf normalisation
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    exclude = data.seen("test")[users]
    ks, Q, N = (10, 100), len(users), data.n_items
    K, L = head.K, head.L
    top_codes = head.tree.codes[:, 0]

    def score(I, secs):
        m = topk_metrics(I, users, data, "test", ks).metrics
        return {"recall@10": m["recall@10"], "ndcg@10": m["ndcg@10"], "recall@100": m["recall@100"],
                "ms_per_query": 1e3 * secs / Q, **_diversity(I, top_codes, N)}

    t = time.perf_counter()
    _, I_exact = make_retriever("exact").build(xb).search(xq, 100, exclude=exclude)
    exact = {"method": "exact", **score(I_exact, time.perf_counter() - t)}
    full_beam = K ** (L - 1)

    def beam_row(b, temperature=0.0, rerank=False):
        t = time.perf_counter()
        I, _ = head.beam_topk(xq, xb, 100, beam=b, exclude=exclude, temperature=temperature, rerank=rerank,
                              rng=np.random.default_rng(0), leaf_prior=prior)
        row = {"method": "beam", "beam": b, "temperature": temperature, "rerank": rerank,
               **score(I, time.perf_counter() - t), "overlap_exact@100": recall_vs_exact(I, I_exact)}
        print(row, flush=True)
        return row

    exhaustive = {**beam_row(full_beam), "method": "exhaustive tree"}
    beams = [beam_row(b) for b in WIDTHS if b < full_beam] + [{**exhaustive, "method": "beam"}]
    for r in beams:
        r["recall@100_vs_exhaustive"] = r["recall@100"] / max(exhaustive["recall@100"], 1e-12)
    reranked = [beam_row(b, rerank=True) for b in (4, 16, 64) if b <= full_beam]
    gumbel = [beam_row(16 if full_beam >= 16 else full_beam, temperature=T) for T in TEMPERATURES]
    nlist = max(4, int(round(math.sqrt(N))))
    ivf = []
    for nprobe in [p for p in (1, 2, 4, 8, 16, 32, 64) if p <= nlist]:
        r = make_retriever("ivf", nlist=nlist, nprobe=nprobe).build(xb)
        t = time.perf_counter()
        _, I = r.search(xq, 100, exclude=exclude)
        ivf.append({"method": "ivf", "nlist": nlist, "nprobe": nprobe, **score(I, time.perf_counter() - t),
                    "overlap_exact@100": recall_vs_exact(I, I_exact)})
    return {"dataset": data.name, "users": Q, "items": N, "branching": K, "levels": L, "fit_seconds": fit_s,
            "exact": exact, "exhaustive": exhaustive, "beams": beams, "reranked": reranked, "gumbel": gumbel,
            "ivf": ivf, "threads": C.threads()}


def _plots(q: dict, out: Path) -> list[str]:
    """Diversity against beam width; recall against latency beside IVF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    b = q["beams"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot([r["beam"] for r in b], [r["coverage@10"] for r in b], marker="o", label="coverage@10")
    ax[0].set(xscale="log", xlabel="beam width", ylabel="coverage@10", title="Diversity against beam width")
    ax2 = ax[0].twinx()
    ax2.plot([r["beam"] for r in b], [r["distinct_top_codes@10"] for r in b], marker="s", color="C1",
             label="distinct top-level codes in a top-10")
    ax2.set_ylabel("distinct top-level codes @10")
    g = q["gumbel"]
    ax[1].plot([r["temperature"] for r in g], [r["coverage@10"] for r in g], marker="o", label="coverage@10")
    ax[1].plot([r["temperature"] for r in g], [r["recall@10"] for r in g], marker="s", label="recall@10")
    ax[1].set(xlabel="Gumbel temperature (beam 16)", title="Stochastic beam")
    ax[1].legend()
    files.append(C.save_figure(fig, out, "beam_search_diversity.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["ms_per_query"] for r in b], [r["recall@10"] for r in b], marker="o",
            label="tree beam (1 ... exhaustive)")
    iv = q["ivf"]
    ax.plot([r["ms_per_query"] for r in iv], [r["recall@10"] for r in iv], marker="s", label="FAISS IVF (nprobe)")
    ax.axhline(q["exact"]["recall@10"], color="k", ls="--", lw=1, label="exact two-tower")
    ax.set(xscale="log", xlabel="ms per query (2 threads)", ylabel="test recall@10",
           title=f"Recall against latency ({q['dataset']}, {q['items']:,} items)")
    ax.legend()
    files.append(C.save_figure(fig, out, "beam_search_latency.png"))
    plt.close("all")
    return files


def _report_quality(rep, q: dict, out: Path) -> None:
    """The quality part's tables, target and plots into ``rep`` (or the error of its process)."""
    if "error" in q:
        rep.note(f"quality: failed: {q['error']}")
        return
    rep.data["quality"] = q
    rep.table("Exact, exhaustive tree and beam widths (test users, seen items excluded)",
              [q["exact"], *q["beams"]],
              ["method", "beam", "recall@10", "ndcg@10", "recall@100", "recall@100_vs_exhaustive",
               "overlap_exact@100", "ms_per_query", "coverage@10", "gini@10", "distinct_top_codes@10"])
    rep.table("Beam re-ranked by the exact score", q["reranked"],
              ["beam", "recall@10", "recall@100", "overlap_exact@100", "ms_per_query"])
    rep.table("Gumbel beam (beam 16)", q["gumbel"],
              ["temperature", "recall@10", "coverage@10", "gini@10", "distinct_top_codes@10", "ms_per_query"])
    rep.table("FAISS IVF over the same item embeddings", q["ivf"],
              ["nlist", "nprobe", "recall@10", "recall@100", "overlap_exact@100", "ms_per_query"])
    ok = [r for r in q["beams"] if r["beam"] <= 32 and r["recall@100_vs_exhaustive"] >= 0.95]
    rep.target("beam width <= 32 reaches >= 0.95 of the exhaustive tree's recall@100",
               min((r["beam"] for r in ok), default=None), "some beam <= 32 with ratio >= 0.95", bool(ok),
               f"exhaustive recall@100 {q['exhaustive']['recall@100']:.4f}")
    rep.note(f"plots: {', '.join(_plots(q, out))}; tree {q['branching']} x {q['levels']} over {q['items']:,} "
             f"items, fit {q['fit_seconds']:.0f} s")


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of the quality part (default 8; --quick 1)")
    part = p.add_mutually_exclusive_group()
    part.add_argument("--skip-throughput", action="store_true", help="quality part only")
    part.add_argument("--throughput-only", action="store_true",
                      help="throughput part only, written to beam_search_throughput.{json,md} (the quality "
                           "results stay as they are)")
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    quick = args.quick
    name = "beam_search_throughput" if args.throughput_only else "beam_search"
    rep = C.Report(name, quick, C.command_line(), __doc__.split("\n\n")[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.throughput_only:
        _report_quality(rep, C.run_case("bench.beam_search", {
            "part": "quality", "quick": quick, "epochs": args.epochs or (1 if quick else 8),
            "threads": args.threads}), out)
    if not args.skip_throughput:
        sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
        t = C.run_case("bench.train_throughput", {"quick": quick, "users": 100_000, "per_user": 10.0, "zipf": 0.5,
                                                  "threads": args.threads, "rounds": 3, "sizes": sizes,
                                                  "heads": ["tree", "tree_sampled", "tree_inbatch", "inbatch",
                                                            "sampled"]})
        if "error" in t:
            rep.note(f"throughput: failed: {t['error']}")
        else:
            rows = t["rows"]
            rep.data["throughput"] = t
            rep.table("Training throughput (examples / s, median window)", rows,
                      ["N", "head", "fit_ex_s", "bare_ex_s", "fit_best", "bare_best", "windows"])

            def get(N, h):
                return next((r["fit_ex_s"] for r in rows if r["N"] == N and r["head"] == h), None)

            top = sizes[-1]
            ib = get(top, "inbatch")
            for h, what in (("tree", "tree (every sibling)"), ("tree_sampled", "tree, leaf_samples 16"),
                            ("tree_inbatch", "tree, leaf_head in-batch")):
                tr, lo = get(top, h), get(sizes[0], h)
                rep.target(f"{what} at {top:,} items >= in-batch (fit ex/s)", tr and round(tr),
                           f">= in-batch {ib and round(ib)}", None if quick or not (tr and ib) else tr >= ib)
                flat = None if quick or not (tr and lo) else tr / lo >= 0.9
                rep.target(f"{what} flat in N: throughput at {top:,} / at {sizes[0]:,}",
                           tr and lo and round(tr / lo, 3), ">= 0.9", flat)
    jp, mp = rep.write(out)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")


def _case(case: dict) -> dict:
    return run_quality(case)


if __name__ == "__main__":
    if not C.case_main(_case):
        main()
