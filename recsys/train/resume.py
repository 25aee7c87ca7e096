"""Exact resume of ``recsys fit --ckpt_path last``: find the newest ``last.ckpt`` of the
earlier runs and continue in that run's folder, appending to its ``metrics.csv``.

- ``resolve_last``: ``--ckpt_path last`` finds the newest ``last.ckpt`` of the run folders
  under the logger's ``save_dir/name`` and continues in that folder (Lightning alone looks
  only in the new run's folder, which is empty).
- ``AppendingCSVLogger`` keeps that folder's ``metrics.csv`` and appends to it.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

__all__ = ["AppendingCSVLogger", "find_last_checkpoint", "resolve_last"]

logger = logging.getLogger(__name__)


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):  # continue with the file's columns
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def _check_log_dir_exists(self) -> None:  # Lightning deletes an existing metrics.csv here
        pass


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to the run folder's ``metrics.csv`` instead of deleting it,
    so a resumed run continues its history. Rows logged by the killed run after its last
    checkpoint (if they were flushed) appear again, from the resumed run, with the same
    steps: keep the last row of a step."""

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def find_last_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest ``last*.ckpt`` in ``folder/version_*/checkpoints`` (or anywhere below)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [p for p in folder.rglob("last*.ckpt") if p.is_file() and re.fullmatch(r"last(-v\d+)?\.ckpt", p.name)]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def _get(ns, key, default=None):
    if ns is None:
        return default
    if isinstance(ns, dict):
        return ns.get(key, default)
    return getattr(ns, key, default)


def resolve_last(cfg) -> Path | None:
    """Turn ``ckpt_path: last`` of a ``fit`` config (jsonargparse Namespace) into the newest
    ``last.ckpt`` of the earlier runs and point the logger at that run's folder.

    Looks under the logger's ``save_dir/name`` (the CLI's CSVLogger: ``runs/recsys``); with
    ``checkpoint.dirpath`` set, Lightning finds ``last`` there itself and nothing changes.
    Returns the checkpoint, or None (nothing found: the run starts from scratch, as
    Lightning does with a ``last`` it cannot find).
    """
    if _get(cfg, "ckpt_path") != "last" or _get(_get(cfg, "checkpoint"), "dirpath"):
        return None
    trainer = _get(cfg, "trainer")
    log = _get(trainer, "logger")
    args = _get(log, "init_args") if _get(log, "class_path") else None
    if args is not None and _get(args, "save_dir") is not None:
        base = Path(_get(args, "save_dir")) / str(_get(args, "name") or "")
    else:  # no logger, or one we do not know: any run under default_root_dir
        base = Path(_get(trainer, "default_root_dir") or ".")
    ckpt = find_last_checkpoint(base)
    if ckpt is None:
        return None
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    if args is not None and run is not None and run.parent.resolve() == base.resolve():
        if isinstance(args, dict):
            args["version"] = run.name
        else:
            args.version = run.name  # continue in the same folder: same ModelCheckpoint dirpath
    cfg.ckpt_path = str(ckpt)
    logger.info("ckpt_path=last -> %s", ckpt)
    return ckpt
