"""The export folder of a trained model (``recsys export``): write and load it, with checksums.

Export folder, every file listed with its sha256 in ``manifest.json``:

    item_embeddings.npy  (N, D) float32 item tower output, row = item index
    user_embeddings.npy  (U, D) float32 query tower output of every known user
    item_vocab.json      raw item id <-> row (``Vocab.save``); user_vocab.json likewise
    seen.npz             (U, N) CSR of the train + valid items of each user (never recommended)
    faiss.index          inner-product FAISS index over item_embeddings (faiss.write_index)
    query_tower.pt       query tower state_dict + the fit config + the schema to rebuild it
    titles.json          (N,) item titles, when the dataset has them

Serving from it: ``recsys.artifacts.recommender.Recommender.from_export``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import scipy.sparse as sp
import torch

from recsys.data.batches import QueryDataset
from recsys.data.vocab import Vocab
from recsys.errors import ConfigError, DataError
from recsys.schema import Schema

__all__ = ["query_embeddings", "Export", "write_export", "load_export", "load_query_tower", "FORMAT"]

logger = logging.getLogger(__name__)
FORMAT = "recsys-export/1"


@torch.no_grad()
def query_embeddings(query_tower, data, users: np.ndarray, max_history: int, batch_size: int = 4096) -> np.ndarray:
    """(len(users), D) float32 query embeddings with the evaluation inputs (``QueryDataset``:
    user id, deterministic train-history bag of ``max_history`` ids, user features)."""
    was = query_tower.training
    query_tower.eval()
    ds = QueryDataset(data, np.asarray(users, dtype=np.int64), max_history)
    out = [query_tower(ds.__getitems__(range(s, min(s + batch_size, len(ds))))).float().cpu().numpy()
           for s in range(0, len(ds), batch_size)]
    query_tower.train(was)
    return np.concatenate(out) if out else np.zeros((0, query_tower.out_dim), np.float32)


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
        return faiss.read_index(str(self.folder / "faiss.index"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        rv = version("recsys")
    except PackageNotFoundError:
        rv = "unknown"
    return {"recsys": rv, "torch": torch.__version__, "faiss": faiss.__version__, "numpy": np.__version__}


def write_export(model, dm, meta, out, index: str = "flat", index_params: dict | None = None,
                 force: bool = False, metrics: dict | None = None) -> Path:
    """Write the export folder ``out`` atomically (into ``out.tmp``, then ``os.replace``).

    Refuses a non-empty existing ``out`` unless ``force``. ``index``: ``flat`` / ``exact``
    (IndexFlatIP), ``ivf`` or ``hnsw`` (``recsys.retrieval`` retrievers, inner product).
    """
    from recsys.retrieval import make_retriever

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
        xu = query_embeddings(model.query_tower, d, np.arange(d.n_users), dm.max_history, dm.eval_batch_size)
        np.save(tmp / "item_embeddings.npy", xb)
        np.save(tmp / "user_embeddings.npy", xu)
        d.item_vocab.save(tmp / "item_vocab.json")
        d.user_vocab.save(tmp / "user_vocab.json")
        sp.save_npz(tmp / "seen.npz", d.seen("test").astype(np.float32))
        if d.item_titles is not None:
            (tmp / "titles.json").write_text(json.dumps([str(x) for x in d.item_titles]))
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
    config, ``recsys.artifacts.config.build_query_tower``; weights loaded)."""
    import yaml

    from recsys.artifacts.config import build_query_tower, upgrade_class_paths

    load_export(folder)  # checksums
    blob = torch.load(Path(folder) / "query_tower.pt", map_location="cpu", weights_only=False)
    model_cfg = yaml.safe_load(upgrade_class_paths(blob["config"]))["model"]
    tower = build_query_tower({"query_tower": model_cfg["query_tower"]} if model_cfg.get("query_tower") else {},
                              Schema(**blob["schema"]))
    tower.load_state_dict(blob["state_dict"])
    return tower.eval()
