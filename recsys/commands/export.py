"""``recsys export --ckpt PATH --out DIR``: a self-contained serving folder.

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
                      data_root=None):
    """Load ``ckpt`` and write its export folder ``out``; returns the folder."""
    from recsys.artifacts.checkpoint import load_checkpoint
    from recsys.artifacts.export import write_export

    model, dm, meta = load_checkpoint(ckpt, data_root)
    metrics = dict(meta.metrics)
    for split in ("valid", "test"):  # reports of `recsys evaluate` in the run folder, if any
        f = meta.run_dir / f"eval_{split}.json"
        if f.is_file():
            metrics[f"eval_{split}"] = json.loads(f.read_text())
    return write_export(model, dm, meta, out, index, index_params, force, metrics)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="recsys export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by `recsys fit`")
    p.add_argument("--out", required=True, help="export folder to create")
    p.add_argument("--index", default="flat", choices=["flat", "ivf", "hnsw"], help="FAISS index (default flat)")
    p.add_argument("--index-params", default=None, help="index parameters as JSON, e.g. '{\"nlist\": 256}'")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty DIR")
    p.add_argument("--data-root", default=None, help="data folder (default: the fit config's)")
    a = p.parse_args(argv)
    out = export_checkpoint(a.ckpt, a.out, a.index, parse_json_arg(a.index_params, "--index-params"), a.force,
                            a.data_root)
    print(f"exported {a.ckpt} -> {out}")
