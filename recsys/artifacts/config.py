"""Rebuild the objects of a stored ``recsys fit`` config: the one parser of the artifacts.

A checkpoint (and an export folder) stores the resolved YAML of its fit config. Its
``model`` and ``data`` blocks are parsed with the signatures of ``TwoTowerModule`` and
``InteractionDataModule`` (jsonargparse, as LightningCLI parses them for ``recsys fit``) and
``data.schema`` is linked into ``model.schema`` as the CLI links it, so a config means the
same objects as at training time, without importing the training CLI or building a Trainer.
A query tower alone (an export's, for ``recommend --history``) is parsed with the type of
``TwoTowerModule``'s ``query_tower`` argument only: torch, but neither Lightning nor the data
module.

Configs written before the re-layer name classes by their old module paths
(``recsys.heads.InBatchSoftmax``, ``recsys.towers.QueryTower``, ``recsys.samplers.*``);
``upgrade_class_paths`` maps them to today's.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import warnings
from collections.abc import Callable

from jsonargparse import ArgumentParser

from recsys.errors import ConfigError
from recsys.model.towers import QueryTower
from recsys.schema import Schema

__all__ = ["LEGACY_MODULES", "ALLOWED_CLASS_PATHS", "check_class_paths", "upgrade_class_paths", "build_model_and_data",
           "build_query_tower"]

# the only classes a stored config (checkpoint, export) may name: a config read back from a file
# another person wrote must not instantiate arbitrary code (e.g. class_path: os.system)
ALLOWED_CLASS_PATHS = ("recsys.", "torch.optim.", "lightning.pytorch.loggers.", "lightning.pytorch.callbacks.")

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


def check_class_paths(config, source: str = "stored config") -> None:
    """Raise ``ConfigError`` naming the first ``class_path`` of ``config`` (a dict / list tree)
    outside ``ALLOWED_CLASS_PATHS``; nothing is imported or instantiated before the check."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            cp = node.get("class_path")
            if cp is not None and not _allowed(cp):
                raise ConfigError(f"{source}: class_path {cp!r} is not allowed; a stored config may name only "
                                  f"classes under {list(ALLOWED_CLASS_PATHS)}. Fix: it was not written by `recsys "
                                  "fit` (or was altered): retrain, or load only files you trust.")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _allowed(cp) -> bool:
    """``cp`` names a class (not a function, not a module attribute reached through an import
    such as ``recsys.data.io.os.system``) defined under an allowed prefix."""
    if not isinstance(cp, str) or not cp.startswith(ALLOWED_CLASS_PATHS) or not re.fullmatch(r"[A-Za-z_][\w.]*", cp):
        return False
    parts = cp.split(".")
    for i in range(len(parts) - 1, 0, -1):  # the longest importable module prefix (only allowed packages)
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for a in parts[i:]:
                obj = getattr(obj, a)
        except AttributeError:
            return False
        return inspect.isclass(obj) and str(obj.__module__).startswith(ALLOWED_CLASS_PATHS)
    return False


def _parser() -> ArgumentParser:
    from recsys.data.datamodule import InteractionDataModule
    from recsys.model.module import TwoTowerModule

    p = ArgumentParser(exit_on_error=False)
    p.add_class_arguments(TwoTowerModule, "model", fail_untyped=False, sub_configs=True)
    p.add_class_arguments(InteractionDataModule, "data", fail_untyped=False, sub_configs=True)
    p.link_arguments("data.schema", "model.schema", apply_on="instantiate")
    return p


def _query_tower_argument(query_tower: Callable[[Schema], QueryTower] = QueryTower) -> None:
    """The signature a stored ``model.query_tower`` block is parsed with: the same type and
    default as ``TwoTowerModule``'s own argument, without importing the module (and Lightning)."""


def build_model_and_data(config: dict) -> tuple:
    """``(TwoTowerModule, InteractionDataModule)`` of a fit config dict (its ``model`` and ``data`` blocks): data
    loaded, ``data.schema`` linked into the model, model weights freshly initialised."""
    check_class_paths(config)
    p = _parser()
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
    """The query tower of a fit config's ``model`` block, built for ``schema`` (fresh weights).
    Only the ``query_tower`` entry is read (and its class paths checked): the head's classes are
    never imported, so neither is Lightning."""
    tower = (model_config or {}).get("query_tower")
    block = {"query_tower": tower} if tower else {}
    check_class_paths(block)
    p = ArgumentParser(exit_on_error=False)
    p.add_function_arguments(_query_tower_argument, "model", fail_untyped=False, sub_configs=True)
    init = p.instantiate_classes(p.parse_object({"model": block}))
    return init.model.query_tower(schema)
