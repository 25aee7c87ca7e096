"""The export folder of a trained model (``recsys export``): write and load it, with checksums.

Export folder, every file listed with its sha256 in ``manifest.json``:

    item_embeddings.npy  (N, D) float32 item tower output, row = item index
    user_embeddings.npy  (U, D) float32 query tower output of every known user
    item_vocab.json      raw item id <-> row (``Vocab.save``); user_vocab.json likewise
    seen.npz             (U, N) CSR of the train + valid items of each user (never recommended)
    faiss.index          inner-product FAISS index over item_embeddings (faiss.write_index)
    query_tower.npz      query tower weights (``state/<name>``) and the schema's arrays
                         (``schema/<field>``): plain numeric arrays, read with allow_pickle=False
    query_tower.json     the tower's description: the fit config (class_path / init_args, each
                         checked against the allow-list when read) and the schema's other fields
    titles.json          (N,) item titles, when the dataset has them
    item_features.json   (N,) each item's feature tokens (display only), when it has features
    beam_index.npz       a TreeSoftmax model's item tree (``recsys.retrieval.tree.BeamIndex``: codes,
                         node vectors, temperature; plain arrays): ``recommend --beam B``

Serving from it: ``recsys.artifacts.recommender.Recommender.from_export``. Reading a folder
(``load_export``) needs numpy and scipy only; torch is imported by the functions that run a
tower (writing an export, new items, a new user's history) and FAISS by the index.
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

import numpy as np
import scipy.sparse as sp

from recsys.data.vocab import Vocab
from recsys.errors import ConfigError, DataError
from recsys.schema import Schema

__all__ = ["query_embeddings", "Export", "write_export", "load_export", "write_query_tower", "load_query_tower",
           "FORMAT"]

logger = logging.getLogger(__name__)
FORMAT = "recsys-export/2"  # 2: the query tower as npz + JSON (no pickle anywhere)


def query_embeddings(query_tower, data, users: np.ndarray, max_history: int, batch_size: int = 4096) -> np.ndarray:
    """(len(users), D) float32 query embeddings with the evaluation inputs (``QueryDataset``:
    user id, deterministic train-history bag of ``max_history`` ids, user features)."""
    import torch

    from recsys.data.batches import QueryDataset

    was = query_tower.training
    query_tower.eval()
    ds = QueryDataset(data, np.asarray(users, dtype=np.int64), max_history)
    with torch.no_grad():
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
    item_features: list[str] | None = None  # (N,) feature tokens of each item, for display
    beam_index: object | None = None  # recsys.retrieval.tree.BeamIndex of a TreeSoftmax model

    def faiss_index(self):
        """The folder's FAISS index (imports FAISS)."""
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
    import torch

    try:
        rv = version("recsys")
    except PackageNotFoundError:
        rv = "unknown"
    return {"recsys": rv, "torch": torch.__version__, "faiss": faiss.__version__, "numpy": np.__version__}


