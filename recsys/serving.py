"""Serving: recommend for one user from a checkpoint or an export folder, with optional
temperature sampling, and the export folder itself (write / load with checksums).

Export folder (``recsys export``), every file listed with its sha256 in ``manifest.json``:

    item_embeddings.npy  (N, D) float32 item tower output, row = item index
    user_embeddings.npy  (U, D) float32 query tower output of every known user
    item_vocab.json      raw item id <-> row (``Vocab.save``); user_vocab.json likewise
    seen.npz             (U, N) CSR of the train + valid items of each user (never recommended)
    faiss.index          inner-product FAISS index over item_embeddings (faiss.write_index)
    query_tower.pt       query tower state_dict + the fit config + the schema to rebuild it
    titles.json          (N,) item titles, when the dataset has them

    rec = Recommender.from_export("exports/ml-1m")
    rec.recommend("42", k=10)                      # plain top-k, seen items excluded
    rec.recommend("42", k=10, temperature=0.5, seed=0)  # sampled without replacement
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recsys.data.datamodule import QueryDataset, Schema
from recsys.data.vocab import Vocab
from recsys.errors import ConfigError, DataError

__all__ = ["gumbel_topk", "embed_users", "Recommender", "Export", "write_export", "load_export",
           "load_query_tower", "FORMAT"]

logger = logging.getLogger(__name__)
FORMAT = "recsys-export/1"


def gumbel_topk(scores: np.ndarray, k: int, temperature: float = 0.0, rng: np.random.Generator | None = None,
                exclude_mask: np.ndarray | None = None) -> np.ndarray:
    """k distinct ids drawn without replacement from softmax(scores / temperature).

    Gumbel top-k trick (Vieira 2014; Kool, van Hoof & Welling, ICML 2019, "Stochastic Beams
    and Where to Find Them"): the ids of the k largest ``scores / T + G``, G i.i.d.
    Gumbel(0, 1), are an ordered sample without replacement from softmax(scores / T).
    ``temperature`` <= 0 is plain top-k (the T -> 0 limit): by score desc, ties by smaller
    id, as ``recsys.index``. Large T approaches uniform sampling over admissible items.

    scores (N,) or (Q, N); ``exclude_mask`` bool of the same shape marks ids never returned.
    Returns int64 (k,) or (Q, k), best first, padded with -1 when fewer than k are admissible.
    """
    S = np.asarray(scores, dtype=np.float64)
    one = S.ndim == 1
    S = np.atleast_2d(S)
    assert S.ndim == 2, f"scores must be (N,) or (Q, N), got shape {np.shape(scores)}"
    if k < 1:
        raise ConfigError(f"k={k} < 1: need at least one result. Fix: choose k >= 1.")
    if not np.isfinite(S).all():
        raise DataError(f"scores hold {np.count_nonzero(~np.isfinite(S))} NaN/inf values: they must be "
                        "finite. Fix: check the towers for diverged weights.")
    if temperature > 0:
        rng = rng if rng is not None else np.random.default_rng()
        keys = S / temperature + rng.gumbel(size=S.shape)  # (Q, N) perturbed log-weights
    else:
        keys = S.copy()
    if exclude_mask is not None:
        ex = np.atleast_2d(np.asarray(exclude_mask, dtype=bool))
        assert ex.shape == keys.shape, f"exclude_mask shape {ex.shape} != scores shape {keys.shape}"
        keys[ex] = -np.inf
    Q, N = keys.shape
    out = np.full((Q, k), -1, dtype=np.int64)
    for r in range(Q):
        row = keys[r]
        kk = min(k, N)
        t = np.partition(row, N - kk)[N - kk]  # kk-th largest key
        cand = np.flatnonzero(row >= t) if np.isfinite(t) else np.flatnonzero(np.isfinite(row))
        cand = cand[np.lexsort((cand, -row[cand]))][:kk]  # key desc, then id asc
        out[r, : len(cand)] = cand
    return out[0] if one else out


@torch.no_grad()
def embed_users(query_tower, data, users: np.ndarray, max_history: int, batch_size: int = 4096) -> np.ndarray:
    """(len(users), D) float32 query embeddings with the evaluation inputs (``QueryDataset``:
    user id, deterministic train-history bag of ``max_history`` ids, user features)."""
    was = query_tower.training
    query_tower.eval()
    ds = QueryDataset(data, np.asarray(users, dtype=np.int64), max_history)
    out = [query_tower(ds.__getitems__(range(s, min(s + batch_size, len(ds))))).float().cpu().numpy()
           for s in range(0, len(ds), batch_size)]
    query_tower.train(was)
    return np.concatenate(out) if out else np.zeros((0, query_tower.out_dim), np.float32)


@dataclass
class Recommender:
    """Scores every item for one user by inner product and returns the best unseen ones."""

    xb: np.ndarray  # (N, D) float32 item embeddings
    embed_user: Callable[[int], np.ndarray]  # user index -> (D,) query embedding
    seen: sp.csr_matrix  # (U, N) items never recommended to each user (train + valid)
    user_vocab: Vocab
    item_vocab: Vocab
    titles: np.ndarray | None = None  # (N,) str

    @classmethod
    def from_checkpoint(cls, path, data_root=None) -> Recommender:
        from recsys.checkpoint import load_checkpoint

        model, dm, _ = load_checkpoint(path, data_root)
        d = dm.data
        xb = model.item_embeddings().float().cpu().numpy()

        def embed_user(u: int) -> np.ndarray:
            return embed_users(model.query_tower, d, np.array([u]), dm.max_history)[0]

        return cls(xb, embed_user, d.seen("test"), d.user_vocab, d.item_vocab, d.item_titles)

    @classmethod
    def from_export(cls, folder) -> Recommender:
        e = load_export(folder)
        return cls(e.item_embeddings, lambda u: e.user_embeddings[u], e.seen, e.user_vocab,
                   e.item_vocab, e.titles)

    def recommend(self, user, k: int = 10, temperature: float = 0.0, seed: int | None = None) -> list[dict]:
        """Rows {rank, item, score, title} for raw user id ``user``; seen items excluded.

        ``temperature`` > 0 samples k distinct items from softmax(score / T) (``gumbel_topk``).
        """
        u = int(self.user_vocab.encode([user])[0])  # unknown id -> the Vocab's DataError
        scores = self.xb @ self.embed_user(u).astype(np.float32)  # (N,)
        mask = np.zeros(len(scores), dtype=bool)
        mask[self.seen.indices[self.seen.indptr[u]:self.seen.indptr[u + 1]]] = True
        if k > len(scores):
            raise ConfigError(f"k={k} exceeds the catalogue size N={len(scores)}. Fix: choose k <= N.")
        ids = gumbel_topk(scores, k, temperature, np.random.default_rng(seed), exclude_mask=mask)
        ids = ids[ids >= 0]
        raw = self.item_vocab.decode(ids)
        return [{"rank": r + 1, "item": raw[r].item() if hasattr(raw[r], "item") else raw[r],
                 "score": float(scores[i]),
                 "title": None if self.titles is None else str(self.titles[i])}
                for r, i in enumerate(ids)]


# ---- export folder --------------------------------------------------------------------
@dataclass
class Export:
    """A loaded export folder (checksums verified)."""

    folder: Path
    manifest: dict
    item_embeddings: np.ndarray  # (N, D)
    user_embeddings: np.ndarray  # (U, D)
    item_vocab: Vocab
    user_vocab: Vocab
    seen: sp.csr_matrix  # (U, N)
    titles: np.ndarray | None

    def faiss_index(self):
        import faiss

        return faiss.read_index(str(self.folder / "faiss.index"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import faiss

    try:
        rv = version("recsys")
    except PackageNotFoundError:
        rv = "unknown"
    return {"recsys": rv, "torch": torch.__version__, "faiss": faiss.__version__, "numpy": np.__version__}


def write_export(model, dm, meta, out, index: str = "flat", index_params: dict | None = None,
                 force: bool = False, metrics: dict | None = None) -> Path:
    """Write the export folder ``out`` atomically (into ``out.tmp``, then ``os.replace``).

    Refuses a non-empty existing ``out`` unless ``force``. ``index``: ``flat`` / ``exact``
    (IndexFlatIP), ``ivf`` or ``hnsw`` (``recsys.index`` retrievers, inner product).
    """
    from recsys.index import make_retriever

    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(
            f"export folder {str(out)!r} already exists and is not empty: refusing to overwrite it. "
            "Fix: pass --force to replace it, or choose another --out."
        )
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        d = dm.data
        t = time.perf_counter()
        xb = np.ascontiguousarray(model.item_embeddings().float().cpu().numpy())  # (N, D)
        xu = embed_users(model.query_tower, d, np.arange(d.n_users), dm.max_history, dm.eval_batch_size)
        np.save(tmp / "item_embeddings.npy", xb)
        np.save(tmp / "user_embeddings.npy", xu)
        d.item_vocab.save(tmp / "item_vocab.json")
        d.user_vocab.save(tmp / "user_vocab.json")
        sp.save_npz(tmp / "seen.npz", d.seen("test").astype(np.float32))
        if d.item_titles is not None:
            (tmp / "titles.json").write_text(json.dumps([str(x) for x in d.item_titles]))
        import faiss

        name = "flat" if index == "exact" else index
        retriever = make_retriever(name, **(index_params or {})).build(xb)
        faiss.write_index(retriever.index, str(tmp / "faiss.index"))
        schema = {f.name: getattr(model.schema, f.name) for f in dataclasses.fields(Schema)}
        torch.save({"state_dict": model.query_tower.state_dict(), "config": meta.config, "schema": schema},
                   tmp / "query_tower.pt")
        files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
        manifest = {
            "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": str(meta.path),
            "dataset": meta.dataset, "n_users": int(d.n_users), "n_items": int(d.n_items), "dim": int(xb.shape[1]),
            "index": {"name": name, "params": index_params or {}}, "score": "inner product",
            "prior_weight": model.served_prior_weight,
            "metrics": metrics or {}, "config": meta.config, "versions": _versions(), "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        old = None
        if out.exists():
            old = out.with_name(out.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s to %s in %.2fs", meta.path, out, time.perf_counter() - t)
    return out


def load_export(folder) -> Export:
    """Read an export folder after checking every file's sha256 against the manifest."""
    folder = Path(folder)
    man_path = folder / "manifest.json"
    if not man_path.is_file():
        raise DataError(f"{str(folder)!r} has no manifest.json: it is not a recsys export folder. "
                        "Fix: create one with `recsys export --ckpt PATH --out DIR`.")
    manifest = json.loads(man_path.read_text())
    if manifest.get("format") != FORMAT:
        raise DataError(f"{str(man_path)!r}: format {manifest.get('format')!r}, expected {FORMAT!r}. "
                        "Fix: re-export with this recsys version.")
    for name, info in manifest["files"].items():
        p = folder / name
        if not p.is_file():
            raise DataError(f"export {str(folder)!r}: file {name} listed in manifest.json is missing. "
                            "Fix: re-export the checkpoint (`recsys export --force`).")
        got = _sha256(p)
        if got != info["sha256"]:
            raise DataError(
                f"export {str(folder)!r}: {name} has sha256 {got[:16]}..., manifest.json says "
                f"{info['sha256'][:16]}...: the file was modified or corrupted. Fix: re-export the "
                "checkpoint (`recsys export --force`)."
            )
    titles = None
    if (folder / "titles.json").is_file():
        titles = np.asarray(json.loads((folder / "titles.json").read_text()), dtype=object)
    return Export(folder, manifest, np.load(folder / "item_embeddings.npy"),
                  np.load(folder / "user_embeddings.npy"), Vocab.load(folder / "item_vocab.json"),
                  Vocab.load(folder / "user_vocab.json"), sp.load_npz(folder / "seen.npz").tocsr(), titles)


def load_query_tower(folder):
    """Rebuild the query tower of an export folder (class and settings from the stored fit
    config, parsed with the type ``TwoTowerModule`` declares for it; weights loaded)."""
    import inspect
    import typing

    import yaml
    from jsonargparse import ArgumentParser

    from recsys.module import TwoTowerModule

    load_export(folder)  # checksums
    blob = torch.load(Path(folder) / "query_tower.pt", map_location="cpu", weights_only=False)
    cfg = yaml.safe_load(blob["config"])["model"].get("query_tower")
    hint = typing.get_type_hints(TwoTowerModule.__init__)["query_tower"]
    p = ArgumentParser()
    p.add_argument("--query_tower", type=hint)
    ns = p.instantiate_classes(p.parse_object({"query_tower": cfg} if cfg else {}))
    factory = ns.query_tower if cfg else inspect.signature(TwoTowerModule).parameters["query_tower"].default
    tower = factory(Schema(**blob["schema"]))
    tower.load_state_dict(blob["state_dict"])
    return tower.eval()
