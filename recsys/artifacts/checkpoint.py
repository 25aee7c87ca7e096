"""Load a checkpoint written by ``recsys fit``: model + data module + vocab check.

A ``recsys fit`` checkpoint carries ``checkpoint["recsys"]`` (``TwoTowerModule.
on_save_checkpoint``): the resolved YAML of the fit config, the dataset name, both vocabs
and the item-vocab fingerprint. Loading re-parses the stored ``model`` and ``data`` blocks
with ``recsys.artifacts.config`` (the signatures ``recsys fit`` parses, without the CLI), so a
config always means the same objects as at training time.

    model, dm, meta = load_checkpoint("runs/recsys/version_0/checkpoints/last.ckpt")
    res = evaluate(model, dm, "test", ks=(10, 20))
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from recsys.artifacts.config import build_model_and_data, upgrade_class_paths
from recsys.data.vocab import Vocab
from recsys.errors import ConfigError, DataError
from recsys.model.checkpoint_file import read_torch_file

__all__ = ["CheckpointMeta", "read_checkpoint", "load_checkpoint", "build_from_config", "check_vocab",
           "run_dir"]

logger = logging.getLogger(__name__)

@dataclass
class CheckpointMeta:
    """What a ``recsys fit`` checkpoint says about itself."""

    path: Path
    config: str  # resolved YAML of the fit config
    dataset: str
    user_vocab: Vocab
    item_vocab: Vocab
    item_fingerprint: str
    epoch: int | None = None
    global_step: int | None = None
    metrics: dict = field(default_factory=dict)  # e.g. {"val/ndcg@10": best score}

    @property
    def config_dict(self) -> dict:
        """The stored fit config, class paths of the old module layout upgraded."""
        return yaml.safe_load(upgrade_class_paths(self.config))

    @property
    def run_dir(self) -> Path:
        return run_dir(self.path)


def run_dir(ckpt: str | os.PathLike) -> Path:
    """The run folder of a checkpoint: ``runs/recsys/version_N`` for
    ``runs/recsys/version_N/checkpoints/x.ckpt``, else the checkpoint's own folder."""
    p = Path(ckpt).resolve().parent
    return p.parent if p.name == "checkpoints" else p


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, CheckpointMeta]:
    """``(raw checkpoint dict, meta)``; clear ``DataError`` for a missing or foreign file."""
    path = Path(path)
    ckpt = read_torch_file(path)
    extra = ckpt.get("recsys") if isinstance(ckpt, dict) else None
    missing = [k for k in ("config", "dataset", "user_vocab", "item_vocab")
               if not isinstance(extra, dict) or not extra.get(k)]
    if missing or "state_dict" not in ckpt:
        raise DataError(
            f"checkpoint {str(path)!r} has no recsys block (missing {missing or ['state_dict']}): "
            "only checkpoints written by `recsys fit` store the config and vocabs needed to "
            "rebuild the model. Fix: train with `recsys fit --config ...` and pass its .ckpt."
        )
    metrics = {}
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, dict):
            score = state.get("best_model_score")
            if state.get("monitor") and score is not None:
                metrics[state["monitor"]] = float(score)
    meta = CheckpointMeta(
        path=path, config=extra["config"], dataset=extra["dataset"],
        user_vocab=Vocab.from_state(extra["user_vocab"]), item_vocab=Vocab.from_state(extra["item_vocab"]),
        item_fingerprint=extra.get("item_fingerprint") or "", epoch=ckpt.get("epoch"),
        global_step=ckpt.get("global_step"), metrics=metrics,
    )
    return ckpt, meta


def build_from_config(config: dict, data_root: str | os.PathLike | None = None,
                      data_overrides: dict | None = None):
    """``(model, datamodule)`` from a fit config dict (only ``model`` and ``data`` are used),
    parsed and instantiated as ``recsys fit`` does (data loaded, ``data.schema`` linked into
    the model); model weights are freshly initialised. ``data_root`` replaces ``data.root``,
    ``data_overrides`` other ``data`` keys."""
    data = dict(config.get("data") or {})
    if data_root is not None:
        data["root"] = str(data_root)
    data.update(data_overrides or {})
    return build_model_and_data({"model": config.get("model") or {}, "data": data})


def check_vocab(meta: CheckpointMeta, data) -> None:
    """Raise ``DataError`` unless ``data`` (RecData) has the checkpoint's user and item ids."""
    for kind, ck_vocab, now in (("item", meta.item_vocab, data.item_vocab),
                                ("user", meta.user_vocab, data.user_vocab)):
        fp_ck, fp_now = ck_vocab.fingerprint(), now.fingerprint()
        if kind == "item" and meta.item_fingerprint and meta.item_fingerprint != fp_ck:
            raise DataError(
                f"checkpoint {str(meta.path)!r}: stored item fingerprint {meta.item_fingerprint} does "
                f"not match its stored item vocab ({fp_ck}): the file is inconsistent. Fix: re-save it "
                "with `recsys fit`."
            )
        if fp_ck != fp_now:
            raise DataError(
                f"checkpoint {str(meta.path)!r} was trained on dataset '{meta.dataset}' with {kind} vocab "
                f"{fp_ck} ({len(ck_vocab)} {kind}s), but the data loaded now ('{data.name}') has {kind} "
                f"vocab {fp_now} ({len(now)} {kind}s): embedding rows would map to the wrong ids. Fix: "
                "use the data the checkpoint was trained on (same files, filters, synthetic settings "
                "and seed; --data-root to point at its files), or retrain on the new data."
            )


def load_checkpoint(path: str | os.PathLike, data_root: str | os.PathLike | None = None,
                    data_overrides: dict | None = None):
    """``(model, datamodule, meta)`` from a ``recsys fit`` checkpoint, ready to evaluate.

    The data module is rebuilt from the stored config (``data_root`` replaces ``data.root``;
    ``data_overrides`` replace other ``data`` keys), its vocabs are checked against the
    checkpoint's (``DataError`` on a mismatch), the weights are loaded, the head is bound to
    the train data and the model is put in eval mode on the CPU.
    """
    ckpt, meta = read_checkpoint(path)
    try:
        config = meta.config_dict
    except yaml.YAMLError as e:
        raise DataError(f"checkpoint {str(path)!r}: stored config is not valid YAML ({e}). "
                        "Fix: re-save it with `recsys fit`.") from e
    if not isinstance(config, dict) or "model" not in config or "data" not in config:
        raise DataError(f"checkpoint {str(path)!r}: stored config lacks the model / data blocks. "
                        "Fix: re-save it with `recsys fit`.")
    model, dm = build_from_config(config, data_root, data_overrides)
    check_vocab(meta, dm.data)
    try:
        model.load_state_dict(model.upgrade_checkpoint(ckpt)["state_dict"], strict=True)
    except RuntimeError as e:
        raise ConfigError(
            f"checkpoint {str(path)!r}: weights do not fit the model rebuilt from its config ({e}). "
            "Fix: load it with the recsys version and data settings it was trained with."
        ) from e
    model.bind(dm.data)
    model.eval()
    logger.info("loaded %s (dataset %s, epoch %s)", path, meta.dataset, meta.epoch)
    return model, dm, meta
