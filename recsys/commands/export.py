"""``recsys export --ckpt PATH --out DIR``: a self-contained serving folder.

``--items NEW_ITEMS.csv`` adds items that arrived after training to the export without
retraining: each is embedded from its features alone (the columns of the training item file)
by the checkpoint's item tower, appended to the catalogue and the FAISS index.

DIR holds item / user embeddings, both vocabs, the seen-items CSR, a FAISS inner-product
index (``--index flat|ivf|hnsw``), the query tower with its config, titles and a
manifest.json with versions and sha256 checksums (see ``recsys.artifacts.export``). Written into
DIR.tmp and moved into place, so a failed export leaves no half folder; an existing
non-empty DIR is replaced only with ``--force``.
"""

from __future__ import annotations

import argparse
import json

from recsys.commands.evaluate import parse_json_arg


def export_checkpoint(ckpt, out, index: str = "flat", index_params: dict | None = None, force: bool = False,
                      data_root=None, items=None):
    """Load ``ckpt`` and write its export folder ``out`` (with the new items of the feature
    file ``items`` appended); returns the folder."""
    from recsys.artifacts.checkpoint import load_checkpoint
    from recsys.artifacts.export import new_item_embeddings, write_export

    model, dm, meta = load_checkpoint(ckpt, data_root)
    metrics = dict(meta.metrics)
    for split in ("valid", "test"):  # reports of `recsys evaluate` in the run folder, if any
        f = meta.run_dir / f"eval_{split}.json"
        if f.is_file():
            metrics[f"eval_{split}"] = json.loads(f.read_text())
    new = new_item_embeddings(model, dm.data, items) if items is not None else None
    return write_export(model, dm, meta, out, index, index_params, force, metrics, new_items=new)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="recsys export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by `recsys fit`")
    p.add_argument("--out", required=True, help="export folder to create")
    p.add_argument("--index", default="flat", choices=["flat", "ivf", "hnsw"], help="FAISS index (default flat)")
    p.add_argument("--index-params", default=None, help="index parameters as JSON, e.g. '{\"nlist\": 256}'")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty DIR")
    p.add_argument("--data-root", default=None, help="data folder (default: the fit config's)")
    p.add_argument("--items", default=None, help="feature file of new items to add (embedded from features alone); "
                   "with an existing DIR, also pass --force to replace it")
    a = p.parse_args(argv)
    out = export_checkpoint(a.ckpt, a.out, a.index, parse_json_arg(a.index_params, "--index-params"), a.force,
                            a.data_root, a.items)
    print(f"exported {a.ckpt} -> {out}")