def new_item_embeddings(model, data, path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """Embed the items of a feature file that are not in the catalogue, without retraining:
    (raw ids (M,), embeddings (M, D) float32, titles (M,) or None, feature tokens (M,)).

    The file has the columns of the training item file (``data.item_encoder``); its rows are
    encoded with the training vocabulary (unknown tokens dropped) and embedded by
    ``ItemTower.embed_new`` (features + the unknown-id row, or a zero id part). Ids already in
    the catalogue raise ``DataError``.
    """
    import torch

    from recsys.data.batches import pad_rows
    from recsys.data.features import read_features

    enc = data.item_encoder
    if enc is None:
        raise ConfigError(f"--items {str(path)!r}: the model was trained without item features, so a new item has "
                          "nothing to be embedded from. Fix: train with item_features (data.source) first.")
    frame, _ = read_features(path, "item", enc.columns)
    known = data.item_vocab.raw.get_indexer(frame.index) >= 0
    if known.any():
        raise DataError(f"{path}: {int(known.sum())} item id(s) already in the catalogue (e.g. "
                        f"{frame.index[known][:3].tolist()}); --items adds new items only. Fix: drop those rows.")
    bag = enc.bag(frame)  # (M, G)
    rows = None
    if model.item_tower.feat_emb is not None:
        rows = torch.from_numpy(pad_rows(bag.indptr.astype(np.int64), bag.indices.astype(np.int64),
                                         np.arange(len(frame)), max(1, int(np.diff(bag.indptr).max(initial=0))),
                                         pad=bag.shape[1]))
    num = enc.numeric(frame)
    xb = model.item_tower.embed_new(rows, None if num is None else torch.from_numpy(num))
    titles = frame[enc.columns.title].astype(str).to_numpy() if enc.columns.title else None
    names = np.asarray(enc.tokens, dtype=object)
    tokens = [" ".join(names[bag.indices[bag.indptr[j]:bag.indptr[j + 1]]]) for j in range(bag.shape[0])]
    return frame.index.to_numpy(), xb.float().cpu().numpy(), titles, tokens


def write_export(model, dm, meta, out, index: str = "flat", index_params: dict | None = None,
                 force: bool = False, metrics: dict | None = None, new_items=None) -> Path:
    """Write the export folder ``out`` atomically (into ``out.tmp``, then ``os.replace``).

    Refuses a non-empty existing ``out`` unless ``force``. ``index``: ``flat`` / ``exact``
    (IndexFlatIP), ``ivf`` or ``hnsw`` (``recsys.retrieval`` retrievers, inner product).
    ``new_items``: ``new_item_embeddings``' (ids, embeddings, titles, tokens), appended to the
    catalogue (never seen by any user).
    """
    import faiss

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
        item_vocab, seen, titles = d.item_vocab, d.seen("test").astype(np.float32), d.item_titles
        feats = d.item_feature_strings()
        if new_items is not None:
            ids, xn, tn, fn = new_items
            if xn.shape[1] != xb.shape[1]:
                raise DataError(f"new item embeddings have dim {xn.shape[1]}, the catalogue {xb.shape[1]}. Fix: embed "
                                "them with the same checkpoint (new_item_embeddings).")
            xb = np.ascontiguousarray(np.concatenate([xb, xn]), dtype=np.float32)
            both_int = d.item_vocab.raw.dtype.kind in "iu" and ids.dtype.kind in "iu"  # else keep ids as objects
            item_vocab = Vocab(np.concatenate([d.item_vocab.raw.to_numpy(), ids], dtype=None if both_int else object),
                               name="item")
            seen = sp.hstack([seen, sp.csr_matrix((seen.shape[0], len(ids)), dtype=np.float32)]).tocsr()
            if feats is not None:
                feats = feats + list(fn)
            if titles is not None or tn is not None:
                titles = np.concatenate([titles if titles is not None else np.full(d.n_items, "", object),
                                         tn if tn is not None else np.full(len(ids), "", object)])
        np.save(tmp / "item_embeddings.npy", xb)
        np.save(tmp / "user_embeddings.npy", xu)
        item_vocab.save(tmp / "item_vocab.json")
        d.user_vocab.save(tmp / "user_vocab.json")
        sp.save_npz(tmp / "seen.npz", seen)
        if titles is not None:
            (tmp / "titles.json").write_text(json.dumps([str(x) for x in titles]))
        if feats is not None:
            (tmp / "item_features.json").write_text(json.dumps(feats))
        name = "flat" if index == "exact" else index
        retriever = make_retriever(name, **(index_params or {})).build(xb)
        faiss.write_index(retriever.index, str(tmp / "faiss.index"))
        write_query_tower(model.query_tower, model.schema, meta.config, tmp)
        if hasattr(model.head, "beam_index"):  # a TreeSoftmax: its tree, for beam search at serving
            np.savez(tmp / "beam_index.npz", **model.head.beam_index(model.beam_leaf_prior()).state_dict())
        files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
        manifest = {
            "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": str(meta.path),
            "dataset": meta.dataset, "n_users": int(d.n_users), "n_items": int(xb.shape[0]), "dim": int(xb.shape[1]),
            "n_trained_items": int(d.n_items), "max_history": int(dm.max_history),
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
    titles = feats = None
    if (folder / "titles.json").is_file():
        titles = np.asarray(json.loads((folder / "titles.json").read_text()), dtype=object)
    if (folder / "item_features.json").is_file():
        feats = [str(x) for x in json.loads((folder / "item_features.json").read_text())]
    beam = None
    if "beam_index.npz" in manifest["files"]:
        from recsys.retrieval.tree import BeamIndex

        with np.load(folder / "beam_index.npz", allow_pickle=False) as z:
            beam = BeamIndex.from_state(z)
    return Export(folder, manifest, np.load(folder / "item_embeddings.npy", allow_pickle=False),
                  np.load(folder / "user_embeddings.npy", allow_pickle=False), Vocab.load(folder / "item_vocab.json"),
                  Vocab.load(folder / "user_vocab.json"), sp.load_npz(folder / "seen.npz").tocsr(), titles, feats,
                  beam)


def write_query_tower(tower, schema: Schema, config: str, folder: Path) -> None:
    """``query_tower.npz`` (weights and the schema's arrays, numeric only) and
    ``query_tower.json`` (the fit config and the schema's other fields) in ``folder``."""
    arrays = {f"state/{k}": v.detach().cpu().numpy() for k, v in tower.state_dict().items()}
    scalars = {}
    for f in dataclasses.fields(Schema):
        v = getattr(schema, f.name)
        if isinstance(v, np.ndarray):
            arrays[f"schema/{f.name}"] = np.ascontiguousarray(v)
        else:
            scalars[f.name] = [str(x) for x in v] if f.name.endswith("_names") else (
                [int(x) for x in v] if isinstance(v, (list, tuple)) else v)
    np.savez(folder / "query_tower.npz", **arrays)
    (folder / "query_tower.json").write_text(json.dumps(
        {"format": "recsys-query-tower/1", "config": config, "schema": scalars,
         "state_keys": list(tower.state_dict())}, indent=1))


def load_query_tower(folder):
    """Rebuild the query tower of an export folder: its class and settings from the stored fit
    config (``recsys.artifacts.config.build_query_tower``, class paths checked against the
    allow-list), its weights from ``query_tower.npz``. Nothing read can run code: the arrays
    are loaded with ``allow_pickle=False`` and the description is JSON."""
    import torch
    import yaml

    from recsys.artifacts.config import build_query_tower, upgrade_class_paths

    load_export(folder)  # checksums
    folder = Path(folder)
    npz, desc_path = folder / "query_tower.npz", folder / "query_tower.json"
    if not (npz.is_file() and desc_path.is_file()):
        raise DataError(f"export {str(folder)!r} has no query_tower.npz / query_tower.json, so a new user's history "
                        "cannot be embedded. Fix: re-export the checkpoint with this recsys version "
                        "(`recsys export --force`).")
    try:  # numeric arrays only: an object array would need pickle, which is refused unread
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise DataError(f"{str(npz)!r} holds more than numeric arrays ({e}); it is refused unread, since loading "
                        "pickled objects can run code. Fix: re-export the checkpoint (`recsys export --force`).") from e
    desc = json.loads(desc_path.read_text())
    model_cfg = yaml.safe_load(upgrade_class_paths(desc["config"]))["model"]
    schema = {**desc["schema"], **{k[len("schema/"):]: v for k, v in arrays.items() if k.startswith("schema/")}}
    tower = build_query_tower(model_cfg, Schema(**schema))
    state = {k[len("state/"):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("state/")}
    tower.load_state_dict(state)
    return tower.eval()
