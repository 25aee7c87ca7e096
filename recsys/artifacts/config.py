"""Rebuild the objects of a stored ``recsys fit`` config: the one parser of the artifacts.

A checkpoint (and an export folder) stores the resolved YAML of its fit config. Its
``model`` and ``data`` blocks are parsed with the signatures of ``TwoTowerModule`` and
``InteractionDataModule`` (jsonargparse, as LightningCLI parses them for ``recsys fit``) and
``data.schema`` is linked into ``model.schema`` as the CLI links it, so a config means the
same objects as at training time, without importing the training CLI or building a Trainer.

Configs written before the re-layer name classes by their old module paths
(``recsys.heads.InBatchSoftmax``, ``recsys.towers.QueryTower``, ``recsys.samplers.*``);
``upgrade_class_paths`` maps them to today's.
"""

from __future__ import annotations

import logging
import re
import warnings

from jsonargparse import ArgumentParser

from recsys.data.datamodule import InteractionDataModule
from recsys.model.module import TwoTowerModule
from recsys.schema import Schema

__all__ = ["LEGACY_MODULES", "upgrade_class_paths", "build_model_and_data", "build_query_tower"]

# module paths of the classes a config may name, before -> after the re-layer
LEGACY_MODULES = {
    "recsys.heads": "recsys.model.heads",
    "recsys.towers": "recsys.model.towers",
    "recsys.samplers": "recsys.model.candidates",
    "recsys.optim": "recsys.model.optim",
    "recsys.module": "recsys.model.module",
    "recsys.checkpointing": "recsys.train.resume",
}


def upgrade_class_paths(config_text: str) -> str:
    """``config_text`` with class paths of the old layout rewritten to the current modules."""
    for old, new in LEGACY_MODULES.items():
        config_text = re.sub(rf"(?<![\w.]){re.escape(old)}\.(?=[A-Z])", f"{new}.", config_text)
    return config_text


def _parser(with_data: bool) -> ArgumentParser:
    p = ArgumentParser(exit_on_error=False)
    p.add_class_arguments(TwoTowerModule, "model", fail_untyped=False, sub_configs=True, instantiate=with_data)
    if with_data:
        p.add_class_arguments(InteractionDataModule, "data", fail_untyped=False, sub_configs=True)
        p.link_arguments("data.schema", "model.schema", apply_on="instantiate")
    return p


def build_model_and_data(config: dict) -> tuple[TwoTowerModule, InteractionDataModule]:
    """``(model, datamodule)`` of a fit config dict (its ``model`` and ``data`` blocks): data
    loaded, ``data.schema`` linked into the model, model weights freshly initialised."""
    p = _parser(with_data=True)
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            cfg = p.parse_object({"model": config.get("model") or {}, "data": config.get("data") or {}})
            init = p.instantiate_classes(cfg)
    finally:
        quiet.setLevel(level)
    return init.model, init.data


def build_query_tower(model_config: dict, schema: Schema):
    """The query tower of a fit config's ``model`` block, built for ``schema`` (fresh weights)."""
    p = _parser(with_data=False)
    init = p.instantiate_classes(p.parse_object({"model": model_config or {}}))
    return init.model.query_tower(schema)
